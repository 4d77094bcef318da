"""IsaacGymEnv, after UMI-on-Legs ``env.py``: same constructor, step/reset/infos contract and teardown.

What a recorder depends on, kept as in the real env:

- ``reset()`` is ``reset_idx(all)`` followed by one zero-action ``step()``; returns (obs, privileged_obs);
- ``step(action, return_vis=False, callback=None)`` calls ``callback(self)`` before each of its
  ``controller.decimation_count`` physics substeps, then checks terminations (contacts on the
  bodies named in ``cfg.asset.terminate_after_contacts_on``, time-outs) and calls ``reset_idx`` on the
  ended envs *inside* the step, before the observation; it returns (obs, privileged_obs, reward,
  reset_buf, infos) with per-substep-averaged ``task/...`` and summed ``reward/...`` terms;
- ``reset_idx`` writes root and dof state in place; rigid-body poses and contact forces show the
  reset only after the next ``simulate``; ``extras["time_outs"]`` is written only inside ``reset_idx``;
- the env's generator is seeded with ``seed``; the reaching task draws from its own generator;
- there is no ``close()``; ``__del__`` destroys the viewer and the sim;
- with ``headless=False`` a viewer is created; ``render()`` draws it and exits the process when the
  window was closed.

The observation is (state 42 | task 9 per target time | action 18): 96 with four target times.
"""

from __future__ import annotations

import functools
import sys
from typing import Optional, Tuple

import numpy as np
import torch
from isaacgym import gymapi, gymtorch

from legged_gym import LEGGED_GYM_ROOT_DIR
from legged_gym.env.isaacgym.control import Control, PDController
from legged_gym.env.isaacgym.state import EnvState


