"""Golden files: locked by checksum and read back value for value by every reader."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from helpers import DATA, GOLDEN, GOLDEN_SEED

from moetape.schema.reader import open_log
from moetape.schema.synthetic import small_spec, synthetic_step
from moetape.schema.upcast import UPCASTERS
from moetape.schema.validate import validate
from moetape.schema.version import FORMAT_VERSION


def test_every_version_has_a_golden_file():
    """Each released format version from 1 to FORMAT_VERSION has tests/data/v{N}_minimal.h5."""
    names = {os.path.basename(p) for p in GOLDEN}
    assert names == {f"v{v}_minimal.h5" for v in range(1, FORMAT_VERSION + 1)}


def test_golden_checksums_unchanged():
    """Golden files are never rewritten: their sha256 matches SHA256SUMS."""
    with open(os.path.join(DATA, "SHA256SUMS")) as f:
        sums = dict(reversed(line.split()) for line in f if line.strip())
    for path in GOLDEN:
        with open(path, "rb") as g:
            assert hashlib.sha256(g.read()).hexdigest() == sums[os.path.basename(path)]


def test_upcasters_cover_every_older_version():
    """UPCASTERS has one key per version from 1 to FORMAT_VERSION - 1."""
    assert sorted(UPCASTERS) == list(range(1, FORMAT_VERSION))


def test_golden_reads_back_every_value(golden_log):
    """Every committed field of the golden log equals the generator's values."""
    with open_log(golden_log) as log:
        assert log.run_status == "clean"
        assert log.n_steps == 12 and log.n_frames == 48
        spec = small_spec(log.n_envs, frames_per_step=log.frames_per_step, n_bodies=len(log.body_names))
        for s in range(log.n_steps):
            step, frames = synthetic_step(spec, s, GOLDEN_SEED)
            for name, value in step.items():
                np.testing.assert_array_equal(log.read(name, s, s + 1)[0], value, err_msg=name)
            for name, value in frames.items():
                np.testing.assert_array_equal(log.read("frames/" + name, s, s + 1), value, err_msg=name)
        assert log.model_xml.startswith("<mujoco")
        assert log.trajectory()["ee_pos"].shape == (2, 5, 3)


def test_golden_validates(golden_log):
    """The golden log has no validation problems."""
    assert validate(golden_log) == []


@pytest.mark.parametrize("env", [0, 1])
def test_golden_env_selection(golden_log, env):
    """Reading one env drops the env axis and matches the full read."""
    with open_log(golden_log) as log:
        full = log.read("gate")
        np.testing.assert_array_equal(log.read("gate", env=env), full[:, env])
        np.testing.assert_array_equal(
            log.read("frames/dof_pos", 2, 4, env=env), log.read("frames/dof_pos", 2, 4)[:, env]
        )
