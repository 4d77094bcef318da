"""End-effector target trajectories: the legacy .pkl (restricted unpickler) and .npz files."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRAJECTORY_DT_S = 0.005
"""Trajectory files are sampled at 200 Hz (legacy)."""


@dataclass(frozen=True)
class Trajectories:
    """World-frame EE target poses of N episodes of equal length T.

    ee_pos: float32 (N, T, 3), metres. ee_axis_angle: float32 (N, T, 3), rotation vector, radians.
    """

    ee_pos: np.ndarray
    ee_axis_angle: np.ndarray
    dt_s: float = TRAJECTORY_DT_S

    @property
    def n_episodes(self) -> int:
        return int(self.ee_pos.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.ee_pos.shape[1])
