"""QM-MoE's env with base information in the observation: the UMI-on-Legs env plus the root pose
(position 3, xyzw quaternion 4) and velocities (linear 3, angular 3): 96 + 13 = 109 values."""

from __future__ import annotations

import torch

from legged_gym.env.isaacgym.env import IsaacGymEnv as _BaseEnv


class IsaacGymEnv(_BaseEnv):
    def state_observation(self) -> torch.Tensor:
        s = self.state
        extra = (s.root_pos, s.root_xyzw_quat, s.root_lin_vel, s.root_ang_vel)
        return torch.cat((super().state_observation(),) + extra, dim=1)
