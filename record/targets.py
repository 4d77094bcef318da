"""The MuJoCo backend's EE target table (every trajectory episode's poses, looked up in time) and
the seeded rule that picks the trajectory episode each env plays.

The rule, as the legacy reaching task's sequence sampler (umi-on-legs ``PicklePoseSequenceLoader``,
called from ``ReachingLinkTask.reset_idx``): on every reset each env draws one trajectory episode
uniformly at random, with replacement, from the N in the file, and plays it from its first sample
(the episode time restarts at 0). Here the draw comes from a numpy Generator seeded by the run's seed,
the env and its episode counter (:func:`episode_rng`), so env ``i``'s ``k``-th episode plays
``episode_trajectory(seed, i, k, N)`` whatever the other envs do: the choice is reproducible from a
log alone (seed in provenance_json, ``steps/episode``, N from ``trajectory/ee_pos``).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from moetape.record import kernels
from moetape.record.poses import rotvec_to_quat
from moetape.record.trajectory import Trajectories

_STREAM = 0x6D6F6574  # keeps these draws apart from any other use of the same seed


def episode_rng(seed: int, env: int, episode: int) -> np.random.Generator:
    """The Generator of env ``env``'s ``episode``-th episode in a run seeded ``seed`` (any int; negative
    seeds wrap to 64 bits). It draws the trajectory episode first (:func:`episode_trajectory`), then
    the reset noise where that is on."""
    entropy = [_STREAM, int(seed) % (1 << 64), int(env), int(episode)]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def episode_trajectory(seed: int, env: int, episode: int, n_trajectories: int) -> int:
    """The trajectory episode, 0..n_trajectories-1, that env ``env`` plays on its ``episode``-th
    episode (0-based, the log's ``steps/episode``) in a run seeded ``seed``; uniform, drawn per reset."""
    return int(episode_rng(seed, env, episode).integers(n_trajectories))


class TargetTable:
    """EE target poses of every trajectory episode, xy-centred on the world origin, looked up in time.

    Positions: each episode's mean xy is subtracted (z kept). Orientations: rotation vectors become
    wxyz quaternions made sign-continuous along time, so interpolation (normalised lerp between the
    two neighbouring 200 Hz samples) never takes the long way round. Times past the end hold the last
    sample; negative times hold the first.
    """

    def __init__(self, trajectories: Trajectories) -> None:
        pos = np.asarray(trajectories.ee_pos, np.float64)
        if pos.ndim != 3 or pos.shape[-1] != 3 or pos.shape[1] < 1:
            raise ValueError(f"trajectories.ee_pos: shape {pos.shape}, expected (N, T, 3) with T >= 1")
        pos = pos.copy()
        pos[..., :2] -= pos[..., :2].mean(axis=1, keepdims=True)
        quat = rotvec_to_quat(trajectories.ee_axis_angle)
        flip = np.sum(quat[:, 1:] * quat[:, :-1], axis=-1) < 0  # (N, T-1)
        sign = np.where(np.cumsum(flip, axis=1) % 2 == 1, -1.0, 1.0)
        quat[:, 1:] *= sign[..., None]
        self.dt_s = float(trajectories.dt_s)
        self._n_episodes, self._n_samples = pos.shape[:2]
        # float64 (N * (T + 1), 7): one row per sample, pose = (pos, wxyz quat), and each episode's
        # last sample once more, so that the right-hand neighbour of any sample is the next row.
        poses = np.concatenate([pos, quat], axis=-1)
        self._rows = np.ascontiguousarray(np.concatenate([poses, poses[:, -1:]], axis=1).reshape(-1, 7))

    @property
    def n_episodes(self) -> int:
        return int(self._n_episodes)

    def lookup(self, episodes: np.ndarray, times_s: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Target poses of trajectory ``episodes`` int (E,) at ``times_s`` float (E, K).

        Returns:
            pos float64 (E, K, 3) world m, quat float64 (E, K, 4) wxyz.
        """
        times = np.asarray(times_s, np.float64)
        pos, quat = np.empty(times.shape + (3,)), np.empty(times.shape + (4,))
        kernels.interpolate_poses(
            self._rows, self._n_samples, self.dt_s, np.asarray(episodes, np.int64), times, pos, quat
        )
        return pos, quat
