"""Control buffer and PD position controller, as in UMI-on-Legs ``control.py``."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple, Union

import numpy as np
import torch


@dataclasses.dataclass
class Control:
    torque: torch.Tensor  # (num_envs, control_dim) the current torque
    buffer: torch.Tensor  # (num_envs, buffer_len, control_dim) past targets, newest first

    def push(self, action: torch.Tensor):
        self.buffer = torch.cat((action[:, None, :], self.buffer[:, :-1]), dim=1)

    @property
    def action(self):
        return self.buffer[:, 0]


class PDController:
    def __init__(
        self,
        control_dim: int,
        device: str,
        torque_limit: torch.Tensor,
        kp: torch.Tensor,
        kd: torch.Tensor,
        num_envs: int,
        seed: int = 0,
        decimation_count: Union[int, Tuple[int, int]] = (3, 5),
        scale: Optional[torch.Tensor] = None,
        offset: Optional[torch.Tensor] = None,
    ):
        self.scale = torch.ones((1, control_dim), device=device) if scale is None else scale.to(device)
        self.offset = torch.zeros((1, control_dim), device=device) if offset is None else offset.to(device)
        self.np_random = np.random.RandomState(seed)
        self.torque_limit = torque_limit.to(device)
        self.device = device
        self.decimation_count_range = (
            decimation_count
            if not isinstance(decimation_count, int)
            else (decimation_count, decimation_count)
        )
        self.control_dim = control_dim
        self.kp = kp.to(self.device)[None, :].float()
        self.kd = kd.to(self.device)[None, :].float()
        self.num_envs = num_envs

    @property
    def decimation_count(self) -> int:
        return int(self.np_random.randint(self.decimation_count_range[0], self.decimation_count_range[1] + 1))

    def __call__(self, action, state):
        return self.compute_torque(action * self.scale + self.offset.repeat(action.shape[0], 1), state)

    def compute_torque(self, normalized_action, state):
        return torch.clip(normalized_action, min=-self.torque_limit, max=self.torque_limit)


class PositionController(PDController):
    def compute_torque(self, normalized_action, state):
        if normalized_action.shape[0] != self.kp.shape[0]:
            self.kp = self.kp.repeat(normalized_action.shape[0], 1)
            self.kd = self.kd.repeat(normalized_action.shape[0], 1)
        torques = self.kp * (normalized_action - state.dof_pos) - self.kd * state.dof_vel
        return super().compute_torque(torques, state)
