"""Deterministic synthetic steps with the layout's shapes, for tests, golden files and benchmarks.

The values are random (seeded) but self-consistent: gate rows sum to 1, episodes advance and
reset on ``done``, frames/step matches. Nothing here is presented as a real rollout.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from moetape.schema import layout
from moetape.schema.writer import LogSpec, gate_entropy


def small_spec(
    n_envs: int = 2,
    *,
    frames_per_step: int = 4,
    n_bodies: int = 3,
    obs_dim: int = 109,
    action_dim: int = 18,
    n_experts: int = 2,
) -> LogSpec:
    """Return a LogSpec with two terms and one custom metric, sized for tests."""
    names = ["base", "arm"] + [f"expert{k}" for k in range(2, n_experts)]
    return LogSpec(
        n_envs=n_envs,
        obs_dim=obs_dim,
        action_dim=action_dim,
        joint_names=[f"joint{j}" for j in range(action_dim)],
        body_names=[f"body{b}" for b in range(n_bodies)],
        expert_names=names[:n_experts],
        term_names=["task_reaching_pos_err", "reward_total"],
        metrics={"ee_speed": ((), "float32")},
        frames_per_step=frames_per_step,
        backend="synthetic",
    )


def synthetic_step(
    spec: LogSpec, step: int, seed: int = 0, *, episode_len: int = 5
) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """Return (step fields, frame fields) of policy step ``step``; the same arguments give the same arrays."""
    rng = np.random.default_rng([seed, step])
    sizes = dict(spec.sizes, M=layout.N_FUTURE_TARGETS)
    e = spec.n_envs
    logits = rng.normal(size=(e, sizes["K"])).astype(np.float32)
    gate = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    gate = gate.astype(np.float32)
    env = np.arange(e)
    length = episode_len + env  # envs end episodes at different steps
    sie = (step % length).astype(np.int32)
    out: Dict[str, np.ndarray] = {
        "obs": rng.normal(size=(e, spec.obs_dim)).astype(np.float32),
        "action": rng.normal(size=(e, spec.action_dim)).astype(np.float32),
        "gate": gate,
        "gate_entropy": gate_entropy(gate),
        "reward": rng.normal(size=e).astype(np.float32),
        "done": sie == length - 1,
        "timeout": (sie == length - 1) & (env % 2 == 0),
        "episode": (step // length).astype(np.int32),
        "step_in_episode": sie,
        "t_wall_s": np.asarray(step * 0.01, dtype=np.float64),
    }
    for name, (shape, dtype) in layout.STEP_FIELDS.items():
        if name not in out:
            full = layout.resolve_shape(shape, sizes)
            out[name] = rng.normal(size=full).astype(dtype)
    for name in spec.term_names:
        out["terms/" + name] = rng.random(e).astype(np.float32)
    for name, (mshape, mdtype) in spec.metrics.items():
        out["metrics/" + name] = rng.random((e,) + tuple(mshape)).astype(mdtype)
    fps = spec.frames_per_step
    frames: Dict[str, np.ndarray] = {}
    for name, (shape, dtype) in layout.FRAME_FIELDS.items():
        if name in ("step", "substep"):
            continue
        full = (fps,) + layout.resolve_shape(shape, sizes)
        frames[name] = rng.normal(size=full).astype(dtype)
    frames["step"] = np.full(fps, step, dtype=np.int64)
    frames["substep"] = np.arange(fps, dtype=np.int8)
    return out, frames
