"""The MuJoCo backend's EE-tracking task (DESIGN.md §5): timing, action scale, spawn, the 109-dim
observation's layout, the reward terms and the termination thresholds. MujocoBackend computes them.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

SIM_DT_S = 0.005
DECIMATION = 4
POLICY_DT_S = SIM_DT_S * DECIMATION
ACTION_SCALE = 0.25
SPAWN_XY = (-0.5, 0.0)
OBS_TARGET_TIMES_S = (0.02, 0.04, 0.06, 1.0)
"""Future times (s after the current episode time) of the 4 EE targets in the observation."""
TARGET_TIMES_S = np.array((0.0,) + OBS_TARGET_TIMES_S)
"""Times of the cached targets: now (pre fields, errors) then the observation's 4."""


def _build_obs_layout() -> Tuple[Tuple[str, slice], ...]:
    sizes = [("dof_pos", 18), ("dof_vel", 18), ("projected_gravity", 3), ("base_ang_vel", 3)]
    for t in OBS_TARGET_TIMES_S:
        sizes += [(f"ee_target_{t:.2f}s_pos", 3), (f"ee_target_{t:.2f}s_rot6d", 6)]
    sizes += [("base_lin_vel_cmd", 3), ("yaw_rate_cmd", 3), ("root_pos", 3), ("base_lin_vel", 3)]
    sizes += [("yaw", 1), ("last_action", 18)]
    layout, start = [], 0
    for name, n in sizes:
        layout.append((name, slice(start, start + n)))
        start += n
    return tuple(layout)


OBS_LAYOUT: Tuple[Tuple[str, slice], ...] = _build_obs_layout()
"""The 109-dim observation, term by term (name, slice), DESIGN.md §5:

dof_pos 0:18 (q - default, rad) · dof_vel 18:36 (rad/s * 0.05) · projected_gravity 36:39 (base frame) ·
base_ang_vel 39:42 (base frame, rad/s * 0.25) · 4 x [ee_target_{t}s_pos (target in the current EE
frame, m * 10), ee_target_{t}s_rot6d (first two columns of R_ee^T R_target, column-wise, * 1.5)] for
t = 0.02, 0.04, 0.06, 1.0 s, 42:78 · base_lin_vel_cmd 78:81 and yaw_rate_cmd 81:84 (zeros) ·
root_pos 84:87 (world, m) · base_lin_vel 87:90 (base frame, m/s) · yaw 90:91 (rad) · last_action 91:109.
"""
OBS_DIM = OBS_LAYOUT[-1][1].stop
OBS: Dict[str, slice] = dict(OBS_LAYOUT)
OBS_TARGETS = slice(OBS["ee_target_0.02s_pos"].start, OBS["ee_target_1.00s_rot6d"].stop)
OBS_COMMANDS = slice(OBS["base_lin_vel_cmd"].start, OBS["yaw_rate_cmd"].stop)
OBS_SCALES: Dict[str, float] = {
    "dof_vel": 0.05,
    "base_ang_vel": 0.25,
    "target_pos": 10.0,
    "target_rot6d": 1.5,
}
"""The observation terms scaled from SI units (rad/s, m, rotation matrix entries), see OBS_LAYOUT."""

REWARD_WEIGHTS: Dict[str, float] = {
    "reward_pos": 1.0,  # * exp(-pos_err / 0.1 m)
    "reward_ori": 0.5,  # * exp(-ori_err / 0.5 rad)
    "reward_upright": -1.0,  # * |projected gravity xy|^2
    "reward_action_rate": -0.01,  # * sum((a - a_prev)^2)
    "reward_termination": -10.0,  # * terminated (trunk contact, base too low or tilted), not the time limit
}
"""Reward parts (per policy step, not scaled by dt); ``reward_total`` is their sum."""

TERM_NAMES: Tuple[str, ...] = ("task_reaching_pos_err", "task_reaching_ori_err", "reward_total") + tuple(
    REWARD_WEIGHTS
)
"""Per-env terms of every step (MujocoBackend._evaluate fills them as rows of one array, in this order)."""
NEG_ERROR_SCALES = np.array([-0.1, -0.5])  # reward_pos, reward_ori: w * exp(error / neg_scale)
MIN_BASE_HEIGHT_M = 0.12
MAX_TILT_RAD = np.deg2rad(60.0)
COS_MAX_TILT = float(np.cos(MAX_TILT_RAD))
TRUNK_CONTACT_N = 1.0
