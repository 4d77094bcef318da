"""Train the demo MoE policy with rsl_rl's PPO (rsl-rl-lib 2.3) on the bundled MuJoCo task.

The policy is a QM-MoE variant-B actor-critic (:class:`MoEActorCritic`): two rsl_rl ``ActorCritic``
experts, ``ac_base`` and ``ac_arm`` (actor and critic 109-128-64-32, ELU), and a gate ``obs_moe.mlp``
(109-128-64-2, ReLU, softmax after). Its ``state_dict`` is exactly the variant-B checkpoint layout
that moetape.record.policy loads (DESIGN.md §5). For PPO:

- action mean ``= w_base * base.actor(obs) + w_arm * arm.actor(obs)``, ``w = softmax(gate(obs))``:
  the same blend as inference, so the gate is trained by the policy gradient only;
- action std ``= sum_k w_k * |std_k|`` with ``w`` detached (the gate does not learn from the
  entropy bonus), value ``= sum_k w_k * critic_k(obs)`` with ``w`` detached (nor from the value loss).

The rollout loop is rsl_rl's ``OnPolicyRunner.learn`` loop (act, step, process_env_step,
compute_returns, update) written out here: the 2.3 runner builds its policy class by ``eval`` of a
name in its own module, which cannot name this class, and its logging needs tensorboard.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from rsl_rl.algorithms import PPO
from rsl_rl.modules import ActorCritic
from torch.distributions import Normal

from moetape.record.demo import demo_episodes
from moetape.record.train_env import TRAIN_REWARD_WEIGHTS, MujocoTrainEnv, trajectories_from_episodes

EXPERT_HIDDEN = (128, 64, 32)
GATE_HIDDEN = (128, 64)


class _Gate(nn.Module):
    """The variant-B gate: ``mlp`` Linear-ReLU-Linear-ReLU-Linear; softmax applied by the caller."""

    def __init__(self, n_obs: int, hidden: Sequence[int], n_experts: int) -> None:
        super().__init__()
        sizes = [n_obs] + list(hidden)
        layers: List[nn.Module] = []
        for i, o in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(i, o), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], n_experts))
        self.mlp = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.mlp(obs)


class MoEActorCritic(nn.Module):
    """Base and arm rsl_rl actor-critics blended by a softmax gate; the PPO policy interface of
    rsl_rl's ``ActorCritic`` (act, act_inference, evaluate, get_actions_log_prob, action_mean,
    action_std, entropy). State-dict keys: ``ac_base.*``, ``ac_arm.*``, ``obs_moe.mlp.*``."""

    is_recurrent = False

    def __init__(
        self,
        num_actor_obs: int,
        num_critic_obs: int,
        num_actions: int,
        *,
        expert_hidden: Sequence[int] = EXPERT_HIDDEN,
        gate_hidden: Sequence[int] = GATE_HIDDEN,
        init_noise_std: float = 0.5,
    ) -> None:
        super().__init__()
        hidden = list(expert_hidden)
        with contextlib.redirect_stdout(io.StringIO()):  # ActorCritic prints its MLPs
            self.ac_base = ActorCritic(
                num_actor_obs, num_critic_obs, num_actions, hidden, hidden, "elu", init_noise_std
            )
            self.ac_arm = ActorCritic(
                num_actor_obs, num_critic_obs, num_actions, hidden, hidden, "elu", init_noise_std
            )
        self.obs_moe = _Gate(num_actor_obs, gate_hidden, 2)
        self.distribution: Optional[Normal] = None
        Normal.set_default_validate_args(False)

    def _experts(self) -> List[ActorCritic]:
        return [self.ac_base, self.ac_arm]

    def gate_weights(self, obs: torch.Tensor) -> torch.Tensor:
        """Return the gate weights float32 (E, 2), columns base, arm; obs float32 (E, 109)."""
        return torch.softmax(self.obs_moe(obs), dim=-1)

    def reset(self, dones: Any = None) -> None:
        pass

    def forward(self) -> None:
        raise NotImplementedError

    @property
    def action_mean(self) -> torch.Tensor:
        return self.distribution.mean  # type: ignore[union-attr]

    @property
    def action_std(self) -> torch.Tensor:
        return self.distribution.stddev  # type: ignore[union-attr]

    @property
    def entropy(self) -> torch.Tensor:
        return self.distribution.entropy().sum(dim=-1)  # type: ignore[union-attr]

    def act_inference(self, obs: torch.Tensor) -> torch.Tensor:
        """Return the blended action mean (E, 18): the inference path of moetape.record.policy."""
        w = self.gate_weights(obs)
        return sum(w[:, k : k + 1] * e.actor(obs) for k, e in enumerate(self._experts()))  # type: ignore[return-value]

    def update_distribution(self, obs: torch.Tensor) -> None:
        w = self.gate_weights(obs)
        mean = sum(w[:, k : k + 1] * e.actor(obs) for k, e in enumerate(self._experts()))
        wd = w.detach()
        std = sum(wd[:, k : k + 1] * e.std.abs() for k, e in enumerate(self._experts()))
        self.distribution = Normal(mean, torch.clamp(std, min=1e-3))  # type: ignore[arg-type]

    def act(self, obs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.update_distribution(obs)
        return self.distribution.sample()  # type: ignore[union-attr]

    def get_actions_log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        return self.distribution.log_prob(actions).sum(dim=-1)  # type: ignore[union-attr]

    def evaluate(self, critic_obs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        wd = self.gate_weights(critic_obs).detach()
        return sum(wd[:, k : k + 1] * e.critic(critic_obs) for k, e in enumerate(self._experts()))  # type: ignore[return-value]


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; stored in the checkpoint's infos and the metadata."""

    seed: int = 0
    iterations: int = 300
    n_envs: int = 128
    steps_per_env: int = 24
    n_train_episodes: int = 64
    train_trajectory_seed: int = 1
    init_noise_std: float = 0.5
    episode_length_s: float = 7.0
    ppo: Dict[str, Any] = field(
        default_factory=lambda: {
            "num_learning_epochs": 5,
            "num_mini_batches": 4,
            "clip_param": 0.2,
            "gamma": 0.99,
            "lam": 0.95,
            "value_loss_coef": 1.0,
            "entropy_coef": 0.005,
            "learning_rate": 1e-3,
            "max_grad_norm": 1.0,
            "use_clipped_value_loss": True,
            "schedule": "adaptive",
            "desired_kl": 0.01,
        }
    )


