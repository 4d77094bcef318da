"""How close the MuJoCo backend steps to a bare ``mujoco.mj_step`` loop over the same model.

Both rates count physics substeps per second summed over envs (policy steps x decimation x envs).
The backend runs with zero actions and ``substep_frames=False`` (obs, terms, one frame row per
step; ``sim_ratio``'s goal is for this mode, the stepping itself) or, to show the cost of the
default ``--frames substep``, four frame rows per step. The bare loop calls ``mj_step(m, d,
decimation)`` per env, each round from the states the backend's round started from (the same
physics on both sides).

    python bench/sim_speed.py [N_THREADS]   # prints {"env_steps_per_s": ..., "sim_ratio": ..., ...}
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Dict, Optional, Tuple

import mujoco
import numpy as np

from moetape.record.mujoco_backend import MujocoBackend
from moetape.record.mujoco_task import DECIMATION
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
    n_envs: int = 64,
    policy_steps: int = 200,
    *,
    chunk: int = 10,
    n_threads: Optional[int] = None,
    substep_frames: bool = False,
) -> Dict[str, float]:
    """Time the backend and a bare mj_step loop on the same model for the same substeps x envs.

    The steps run in short paired rounds of ``chunk`` policy steps, backend then bare from the same
    start states, each round's ratio of rates is taken, and their median is ``sim_ratio``: these
    machines' speed drifts within seconds, and a pair of adjacent 40 ms runs shares the drift.
    ``n_threads`` is the backend's (None: its default); the bare loop is always single-threaded.

    Returns:
        {"env_steps_per_s", "bare_mj_step_per_s"} in physics substeps per second (medians over the
        rounds), "sim_ratio" (median of the rounds' backend / bare), plus "n_envs", "policy_steps"
        and "n_threads".
    """
    backend = MujocoBackend(_circle_trajectories(), n_envs=n_envs, n_threads=n_threads)
    backend_threads = backend.n_threads
    backend.reset()
    model = backend.model
    bare = [mujoco.MjData(model) for _ in range(n_envs)]
    spec = mujoco.mjtState.mjSTATE_INTEGRATION  # qpos, qvel, act, warm start, ctrl, ...: all mj_step reads
    snapshot = np.empty(mujoco.mj_stateSize(model, spec))
    zeros = np.zeros((n_envs, backend.info.action_dim), np.float32)

    step = mujoco.mj_step

    def sync_bare() -> None:
        """Put the bare loop's envs in the backend's current states, so that both sides step the same
        physics. Left to themselves, the bare loop's robots would stand still for longer than an
        episode (the backend resets every 7 s) and settle into cheaper contact solves."""
        for src, dst in zip(backend.datas, bare):
            mujoco.mj_getState(model, src, snapshot, spec)
            mujoco.mj_setState(model, dst, snapshot, spec)

    def run_backend() -> float:
        t0 = time.perf_counter()
        for _ in range(chunk):
            backend.step(zeros, substep_frames=substep_frames)
        return time.perf_counter() - t0

    def run_bare() -> float:
        t0 = time.perf_counter()
        for _ in range(chunk):
            for d in bare:
                step(model, d, DECIMATION)
        return time.perf_counter() - t0

    def paired_round() -> Tuple[float, float]:
        sync_bare()  # from the states the backend's round starts from
        return run_backend(), run_bare()

    paired_round()  # warm-up: first-call allocations, caches
    pairs = [paired_round() for _ in range(max(1, policy_steps // chunk))]
    backend.close()

    substeps = float(chunk * DECIMATION * n_envs)
    return {
        "env_steps_per_s": substeps / statistics.median(b for b, _ in pairs),
        "bare_mj_step_per_s": substeps / statistics.median(bare for _, bare in pairs),
        "sim_ratio": statistics.median(bare / b for b, bare in pairs),
        "n_envs": float(n_envs),
        "policy_steps": float(policy_steps),
        "n_threads": float(backend_threads),
    }


if __name__ == "__main__":
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else None
    print(json.dumps(measure_sim_ratio(n_threads=threads), indent=2))
