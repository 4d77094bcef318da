# isort: skip_file
"""The legacy play scripts' Isaac Gym set-up and loop, on the stand-in: the reference moetape must match.

Follows QM-MoE ``scripts/play_moe_ee_task.py`` (``--script ee_task``) and ``play_moe_simple.py``
(``--script simple``) step for step: isaacgym first, ``config.pkl`` as stored, ``parse_sim_config``,
every ``device`` key replaced, the same play overrides (ee_task also keeps only ``["base"]`` in
``terminate_after_contacts_on``), ``setup(config, seed=config["seed"])``, the env instantiated with
``sim_params=``, one ``env.reset()``, then ``env.step(actions)`` per step. Instead of a policy it
replays the actions of a moetape log (``actions.npy``, (S, E, A)), so the two runs can be compared.

    python legacy_reference.py RUN_DIR ACTIONS_NPY OUT_NPZ --script ee_task --num_envs 2 --device cpu
"""

import argparse
import functools
import importlib
import os
import pickle
import random

from isaacgym import gymapi, gymutil  # must be imported before torch

import numpy as np  # noqa: E402
import torch  # noqa: E402


class AttrDict(dict):
    """What hydra hands an env for a nested config: attribute access (an omegaconf DictConfig)."""

    __getattr__ = dict.__getitem__

    def __setattr__(self, key, value):
        self[key] = value


def instantiate(node, **kwargs):
    if isinstance(node, list):
        return [instantiate(v) for v in node]
    if not isinstance(node, dict):
        return node
    if "_target_" not in node:
        return AttrDict({k: instantiate(v) for k, v in node.items()})
    module, _, name = node["_target_"].rpartition(".")
    target = getattr(importlib.import_module(module), name)
    params = {k: instantiate(v) for k, v in node.items() if not (k.startswith("_") and k.endswith("_"))}
    params.update(kwargs)
    if node.get("_partial_", False):
        return functools.partial(target, **params)
    return target(**params)


def recursively_replace_device(obj, device):
    if isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = device if k == "device" else recursively_replace_device(v, device)
        return obj
    if isinstance(obj, list):
        return [recursively_replace_device(v, device) for v in obj]
    return obj


def main():
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("actions")
    p.add_argument("out")
    p.add_argument("--script", choices=["ee_task", "simple"], required=True)
    p.add_argument("--num_envs", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--trajectory_file_path", default=None)
    args = p.parse_args()
    with open(os.path.join(args.run_dir, "config.pkl"), "rb") as f:
        config = pickle.load(f)
    sim_params = gymapi.SimParams()
    gymutil.parse_sim_config(config["env"]["cfg"]["sim"], sim_params)
    config = recursively_replace_device(config, device=args.device)
    env_cfg = config["env"]
    env_cfg["headless"] = True
    env_cfg["graphics_device_id"] = 0
    env_cfg["attach_camera"] = False
    env_cfg["sim_device"] = args.device
    env_cfg["dof_pos_reset_range_scale"] = 0
    env_cfg["controller"]["num_envs"] = args.num_envs
    env_cfg["cfg"]["env"]["num_envs"] = args.num_envs
    env_cfg["cfg"]["domain_rand"]["push_robots"] = False
    env_cfg["cfg"]["domain_rand"]["transport_robots"] = False
    env_cfg["cfg"]["terrain"]["mode"] = "plane"
    for key in ("pos_noise", "euler_noise", "lin_vel_noise", "ang_vel_noise"):
        env_cfg["cfg"]["init_state"][key] = [0.0, 0.0, 0.0]
    if args.trajectory_file_path:
        env_cfg["tasks"]["reaching"]["sequence_sampler"]["file_path"] = args.trajectory_file_path
    if args.script == "ee_task":
        env_cfg["cfg"]["asset"]["terminate_after_contacts_on"] = ["base"]
    env_cfg["constraints"] = {}
    seed = config["seed"]  # setup(config, seed=config["seed"])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    env = instantiate(env_cfg, sim_params=sim_params)
    task = list(env.tasks.values())[0]
    actions = np.load(args.actions)
    out = {"obs": [], "target_pos": [], "done": [], "root_pos": [], "dof_pos": []}
    with torch.inference_mode():
        obs, _ = env.reset()
        for action in actions:
            pose = task.get_target_pose(times=env.state.episode_time, sim_dt=env.state.sim_dt)
            out["target_pos"].append(pose[:, :3, 3].numpy().copy())
            out["obs"].append(obs.numpy().copy())
            out["root_pos"].append(env.state.root_pos.numpy().copy())
            out["dof_pos"].append(env.state.dof_pos.numpy().copy())
            obs, _, _, dones, _ = env.step(torch.as_tensor(action))
            out["done"].append(dones.numpy().astype(bool))
    np.savez(args.out, **{k: np.stack(v) for k, v in out.items()})


if __name__ == "__main__":
    main()
