"""EnvState, as in UMI-on-Legs ``state.py``: views of the gym tensors, refreshed after each simulate."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from isaacgym import gymtorch


@dataclasses.dataclass
class EnvState:
    root_state: torch.Tensor
    root_pos: torch.Tensor
    root_xyzw_quat: torch.Tensor
    root_lin_vel: torch.Tensor
    root_ang_vel: torch.Tensor
    dof_pos: torch.Tensor
    dof_vel: torch.Tensor
    prev_dof_pos: torch.Tensor
    prev_dof_vel: torch.Tensor
    rigid_body_pos: torch.Tensor
    rigid_body_xyzw_quat: torch.Tensor
    rigid_body_lin_vel: torch.Tensor
    rigid_body_ang_vel: torch.Tensor
    contact_forces: torch.Tensor
    force_sensor_tensor: Optional[torch.Tensor]
    episode_time: torch.Tensor  # in seconds
    gravity: torch.Tensor
    time: float
    prev_time: float
    device: str

    @property
    def sim_dt(self) -> float:
        return self.time - self.prev_time

    def step(self, gym, sim):
        self.prev_dof_pos[:] = self.dof_pos[:]
        self.prev_dof_vel[:] = self.dof_vel[:]
        self.prev_time = self.time
        gym.simulate(sim)
        if self.device == "cpu":
            gym.fetch_results(sim, True)
        gym.refresh_actor_root_state_tensor(sim)
        gym.refresh_dof_state_tensor(sim)
        gym.refresh_net_contact_force_tensor(sim)
        gym.refresh_rigid_body_state_tensor(sim)
        self.time = gym.get_sim_time(sim)
        self.episode_time += self.sim_dt

    @staticmethod
    def initialize(gym, sim, device: str) -> EnvState:
        gym.refresh_actor_root_state_tensor(sim)
        gym.refresh_dof_state_tensor(sim)
        gym.refresh_net_contact_force_tensor(sim)
        gym.refresh_rigid_body_state_tensor(sim)
        n = gym.get_env_count(sim)
        dof = gymtorch.wrap_tensor(gym.acquire_dof_state_tensor(sim)).view(n, -1, 2).to(device)
        root = gymtorch.wrap_tensor(gym.acquire_actor_root_state_tensor(sim)).to(device)
        bodies = gymtorch.wrap_tensor(gym.acquire_rigid_body_state_tensor(sim)).to(device).view(n, -1, 13)
        contact = gymtorch.wrap_tensor(gym.acquire_net_contact_force_tensor(sim)).view(n, -1, 3).to(device)
        params = gym.get_sim_params(sim)
        g = params.gravity
        return EnvState(
            root_state=root,
            root_pos=root[..., 0:3],
            root_xyzw_quat=root[..., 3:7],
            root_lin_vel=root[..., 7:10],
            root_ang_vel=root[..., 10:13],
            dof_pos=dof[..., 0],
            dof_vel=dof[..., 1],
            prev_dof_pos=dof[..., 0].clone(),
            prev_dof_vel=dof[..., 1].clone(),
            rigid_body_pos=bodies[..., 0:3],
            rigid_body_xyzw_quat=bodies[..., 3:7],
            rigid_body_lin_vel=bodies[..., 7:10],
            rigid_body_ang_vel=bodies[..., 10:13],
            contact_forces=contact,
            force_sensor_tensor=None,
            time=gym.get_sim_time(sim),
            prev_time=gym.get_sim_time(sim) - params.dt,
            gravity=torch.tensor([g.x, g.y, g.z], device=device).unsqueeze(0).repeat(n, 1),
            episode_time=torch.zeros(n, dtype=torch.float32, device=device),
            device=device,
        )
