"""The bundled MuJoCo EE-tracking task as an rsl_rl ``VecEnv`` (rsl-rl-lib 2.3), for training the demo policy.

The env is moetape.record.mujoco_backend.MujocoBackend unchanged: the same robot, the 109-dim
observation, terminations (trunk contact, base below 0.12 m or tilted > 60 deg), the 7 s time limit
and the resets (each reset draws the trajectory episode an env plays, seeded by (seed, env, episode)).
The training reward is the task's own reward parts (moetape.record.mujoco_task.REWARD_WEIGHTS) plus
one sharper position term, all scaled by the policy step (0.02 s) as legged_gym does:

    reward = dt * (sum of TRAIN_REWARD_WEIGHTS[name] * term[name])

Only the training code imports this module (rsl_rl is the ``train`` extra); an import-linter
contract keeps rsl_rl out of everything else.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from rsl_rl.env import VecEnv

from moetape.record.mujoco_backend import MujocoBackend
from moetape.record.mujoco_task import OBS_DIM, POLICY_DT_S, REWARD_WEIGHTS
from moetape.record.trajectory import Trajectories

ACTION_DIM = 18
POS_FINE_SCALE_M = 0.02
"""Length scale of the sharper position term: exp(-pos_err / 0.02 m)."""
TRAIN_REWARD_WEIGHTS: Dict[str, float] = dict(REWARD_WEIGHTS, reward_pos_fine=1.0)
"""Training reward parts and weights: the task's five (reward_pos 1.0 * exp(-err / 0.1 m), reward_ori
0.5 * exp(-err / 0.5 rad), reward_upright -1.0 * |gravity xy|^2, reward_action_rate -0.01 * sum (a -
a_prev)^2, reward_termination -10.0) and reward_pos_fine 1.0 * exp(-err / 0.02 m)."""


def trajectories_from_episodes(episodes: List[Dict[str, np.ndarray]]) -> Trajectories:
    """Stack legacy trajectory episodes (dicts of ``ee_pos`` / ``ee_axis_angle`` (T, 3)) into Trajectories."""
    return Trajectories(
        np.stack([e["ee_pos"] for e in episodes]).astype(np.float32),
        np.stack([e["ee_axis_angle"] for e in episodes]).astype(np.float32),
    )


class MujocoTrainEnv(VecEnv):
    """E envs of the bundled EE-tracking task behind rsl_rl's VecEnv interface.

    Observations, rewards and dones are float32 / float32 / int64 torch tensors (E, 109), (E,), (E,)
    on ``device`` (the physics runs on the CPU). ``extras["time_outs"]`` marks time-limit ends, so
    PPO bootstraps them; ``extras["log"]`` holds the step's mean reward parts and tracking errors.
    """

    def __init__(
        self,
        trajectories: Trajectories,
        *,
        n_envs: int,
        seed: int = 0,
        device: str = "cpu",
        episode_length_s: float = 7.0,
        init_noise_rad: float = 0.0,
        n_threads: Optional[int] = None,
    ) -> None:
        self.backend = MujocoBackend(
            trajectories,
            n_envs=n_envs,
            seed=seed,
            episode_length_s=episode_length_s,
            init_noise_rad=init_noise_rad,
            n_threads=n_threads,
        )
        self.num_envs = int(n_envs)
        self.num_actions = ACTION_DIM
        self.num_obs = OBS_DIM
        self.max_episode_length = self.backend.max_steps
        self.device = torch.device(device)
        self.cfg = {"n_envs": n_envs, "seed": seed, "episode_length_s": episode_length_s}
        self.episode_length_buf = torch.zeros(self.num_envs, dtype=torch.long)
        self._obs = self._tensor(self.backend.reset())
        self._names = list(TRAIN_REWARD_WEIGHTS)
        self._weights = np.array([TRAIN_REWARD_WEIGHTS[n] for n in self._names], np.float32)

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def get_observations(self) -> Tuple[torch.Tensor, dict]:
        """Return the current observation float32 (E, 109) and empty extras."""
        return self._obs, {"observations": {}}

    def reset(self) -> Tuple[torch.Tensor, dict]:
        """Reset every env; return the observation and empty extras."""
        self._obs = self._tensor(self.backend.reset())
        self.episode_length_buf.zero_()
        return self._obs, {"observations": {}}

    def step(self, actions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Apply ``actions`` (E, 18) for one policy step; return obs, reward, dones, extras."""
        a = actions.detach().to("cpu", torch.float32).numpy()
        r = self.backend.step(a, substep_frames=False)
        parts = training_reward_parts(r.terms)
        reward = POLICY_DT_S * (self._weights[:, None] * np.stack([parts[n] for n in self._names])).sum(0)
        self.episode_length_buf = torch.from_numpy(self.backend.step_in_episode.astype(np.int64))
        self._obs = self._tensor(r.obs)
        log = {f"/{k}": float(np.mean(v)) for k, v in r.terms.items()}
        extras = {"time_outs": self._tensor(r.timeout), "observations": {}, "log": log}
        return (
            self._obs,
            self._tensor(reward.astype(np.float32)),
            self._tensor(r.done.astype(np.int64)),
            extras,
        )

    def close(self) -> None:
        """Release the simulator."""
        self.backend.close()


def training_reward_parts(terms: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Return the unweighted training reward parts float32 (E,) each, from a backend step's terms.

    The task's parts come weighted from the backend (REWARD_WEIGHTS); they are divided back here so
    that TRAIN_REWARD_WEIGHTS alone sets every weight.
    """
    out = {n: terms[n] / np.float32(w) for n, w in REWARD_WEIGHTS.items()}
    err = terms["task_reaching_pos_err"]
    out["reward_pos_fine"] = np.exp(-err / np.float32(POS_FINE_SCALE_M)).astype(np.float32)
    return out