class IsaacGymEnv:
    def __init__(
        self,
        cfg,
        sim_params,
        sim_device,
        headless,
        controller: PDController,
        state_obs,
        setup_obs,
        privileged_state_obs,
        privileged_setup_obs,
        tasks,
        constraints,
        seed: int,
        dof_pos_reset_range_scale: float,
        obs_history_len: int,
        vis_resolution: Tuple[int, int],
        env_spacing: float,
        ctrl_buf_len: int,
        max_action_value: float,
        ctrl_delay: Optional[torch.Tensor] = None,
        init_dof_pos: Optional[torch.Tensor] = None,
        graphics_device_id: Optional[int] = None,
        debug_viz: float = True,
        attach_camera: bool = True,
        dense_rewards: bool = True,
    ):
        self.dof_pos_reset_range_scale = dof_pos_reset_range_scale
        self.cfg = cfg
        self.sim_params = sim_params
        self.debug_viz = debug_viz
        self.controller = controller
        self.gym_dt = np.mean(self.controller.decimation_count_range) * self.sim_params.dt
        self.reward_scales = self.cfg.rewards.scales
        self.max_episode_length_s = self.cfg.env.episode_length_s
        self.max_episode_length = int(self.max_episode_length_s / self.gym_dt)
        self.env_spacing = env_spacing
        self.dense_rewards = dense_rewards
        self.gym = gymapi.acquire_gym()
        self.sim_device = sim_device
        self.headless = headless
        self.device: str = sim_device if "cuda" in sim_device else "cpu"
        self.sim_params.use_gpu_pipeline = self.device != "cpu"
        self.sim_params.physx.use_gpu = self.device != "cpu"
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.graphics_device_id = -1 if (not attach_camera and headless) else (graphics_device_id or 0)
        self.num_envs = cfg.env.num_envs
        self.num_obs = cfg.env.num_observations
        self.num_privileged_obs = cfg.env.num_privileged_obs
        self.num_actions = cfg.env.num_actions
        self.reset_buf = torch.ones(self.num_envs, device=self.device, dtype=torch.long)
        self.time_out_buf = torch.zeros(self.num_envs, device=self.device, dtype=torch.bool)
        self.extras = {}
        self.create_sim()
        self.gym.prepare_sim(self.sim)
        self.viewer = None
        if not self.headless:
            self.viewer = self.gym.create_viewer(self.sim, gymapi.CameraProperties())
            self.gym.subscribe_viewer_keyboard_event(self.viewer, gymapi.KEY_ESCAPE, "QUIT")
        self.state = EnvState.initialize(gym=self.gym, sim=self.sim, device=self.device)
        self.init_dof_pos = torch.zeros(1, len(self.dof_names), device=self.device)
        self.ctrl = Control(
            buffer=torch.zeros((self.num_envs, ctrl_buf_len, self.num_actions), device=self.device),
            torque=torch.zeros((self.num_envs, self.num_actions), device=self.device),
        )
        self.max_action_value = max_action_value
        self.global_step = 0
        self.tasks = {
            k: v(self.gym, self.sim, self.device, self.generator)
            for k, v in tasks.items()
            if type(v) is functools.partial
        }
        self.constraints = {
            k: v(self.gym, self.sim, self.device, self.generator)
            for k, v in constraints.items()
            if type(v) is functools.partial
        }
        self.vis_cam_handle = self.gym.create_camera_sensor(self.envs[0], None) if attach_camera else None
        self.obs_history = torch.zeros((self.num_envs, obs_history_len, self.num_obs), device=self.device)
        self.obs_history_len = obs_history_len

    @property
    def episode_step(self) -> torch.Tensor:
        return (self.state.episode_time / self.gym_dt).long()

    def create_sim(self):
        self.sim = self.gym.create_sim(0, self.graphics_device_id, gymapi.SIM_PHYSX, self.sim_params)
        asset_path = self.cfg.asset.file.format(LEGGED_GYM_ROOT_DIR=LEGGED_GYM_ROOT_DIR)
        asset = self.gym.load_asset(self.sim, "", asset_path, gymapi.AssetOptions())
        body_names = self.gym.get_asset_rigid_body_names(asset)
        self.dof_names = self.gym.get_asset_dof_names(asset)
        self.num_bodies = len(body_names)
        termination_contact_names = []
        for name in self.cfg.asset.terminate_after_contacts_on:
            termination_contact_names.extend([s for s in body_names if name in s])
        lower = gymapi.Vec3(-self.env_spacing, -self.env_spacing, 0)
        upper = gymapi.Vec3(self.env_spacing, self.env_spacing, self.env_spacing)
        self.envs, self.actor_handles = [], []
        for i in range(self.num_envs):
            env = self.gym.create_env(self.sim, lower, upper, int(np.sqrt(self.num_envs)))
            self.actor_handles.append(self.gym.create_actor(env, asset, gymapi.Transform(), "robot", i, 0))
            self.envs.append(env)
        self.env_origins = torch.tensor(
            [[o.x, o.y, o.z] for o in (self.gym.get_env_origin(e) for e in self.envs)], device=self.device
        )
        self.termination_contact_indices = torch.tensor(
            [
                self.gym.find_actor_rigid_body_handle(self.envs[0], self.actor_handles[0], n)
                for n in termination_contact_names
            ],
            dtype=torch.long,
            device=self.device,
        )
        base = list(self.cfg.init_state.pos) + list(self.cfg.init_state.rot)
        self.base_init_state = torch.tensor(base + [0.0] * 6, device=self.device)
        if self.cfg.terrain.mode == "plane":
            self.gym.add_ground(self.sim, gymapi.PlaneParams())

    def reset(self):
        """Reset all robots"""
        self.reset_idx(torch.arange(self.num_envs, device=self.device))
        obs, privileged_obs, _, _, _ = self.step(
            torch.zeros(self.num_envs, self.num_actions, device=self.device, requires_grad=False)
        )
        return obs, privileged_obs

    def render(self, sync_frame_time=False):
        self.gym.step_graphics(self.sim)
        if self.viewer:
            if self.gym.query_viewer_has_closed(self.viewer):
                sys.exit()
            self.gym.draw_viewer(self.viewer, self.sim, True)
        self.gym.render_all_camera_sensors(self.sim)
        if self.vis_cam_handle is None:
            raise RuntimeError("No camera attached")
        rgb = self.gym.get_camera_image(self.sim, self.envs[0], self.vis_cam_handle, gymapi.IMAGE_COLOR)
        return rgb.reshape(rgb.shape[0], -1, 4)[..., :3]

    def visualize(self, vis_env_ids):
        self.gym.clear_lines(self.viewer)

    def step(self, action: torch.Tensor, return_vis: bool = False, callback=None):
        info = {}
        self.ctrl.push(torch.clip(action, -self.max_action_value, self.max_action_value).to(self.device))
        reward = torch.zeros(self.num_envs, device=self.device, dtype=torch.float)
        if (self.viewer is not None or return_vis) and self.debug_viz:
            self.visualize(vis_env_ids=[0])
        decimation_count = self.controller.decimation_count
        for decimation_step in range(decimation_count):
            callback(self) if callback is not None else None
            self.ctrl.torque = self.controller(action=self.ctrl.action, state=self.state)
            self.gym.set_dof_actuation_force_tensor(self.sim, gymtorch.unwrap_tensor(self.ctrl.torque))
            self.state.step(gym=self.gym, sim=self.sim)
            if self.dense_rewards or decimation_step == decimation_count - 1:
                for task_name, task in self.tasks.items():
                    for k, v in task.step(state=self.state, control=self.ctrl).items():
                        key = f"task/{task_name}/{k}"
                        info[key] = (
                            v
                            if key not in info
                            else (info[key] * decimation_step + v) / (decimation_step + 1)
                        )
                terms = self.compute_reward()
                reward += terms["reward/total"]
                for k, v in terms.items():
                    info[k] = info[k] + v if k in info else v
        self.global_step += 1
        self.check_termination()
        env_ids = self.reset_buf.nonzero(as_tuple=False).flatten()
        self.reset_idx(env_ids)
        obs = self.get_observations()
        self.obs_history = torch.cat((self.obs_history[:, 1:, :], obs.unsqueeze(1)), dim=1)
        info.update(self.extras)
        return self.obs_history.view(self.num_envs, -1), obs, reward, self.reset_buf, info

    def check_termination(self):
        forces = self.state.contact_forces[:, self.termination_contact_indices, :]
        self.reset_buf = torch.any(torch.norm(forces, dim=-1) > 1.0, dim=1)
        self.time_out_buf = self.episode_step > self.max_episode_length
        self.reset_buf |= self.time_out_buf

    def reset_idx(self, env_ids):
        if len(env_ids) == 0:
            return
        self._reset_dofs(env_ids)
        self._reset_root_states(env_ids)
        for task in self.tasks.values():
            task.reset_idx(env_ids)
        self.obs_history[env_ids] = 0.0
        self.ctrl.buffer[env_ids] = 0.0
        self.state.episode_time[env_ids] = 0
        self.reset_buf[env_ids] = 1
        if self.cfg.env.send_timeouts:
            self.extras["time_outs"] = self.time_out_buf

    def _reset_dofs(self, env_ids):
        noise = torch.randn(
            len(env_ids), self.state.dof_pos.shape[1], device=self.device, generator=self.generator
        )
        self.state.dof_pos[env_ids] = self.init_dof_pos + self.dof_pos_reset_range_scale * noise
        self.state.prev_dof_pos[env_ids] = self.state.dof_pos[env_ids].clone()
        self.state.dof_vel[env_ids] = 0.0
        ids = gymtorch.unwrap_tensor(env_ids.to(dtype=torch.int32))
        dof_state = torch.stack((self.state.dof_pos, self.state.dof_vel), dim=-1)
        self.gym.set_dof_state_tensor_indexed(self.sim, gymtorch.unwrap_tensor(dof_state), ids, len(env_ids))

    def _reset_root_states(self, env_ids):
        self.state.root_state[env_ids] = self.base_init_state
        noise = torch.tensor(list(self.cfg.init_state.pos_noise), device=self.device)
        if (noise > 0).any():
            self.state.root_state[env_ids, 0:3] += (
                torch.rand(len(env_ids), 3, device=self.device, generator=self.generator) * 2 - 1
            ) * noise
        self.state.root_state[env_ids, :3] += self.env_origins[env_ids]
        ids = gymtorch.unwrap_tensor(env_ids.to(dtype=torch.int32))
        root = gymtorch.unwrap_tensor(self.state.root_state)
        self.gym.set_actor_root_state_tensor_indexed(self.sim, root, ids, len(env_ids))

    def compute_reward(self):
        out = {"total": torch.zeros(self.num_envs, device=self.device)}
        for task_name, task in self.tasks.items():
            for k, v in task.reward(state=self.state, control=self.ctrl).items():
                out[f"task/{task_name}/{k}"] = v
                out["total"] += v
        out["total"] = out["total"] - self.reward_scales.get("torque", 0.0) * self.ctrl.torque.square().sum(1)
        return {f"reward/{k}": v * self.sim_params.dt for k, v in out.items()}

    def state_observation(self) -> torch.Tensor:
        g = self.state.gravity / torch.linalg.norm(self.state.gravity, dim=1, keepdim=True)
        return torch.cat((self.state.dof_pos, self.state.dof_vel, self.state.root_ang_vel, g), dim=1)

    def get_observations(self) -> torch.Tensor:
        task_obs = [task.observe(state=self.state) for task in self.tasks.values()]
        return torch.cat([self.state_observation()] + task_obs + [self.ctrl.action], dim=1)

    def __del__(self):
        # NOTE (as upstream): this destructor still results in segfaults upon exit.
        if hasattr(self, "viewer") and self.viewer is not None:
            self.gym.destroy_viewer(self.viewer)
        if hasattr(self, "sim"):
            self.gym.destroy_sim(self.sim)