CURVE_KEYS = (
    "mean_reward",
    "pos_err_m",
    "ori_err_rad",
    "termination_rate",
    "gate_arm_mean",
    "gate_arm_std",
    "action_std",
)


def train(
    cfg: TrainConfig,
    *,
    device: str = "cpu",
    progress: Optional[Callable[[int, Dict[str, float]], None]] = None,
) -> Dict[str, Any]:
    """Train the MoE policy; return ``{"policy", "optimizer", "curves", "seconds", "env_steps"}``.

    Deterministic for ``cfg.seed`` on the CPU with one torch thread. ``progress(it, row)`` is called
    after every iteration with that iteration's figures (CURVE_KEYS).
    """
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    episodes = demo_episodes(seed=cfg.train_trajectory_seed, n_episodes=cfg.n_train_episodes)
    env = MujocoTrainEnv(
        trajectories_from_episodes(episodes),
        n_envs=cfg.n_envs,
        seed=cfg.seed,
        device=device,
        episode_length_s=cfg.episode_length_s,
    )
    policy = MoEActorCritic(109, 109, 18, init_noise_std=cfg.init_noise_std).to(device)
    alg = PPO(policy, device=device, **cfg.ppo)
    alg.init_storage("rl", cfg.n_envs, cfg.steps_per_env, [109], [109], [18])
    curves: Dict[str, List[float]] = {k: [] for k in CURVE_KEYS}
    obs, _ = env.get_observations()
    start = time.perf_counter()
    try:
        for it in range(cfg.iterations):
            row = _iteration(env, alg, policy, obs, cfg.steps_per_env)
            obs = row.pop("_obs")  # type: ignore[assignment]
            for k in CURVE_KEYS:
                curves[k].append(float(row[k]))
            if progress is not None:
                progress(it, row)
    finally:
        env.close()
    return {
        "policy": policy,
        "optimizer": alg.optimizer,
        "curves": curves,
        "seconds": time.perf_counter() - start,
        "env_steps": cfg.iterations * cfg.steps_per_env * cfg.n_envs,
    }


def _iteration(
    env: MujocoTrainEnv, alg: PPO, policy: MoEActorCritic, obs: torch.Tensor, n_steps: int
) -> Dict[str, Any]:
    """Collect n_steps per env, update; return the iteration's figures and the last observation."""
    sums = {"reward": 0.0, "pos": 0.0, "ori": 0.0, "term": 0.0, "w": 0.0, "w2": 0.0}
    with torch.inference_mode():
        for _ in range(n_steps):
            actions = alg.act(obs, obs)
            w_arm = policy.gate_weights(obs)[:, 1]
            obs, rewards, dones, infos = env.step(actions)
            alg.process_env_step(rewards, dones, infos)
            sums["reward"] += float(rewards.mean())
            sums["pos"] += infos["log"]["/task_reaching_pos_err"]
            sums["ori"] += infos["log"]["/task_reaching_ori_err"]
            sums["term"] += float((dones.bool() & ~infos["time_outs"].bool()).float().mean())
            sums["w"] += float(w_arm.mean())
            sums["w2"] += float((w_arm * w_arm).mean())
        alg.compute_returns(obs)
    alg.update()
    n = float(n_steps)
    w_mean = sums["w"] / n
    return {
        "mean_reward": sums["reward"] / n,
        "pos_err_m": sums["pos"] / n,
        "ori_err_rad": sums["ori"] / n,
        "termination_rate": sums["term"] / n,
        "gate_arm_mean": w_mean,
        "gate_arm_std": float(np.sqrt(max(sums["w2"] / n - w_mean * w_mean, 0.0))),
        "action_std": float(torch.stack([policy.ac_base.std, policy.ac_arm.std]).detach().abs().mean()),
        "_obs": obs,
    }


