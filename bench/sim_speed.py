"""How close the MuJoCo backend steps to a bare ``mujoco.mj_step`` loop over the same model.

Both rates count physics substeps per second summed over envs (policy steps x decimation x envs).
The backend runs with zero actions and ``substep_frames=False`` (obs, terms, one frame row per
step); the bare loop calls ``mj_step(m, d, decimation)`` per env from the same standing start.

    python bench/sim_speed.py [N_THREADS]   # prints {"env_steps_per_s": ..., "sim_ratio": ..., ...}
"""

from __future__ import annotations

import json
import sys
import time
from typing import Dict, Optional

import mujoco
import numpy as np

from moetape.record.mujoco_backend import DECIMATION, MujocoBackend
from moetape.record.trajectory import Trajectories


def _circle_trajectories(n_episodes: int = 4, n_samples: int = 1600) -> Trajectories:
    """Synthetic EE targets: a slow circle in front of the robot with a fixed orientation."""
    t = np.arange(n_samples) * 0.005
    pos = np.stack([0.1 * np.cos(t), 0.1 * np.sin(t), 0.55 + 0.0 * t], axis=-1)
    axis_angle = np.tile([0.0, np.pi / 2, 0.0], (n_samples, 1))
    return Trajectories(
        ee_pos=np.repeat(pos[None], n_episodes, 0).astype(np.float32),
        ee_axis_angle=np.repeat(axis_angle[None], n_episodes, 0).astype(np.float32),
    )


def measure_sim_ratio(
    n_envs: int = 64, policy_steps: int = 200, *, rounds: int = 4, n_threads: Optional[int] = None
) -> Dict[str, float]:
    """Time the backend and a bare mj_step loop on the same model for the same substeps x envs.

    The steps are split into ``rounds`` interleaved backend/bare rounds and the fastest round of
    each side counts, so a burst of load from another process does not decide the ratio.
    ``n_threads`` is the backend's (None: its default); the bare loop is always single-threaded.

    Returns:
        {"env_steps_per_s", "bare_mj_step_per_s"} in physics substeps per second, their ratio
        "sim_ratio" (backend / bare), plus "n_envs" and "policy_steps".
    """
    backend = MujocoBackend(_circle_trajectories(), n_envs=n_envs, n_threads=n_threads)
    backend_threads = backend.n_threads
    backend.reset()
    model = backend.model
    start = [mujoco.MjData(model) for _ in range(n_envs)]
    for src, dst in zip(backend.datas, start):  # same standing start for the bare loop
        dst.qpos[:] = src.qpos
        dst.qvel[:] = src.qvel
        dst.ctrl[:] = src.ctrl
    zeros = np.zeros((n_envs, backend.info.action_dim), np.float32)

    step = mujoco.mj_step

    def run_backend() -> float:
        t0 = time.perf_counter()
        for _ in range(chunk):
            backend.step(zeros, substep_frames=False)
        return time.perf_counter() - t0

    def run_bare() -> float:
        t0 = time.perf_counter()
        for _ in range(chunk):
            for d in start:
                step(model, d, DECIMATION)
        return time.perf_counter() - t0

    # Interleaved rounds, best of each: a shared machine's load hits both sides alike.
    chunk = max(1, policy_steps // rounds)
    run_backend(), run_bare()  # warm-up: first-call allocations, caches
    best_backend, best_bare = float("inf"), float("inf")
    for _ in range(rounds):
        best_backend = min(best_backend, run_backend())
        best_bare = min(best_bare, run_bare())
    backend.close()
    backend_s, bare_s = best_backend, best_bare

    substeps = float(chunk * DECIMATION * n_envs)
    env_rate, bare_rate = substeps / backend_s, substeps / bare_s
    return {
        "env_steps_per_s": env_rate,
        "bare_mj_step_per_s": bare_rate,
        "sim_ratio": env_rate / bare_rate,
        "n_envs": float(n_envs),
        "policy_steps": float(policy_steps),
        "n_threads": float(backend_threads),
    }


if __name__ == "__main__":
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else None
    print(json.dumps(measure_sim_ratio(n_threads=threads), indent=2))
