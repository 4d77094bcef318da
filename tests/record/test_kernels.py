"""The compiled per-step kernels' raw-address copies, and that a closed backend never reaches them."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")
mujoco = pytest.importorskip("mujoco")

from moetape.record import kernels  # noqa: E402
from moetape.record.mujoco_backend import MujocoBackend  # noqa: E402
from moetape.record.trajectory import Trajectories  # noqa: E402


def test_gather_copies_each_envs_fields_end_to_end():
    rng = np.random.default_rng(0)
    sizes = (5, 1, 7)
    per_env = [[rng.normal(size=n) for n in sizes] for _ in range(4)]
    addresses = np.array([[a.ctypes.data for a in fields] for fields in per_env], np.int64)
    out = np.full((4, sum(sizes)), np.nan)
    kernels.gather(addresses, np.array(sizes, np.int64), out)
    np.testing.assert_array_equal(out, np.stack([np.concatenate(fields) for fields in per_env]))


def test_set_ctrl_writes_the_pd_targets_into_the_mapped_columns():
    rng = np.random.default_rng(1)
    ctrls = [np.zeros(5) for _ in range(3)]
    columns = np.array([4, 0, 2])  # joint j drives ctrl column columns[j]
    action = rng.normal(size=(3, 3)).astype(np.float32)
    default = np.array([0.1, -0.2, 0.3])
    kernels.set_ctrl(action, default, 0.25, np.array([[c.ctypes.data] for c in ctrls], np.int64), columns)
    for c, a in zip(ctrls, action):
        np.testing.assert_array_equal(c[columns], default + 0.25 * a.astype(np.float64))
        np.testing.assert_array_equal(c[[1, 3]], 0.0)  # untouched


def test_step_after_close_is_an_error_not_a_read_of_freed_memory():
    t = np.arange(50) * 0.005
    pos = np.stack([0.1 * np.cos(t), 0.1 * np.sin(t), 0.5 + 0 * t], -1)[None].astype(np.float32)
    b = MujocoBackend(Trajectories(pos, np.zeros_like(pos)), n_envs=2)
    b.step(np.zeros((2, 18), np.float32), substep_frames=False)
    b.close()
    b.close()  # idempotent
    with pytest.raises(RuntimeError, match="after close"):
        b.step(np.zeros((2, 18), np.float32), substep_frames=False)