def checkpoint_dict(policy: MoEActorCritic, iterations: int, infos: Dict[str, Any]) -> Dict[str, Any]:
    """Return the rsl_rl checkpoint dict of ``policy`` (CPU float32 tensors; no optimizer state, to
    keep the committed file small)."""
    sd = {k: v.detach().to("cpu", torch.float32).clone() for k, v in policy.state_dict().items()}
    return {"model_state_dict": sd, "optimizer_state_dict": {}, "iter": int(iterations), "infos": infos}


def save_curves_png(curves: Dict[str, List[float]], path: str, *, title: str) -> None:
    """Plot the training curves (one panel per CURVE_KEYS entry, x = iteration) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in CURVE_KEYS if k in curves]
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 1.7 * len(keys)), sharex=True)
    for ax, k in zip(axes, keys):
        ax.plot(np.arange(len(curves[k])), curves[k], lw=1)
        ax.set_ylabel(k, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_title(title, fontsize=9)
    axes[-1].set_xlabel("PPO iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def metadata(cfg: TrainConfig, result: Dict[str, Any], *, script: str, device: str) -> Dict[str, Any]:
    """Return the metadata JSON document of a training run: how it was made and its final figures."""
    from importlib.metadata import version

    import rsl_rl  # noqa: F401 - the version is what matters

    curves = result["curves"]
    last = {k: float(np.mean(v[-10:])) for k, v in curves.items()}
    return {
        "script": script,
        "config": asdict(cfg),
        "reward_weights": dict(TRAIN_REWARD_WEIGHTS),
        "reward_scale": "reward = 0.02 s * sum(weight * part)",
        "device": device,
        "seconds": round(float(result["seconds"]), 1),
        "env_steps": int(result["env_steps"]),
        "final_figures_last10_iterations": last,
        "versions": {"rsl-rl-lib": version("rsl-rl-lib"), "torch": str(torch.__version__)},
    }


def write_json(path: str, doc: Dict[str, Any]) -> None:
    """Write ``doc`` as indented JSON via a temporary file renamed into place."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def save_checkpoint(ckpt: Dict[str, Any], path: str) -> None:
    """torch.save ``ckpt`` to ``path`` via a temporary file renamed into place."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


DEMO_ENVS = 4
DEMO_STEPS = 500


def evaluate_demo(path: str, *, n_envs: int = DEMO_ENVS, n_steps: int = DEMO_STEPS) -> Dict[str, float]:
    """Play the checkpoint at ``path`` as ``moetape demo`` does (the seed-0 demo trajectories, n_envs
    envs, n_steps steps, seed 0, no reset noise) and return its figures: EE position error median and
    mean (m), terminations, largest base tilt (deg), and the arm expert's gate weight (mean, std, min, max).
    """
    from moetape.record.mujoco_backend import MujocoBackend
    from moetape.record.mujoco_task import OBS
    from moetape.record.policy import load_policy

    policy = load_policy(path)
    backend = MujocoBackend(trajectories_from_episodes(demo_episodes(seed=0)), n_envs=n_envs, seed=0)
    errs, w_arm, tilt, terminations = [], [], [], 0
    try:
        obs = backend.reset()
        for _ in range(n_steps):
            action, gate = policy.policy_step(obs)
            w_arm.append(gate[:, 1])
            tilt.append(np.degrees(np.arccos(np.clip(-obs[:, OBS["projected_gravity"]][:, 2], -1.0, 1.0))))
            r = backend.step(action, substep_frames=False)
            errs.append(r.terms["task_reaching_pos_err"])
            terminations += int((r.done & ~r.timeout).sum())
            obs = r.obs
    finally:
        backend.close()
    e, w = np.concatenate(errs), np.concatenate(w_arm)
    return {
        "n_envs": n_envs,
        "n_steps": n_steps,
        "pos_err_median_m": round(float(np.median(e)), 4),
        "pos_err_mean_m": round(float(np.mean(e)), 4),
        "terminations": terminations,
        "max_tilt_deg": round(float(np.max(tilt)), 2),
        "gate_arm_mean": round(float(w.mean()), 4),
        "gate_arm_std": round(float(w.std()), 4),
        "gate_arm_min": round(float(w.min()), 4),
        "gate_arm_max": round(float(w.max()), 4),
    }
