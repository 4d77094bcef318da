"""Write a training run's files for the Isaac Gym stand-in: config.pkl, the checkpoint, a trajectory.

``config.pkl`` is shaped like a real resolved hydra config of QM-MoE / UMI-on-Legs (``seed``,
``env`` with its ``_target_``, ``cfg`` sections, controller, partial tasks, ``runner``, ``wandb``),
with values the toy stand-in physics can play.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Dict, List, Optional

TRAINING_TERMINATIONS = ["base", "hip", "Head", "thigh", "base_arm_link", "link1", "link2", "link3"]
ENV_TARGETS = {
    "qm-moe": ("legged_gym.env.isaacgym.env_add_baseinfo.IsaacGymEnv", 109),
    "umi": ("legged_gym.env.isaacgym.env.IsaacGymEnv", 96),
}


def _tensor(values: List[float]) -> Dict[str, Any]:
    return {"_target_": "torch.tensor", "data": list(values), "device": "cuda:0"}


def make_config(
    trajectory_path: str,
    *,
    seed: int = 42,
    env: str = "qm-moe",
    num_observations: Optional[int] = None,
    episode_length_s: float = 1.0,
) -> Dict[str, Any]:
    """A resolved training config for the stand-in env (4096 training envs on cuda:0)."""
    target, n_obs = ENV_TARGETS[env]
    j = 18
    return {
        "seed": seed,
        "wandb": {"mode": "online", "project": "qm-moe"},
        "runner": {
            "_target_": "legged_gym.rsl_rl.runners.on_policy_runner.OnPolicyRunner",
            "device": "cuda:0",
        },
        "env": {
            "_target_": target,
            "sim_device": "cuda:0",
            "headless": True,
            "graphics_device_id": 0,
            "attach_camera": False,
            "seed": seed,
            "dof_pos_reset_range_scale": 0.1,
            "obs_history_len": 1,
            "vis_resolution": [90, 160],
            "env_spacing": 2.0,
            "ctrl_buf_len": 2,
            "max_action_value": 100.0,
            "debug_viz": True,
            "dense_rewards": True,
            "state_obs": {},
            "setup_obs": {},
            "privileged_state_obs": {},
            "privileged_setup_obs": {},
            "controller": {
                "_target_": "legged_gym.env.isaacgym.control.PositionController",
                "control_dim": j,
                "device": "cuda:0",
                "num_envs": 4096,
                "seed": seed,
                "decimation_count": 4,
                "torque_limit": _tensor([30.0] * j),
                "kp": _tensor([20.0] * j),
                "kd": _tensor([0.5] * j),
                "scale": _tensor([0.25] * j),
            },
            "tasks": {
                "reaching": {
                    "_target_": "legged_gym.env.isaacgym.task.ReachingLinkTask",
                    "_partial_": True,
                    "link_name": "link6",
                    "pos_obs_scale": 1.0,
                    "orn_obs_scale": 1.0,
                    "pos_err_sigma": 1.0,
                    "orn_err_sigma": 1.0,
                    "pos_reward_scale": 1.0,
                    "orn_reward_scale": 1.0,
                    "pose_reward_scale": 0.0,
                    "target_obs_times": [0.0, 0.02, 0.04, 0.06],
                    "pose_latency": 0.0,
                    "storage_device": "cpu",
                    "sequence_sampler": {
                        "_target_": "legged_gym.env.isaacgym.pose_sequence.SequenceSampler",
                        "file_path": trajectory_path,
                        "episode_length": 2000,
                        "dt": 0.02,
                        "device": "cuda:0",
                    },
                }
            },
            "constraints": {
                "joint_limit": {
                    "_target_": "legged_gym.env.isaacgym.constraints.JointLimit",
                    "_partial_": True,
                }
            },
            "cfg": {
                "env": {
                    "num_envs": 4096,
                    "num_observations": num_observations if num_observations is not None else n_obs,
                    "num_privileged_obs": None,
                    "num_actions": j,
                    "episode_length_s": episode_length_s,
                    "send_timeouts": True,
                },
                "asset": {
                    "file": "{LEGGED_GYM_ROOT_DIR}/resources/robots/go2ARX5/urdf/go2ARX5.urdf",
                    "name": "go2ARX5",
                    "terminate_after_contacts_on": list(TRAINING_TERMINATIONS),
                },
                "terrain": {"mode": "perlin", "static_friction": 1.0, "dynamic_friction": 1.0},
                "domain_rand": {
                    "push_robots": True,
                    "transport_robots": True,
                    "push_interval_s": 15,
                    "transport_interval_s": 4,
                },
                "init_state": {
                    "pos": [0.0, 0.0, 0.4],
                    "rot": [0.0, 0.0, 0.0, 1.0],
                    "lin_vel": [0.0, 0.0, 0.0],
                    "ang_vel": [0.0, 0.0, 0.0],
                    "pos_noise": [0.2, 0.2, 0.0],
                    "euler_noise": [0.1, 0.1, 0.1],
                    "lin_vel_noise": [0.1, 0.1, 0.0],
                    "ang_vel_noise": [0.1, 0.1, 0.1],
                },
                "rewards": {"scales": {"torque": 0.0001}, "only_positive_rewards": False},
                "sim": {
                    "dt": 0.005,
                    "substeps": 1,
                    "gravity": [0.0, 0.0, -9.81],
                    "up_axis": "z",
                    "use_gpu_pipeline": True,
                    "physx": {"num_threads": 10, "solver_type": 1, "use_gpu": True},
                },
                "viewer": {"pos": [10, 0, 6], "lookat": [11.0, 5, 3.0]},
            },
        },
    }


def make_run(folder: str, *, env: str = "qm-moe", **config_kw: Any) -> Dict[str, str]:
    """Write model_1000.pt, base.pt, arm.pt, traj.pkl and config.pkl (as a training run keeps them) into ``folder``."""
    from moetape.record.demo import make_demo_checkpoint, make_demo_expert_checkpoint, make_demo_trajectory

    os.makedirs(folder, exist_ok=True)
    ckpt = make_demo_checkpoint(os.path.join(folder, "model_1000.pt"))
    experts = {role: os.path.join(folder, role + ".pt") for role in ("base", "arm")}
    for role, path in experts.items():
        make_demo_expert_checkpoint(path, role)
    traj = make_demo_trajectory(os.path.join(folder, "traj.pkl"))
    config = make_config(traj, env=env, **config_kw)
    with open(os.path.join(folder, "config.pkl"), "wb") as f:
        pickle.dump(config, f)
    files = {"checkpoint": ckpt, "trajectory": traj, "config": os.path.join(folder, "config.pkl")}
    return dict(files, **experts)
