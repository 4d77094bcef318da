"""Comparing two logs of one trajectory (`moetape compare`, compare.compare)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from moetape.cli import cli
from moetape.replay.compare import check_comparable, compare
from moetape.schema.errors import InputError
from moetape.schema.reader import open_log
from moetape.schema.synthetic import small_spec, synthetic_step
from moetape.schema.writer import LogWriter


def write_run(
    path,
    n_steps=10,
    *,
    n_envs=2,
    shift=0.0,
    leg_offset=0.0,
    err=0.2,
    provenance=None,
    trajectory=None,
    n_experts=2,
):
    """Write a log; ``shift`` moves weight from arm to base, ``leg_offset`` adds to the 12 leg actions."""
    spec = small_spec(n_envs, frames_per_step=1, obs_dim=4, n_bodies=1, n_experts=n_experts)
    meta = {"provenance": provenance or {}}
    with LogWriter(str(path), spec, meta=meta, trajectory=trajectory) as w:
        for s in range(n_steps):
            st, fr = synthetic_step(spec, s)  # same seed in both logs: only the overrides differ
            if n_experts == 2:
                b = np.full(n_envs, 0.3 + 0.04 * s + shift, dtype=np.float32)
                st["gate"] = np.stack([b, np.float32(1) - b], axis=1)
                st.pop("gate_entropy")
            st["action"][:, :12] += np.float32(leg_offset)
            st["terms/task_reaching_pos_err"] = np.full(n_envs, err, dtype=np.float32)
            w.append(st, fr)
    return str(path)


def _traj(offset):
    return (np.full((1, 5, 3), offset, np.float32), np.zeros((1, 5, 3), np.float32), 0.005)


def test_known_differences_exact(tmp_path):
    """|d gate| per expert, |d action| by joint group and each EE error match the constructed offsets."""
    a = write_run(tmp_path / "a.h5")
    b = write_run(tmp_path / "b.h5", shift=0.1, leg_offset=1.0, err=0.3)
    with open_log(a) as la, open_log(b) as lb:
        d = compare(la, lb)
    assert d["mean_abs_gate_diff"] == [pytest.approx(0.1, abs=1e-6)] * 2
    groups = d["mean_abs_action_diff"]
    assert groups["legs"] == pytest.approx(1.0, abs=1e-6) and groups["arm"] == 0.0
    assert groups["all"] == pytest.approx(12 / 18, abs=1e-6)
    assert d["a"]["mean_ee_pos_err_m"] == pytest.approx(0.2) and d["b"]["mean_ee_pos_err_m"] == pytest.approx(
        0.3
    )
    assert d["ee_pos_err_diff_m"] == pytest.approx(0.1)
    assert d["common_steps"] == 10 and d["warnings"] == []
    json.dumps(d)


def test_same_log_twice_is_all_zero(tmp_path):
    """Two identical runs differ by nothing."""
    a = write_run(tmp_path / "a.h5")
    b = write_run(tmp_path / "b.h5")
    with open_log(a) as la, open_log(b) as lb:
        d = compare(la, lb)
    assert d["mean_abs_gate_diff"] == [0.0, 0.0] and d["mean_abs_action_diff"]["all"] == 0.0


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"n_experts": 3}, "expert_names ['base', 'arm'] vs ['base', 'arm', 'expert2']"),
    ],
)
def test_mismatch_is_one_line_error(tmp_path, kw, msg):
    """Different experts: InputError, and `moetape compare` exits 1 with one line."""
    a = write_run(tmp_path / "a.h5")
    b = write_run(tmp_path / "b.h5", **kw)
    with open_log(a) as la, open_log(b) as lb:
        with pytest.raises(InputError, match="not comparable"):
            check_comparable(la, lb)
    r = CliRunner().invoke(cli, ["compare", a, b])
    assert r.exit_code == 1 and r.stderr.startswith("Error: ") and msg in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_trajectory_and_robot_differences_warn(tmp_path):
    """Different trajectory sha / arrays, robot sha and lengths give warnings on stderr, not errors."""
    a = write_run(
        tmp_path / "a.h5",
        provenance={"trajectory_sha256": "aa", "robot": {"model_sha256": "r1"}, "checkpoint_sha256": "c1"},
        trajectory=_traj(0.0),
    )
    b = write_run(
        tmp_path / "b.h5",
        n_steps=7,
        provenance={"trajectory_sha256": "bb", "robot": {"model_sha256": "r2"}, "checkpoint_sha256": "c2"},
        trajectory=_traj(1.0),
    )
    r = CliRunner().invoke(cli, ["compare", a, b, "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["common_steps"] == 7
    err = r.stderr
    assert "warning: provenance trajectory_sha256 differs: aa vs bb" in err
    assert "warning: provenance robot.model_sha256 differs: r1 vs r2" in err
    assert "stored target trajectories differ" in err and "step counts differ (10 vs 7)" in err
    assert "checkpoint" not in err  # two checkpoints is the point of comparing
    assert len(d["warnings"]) == 4


def test_cli_compare_png_and_human_output(tmp_path):
    """-o writes compare_timeline.png (refused again without --force); the report names A and B."""
    a = write_run(tmp_path / "a.h5")
    b = write_run(tmp_path / "b.h5", shift=0.1)
    out = str(tmp_path / "cmp")
    r = CliRunner().invoke(cli, ["compare", a, b, "-o", out])
    assert r.exit_code == 0, r.output
    png = os.path.join(out, "compare_timeline.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    lines = r.stdout.splitlines()
    assert lines[0].startswith("A  " + a) and lines[1].startswith("B  " + b) and lines[-1] == png
    assert any(line.startswith("base ") and line.endswith("0.100") for line in lines)
    r = CliRunner().invoke(cli, ["compare", a, b, "-o", out])
    assert r.exit_code == 1 and "compare_timeline.png: exists" in r.stderr
    r = CliRunner().invoke(cli, ["compare", a, b, "-o", out, "--force", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["plots"] == [png]
