"""ReachingLinkTask, as in UMI-on-Legs ``task.py`` (world-frame EE target pose tracking), trimmed.

As in the real task: its own torch generator (not seeded by the env's seed) draws each reset's
sequence; targets are indexed by ``times / sim_dt``; ``get_target_pose(times, sim_dt)`` gives (E, 4, 4).
"""

from __future__ import annotations

from typing import Dict, List

import torch


class Task:
    def __init__(self, gym, sim, device: str, generator: torch.Generator):
        self.gym = gym
        self.sim = sim
        self.num_envs = gym.get_env_count(sim)
        self.device = device
        self.generator = generator

    def reset_idx(self, env_ids: torch.Tensor):
        pass

    def visualize(self, state, viewer, vis_env_ids: List[int]):
        pass


class ReachingLinkTask(Task):
    def __init__(
        self,
        gym,
        sim,
        device: str,
        generator: torch.Generator,
        link_name: str,
        pos_obs_scale: float,
        orn_obs_scale: float,
        pos_err_sigma: float,
        orn_err_sigma: float,
        pos_reward_scale: float,
        orn_reward_scale: float,
        pose_reward_scale: float,
        target_obs_times: List[float],
        sequence_sampler,
        pose_latency: float,
        storage_device: str = "cpu",
    ):
        super().__init__(gym=gym, sim=sim, device=device, generator=torch.Generator(device=storage_device))
        self.storage_device = storage_device
        env = gym.get_env(sim, 0)
        self.link_index = gym.find_actor_rigid_body_handle(env, gym.get_actor_handle(env, 0), link_name)
        if self.link_index == -1:
            raise ValueError(f"Could not find {link_name!r} in actor")
        self.sequence_sampler = sequence_sampler
        n, length = self.num_envs, sequence_sampler.episode_length
        self.target_pos_seq = torch.zeros((n, length, 3), device=storage_device)
        self.target_rot_mat_seq = torch.zeros((n, length, 3, 3), device=storage_device)
        self.curr_target_pos = torch.zeros((n, 3), device=device)
        self.pos_obs_scale, self.orn_obs_scale = pos_obs_scale, orn_obs_scale
        self.pos_err_sigma, self.orn_err_sigma = pos_err_sigma, orn_err_sigma
        self.pos_reward_scale, self.orn_reward_scale = pos_reward_scale, orn_reward_scale
        self.pose_reward_scale = pose_reward_scale
        self.target_obs_times = target_obs_times
        self.pose_latency = pose_latency

    def reset_idx(self, env_ids: torch.Tensor):
        if len(env_ids) == 0:
            return
        origins = torch.stack(
            [
                torch.tensor([o.x, o.y, o.z])
                for o in (self.gym.get_env_origin(self.gym.get_env(self.sim, int(i))) for i in env_ids)
            ]
        )
        seed = int(
            torch.randint(0, 2**32 - 1, (1,), generator=self.generator, device=self.storage_device).item()
        )
        pos_seq, rot_seq = self.sequence_sampler.sample(seed=seed, batch_size=len(env_ids))
        self.target_pos_seq[env_ids] = pos_seq + origins.unsqueeze(1)
        self.target_rot_mat_seq[env_ids] = rot_seq

    def get_targets_at_times(self, times: torch.Tensor, sim_dt: float):
        step = torch.clamp((times / sim_dt).long(), min=0, max=self.target_pos_seq.shape[1] - 1)
        idx = torch.arange(self.num_envs)
        return self.target_pos_seq[idx, step].to(self.device), self.target_rot_mat_seq[idx, step].to(
            self.device
        )

    def get_target_pose(self, times: torch.Tensor, sim_dt: float):
        pose = torch.eye(4, device=self.device).unsqueeze(0).repeat(self.num_envs, 1, 1)
        pos, rot = self.get_targets_at_times(times=times, sim_dt=sim_dt)
        pose[..., :3, 3] = pos
        pose[..., :3, :3] = rot
        return pose

    def get_pos_err(self, state) -> torch.Tensor:
        return (self.curr_target_pos - state.rigid_body_pos[:, self.link_index]).norm(dim=1)

    def step(self, state, control) -> Dict[str, torch.Tensor]:
        self.curr_target_pos[:] = self.get_targets_at_times(state.episode_time, state.sim_dt)[0]
        return {"pos_err": self.get_pos_err(state)}

    def reward(self, state, control) -> Dict[str, torch.Tensor]:
        pos_reward = torch.exp(-(self.get_pos_err(state) ** 2) / self.pos_err_sigma)
        return {"pos": pos_reward * self.pos_reward_scale}

    def observe(self, state) -> torch.Tensor:
        link_pos = state.rigid_body_pos[:, self.link_index]
        parts = []
        for t in self.target_obs_times:
            pose = self.get_target_pose(times=state.episode_time + t, sim_dt=state.sim_dt)
            parts.append((pose[:, :3, 3] - link_pos) * self.pos_obs_scale)
            parts.append(pose[:, :3, :2].reshape(self.num_envs, 6) * self.orn_obs_scale)
        return torch.cat(parts, dim=1)  # (E, 9 x len(target_obs_times))
