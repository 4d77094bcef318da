"""The MuJoCo backend's EE target table: every trajectory episode's poses, looked up in time."""

from __future__ import annotations

from typing import Tuple

import numpy as np

from moetape.record import kernels
from moetape.record.poses import rotvec_to_quat
from moetape.record.trajectory import Trajectories


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
