"""A demo MoE checkpoint and demo EE trajectories, so moetape runs without anybody's training run.

The checkpoint is **untrained**: seeded random weights, shaped by hand so that a MuJoCo demo run is
watchable and its gating plots have something to show. It is not a controller; it does not track
the target. What it does, by construction:

- Each expert is an rsl_rl actor (109-128-64-32-18, ELU). Its last hidden layer is built from 16
  pairs of ELU units sharing one pre-activation ``z``, with biases ``b`` and ``b - 2``, and the
  output layer weighs each pair ``+v, -v``. Since ``ELU(z) - ELU(z - 2)`` lies in ``[0, 2]``,
  every action component is bounded, whatever the observation: ``|action_i| <= sum_j |v_ij|``.
  Each output listens to 3 random pairs. The bounds are 0.05 for every joint of the base expert,
  and 0.03 (legs) / 0.2 (arm) for the arm expert, whose first layer also weighs the EE-target
  part of the observation 4x. With PD targets ``default + 0.25 * action`` the legs stay within
  0.0125 rad of the default pose (the robot stands) and the arm joints within 0.05 rad; on
  demo-trajectory-like observations the arm actions swing by about 0.05-0.12 and reach ~0.15.
- The gate (109-128-64-2, ReLU, softmax) holds one hand-made path: with ``p(tau)`` the target
  position in the EE frame (obs[42:45] for tau = 0.02 s, obs[69:72] for tau = 1.0 s, scaled x10),
  ``s = sum_xyz(p(1.0) - p(0.02))`` measures where the target heads over the next second, and
  ``logit_arm - logit_base = clamp(s, -1.4, 1.4)`` plus small random terms from the other hidden
  units. So ``w_arm`` swings between about 0.2 and 0.8 while the target moves back and forth, and
  does not depend on how far the EE is from the target (the offset cancels in the difference).

Its two experts are also written alone, as plain rsl_rl expert checkpoints (``std``, ``actor.*``,
``critic.*``: :func:`make_demo_expert_checkpoint`), so the legacy full script's required
``--base_ckpt_path`` / ``--arm_ckpt_path`` have files to take; as replacements they change nothing.

Weights come from ``numpy.random.RandomState(seed)``, whose stream numpy keeps frozen, so a seed
gives the same tensors on every platform and numpy version.

The trajectory file is the legacy .pkl: a list of dicts of float64 numpy arrays, written with
pickle protocol 3 and the arrays' reconstructor named ``numpy.core.multiarray._reconstruct`` (the
numpy 1.x name, which numpy 2 still loads), so Python 3.8 with numpy 1.x loads it too. Protocol 3
stores bytes natively (protocol 2 would add a ``_codecs.encode`` global) and writes globals as
plain text opcodes, which is what makes the rename safe.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from typing import Any, Dict, List, Tuple

import numpy as np

OBS_DIM = 109
ACTION_DIM = 18
N_LEG_JOINTS = 12
ACTOR_HIDDEN = (128, 64, 32)
GATE_HIDDEN = (128, 64)
TARGET_SLICE = slice(42, 78)
"""The EE-target part of the observation: 4 future targets x (position * 10 (3), 6D rotation * 1.5 (6))."""
TARGET_POS_NEAR = slice(42, 45)
"""Position of the target 0.02 s ahead, in the EE frame, x10."""
TARGET_POS_FAR = slice(69, 72)
"""Position of the target 1.0 s ahead, in the EE frame, x10."""
GATE_CLAMP = 1.4
"""Bound of the designed gate logit difference: sigmoid(+-1.4) = 0.80 / 0.20."""
PAIR_OFFSET = 2.0
"""Bound of each ELU pair: ELU(z) - ELU(z - 2) lies in [0, 2]."""
PAIR_GAIN = 6.0
"""Init scale of the pairs' shared pre-activation (x torch's default), so z sweeps the pair's range."""
PAIRS_PER_OUTPUT = 3
"""Each action component listens to 3 of the 16 pairs, so it swings over much of its bound."""
ARM_TARGET_GAIN = 4.0
"""The arm expert's first layer weighs the EE-target part of the observation this much more."""
BASE_BOUND = 0.05
"""|action| bound of every joint of the base expert."""
ARM_BOUND_LEGS = 0.03
ARM_BOUND_ARM = 0.2
"""|action| bounds of the arm expert's leg and arm joints."""
TRAJECTORY_RATE_HZ = 200.0
ARM_BASE_WORLD = (-0.4, 0.0, 0.4)
"""Approximate arm base position of the spawned robot (trunk at (-0.5, 0, 0.3), facing +x), metres."""


# ---------------------------------------------------------------------------------------------
# checkpoint


def _uniform(rs: np.random.RandomState, n_out: int, n_in: int, scale: float = 1.0) -> np.ndarray:
    """Return float32 (n_out, n_in) like torch's Linear init: U(-1/sqrt(n_in), 1/sqrt(n_in)) * scale."""
    bound = scale / np.sqrt(n_in)
    return rs.uniform(-bound, bound, size=(n_out, n_in)).astype(np.float32)


def _bounded_actor(
    rs: np.random.RandomState, bounds: np.ndarray, target_gain: float, pair_gain: float
) -> Dict[str, np.ndarray]:
    """Return an ELU actor whose output i is bounded by ``bounds[i]`` for every input.

    bounds: float64 (A,). Returns weights/biases under keys ``0.weight`` ... ``6.bias``.
    """
    h1, h2, h3 = ACTOR_HIDDEN
    w0 = _uniform(rs, h1, OBS_DIM)
    w0[:, TARGET_SLICE] *= target_gain
    w1 = _uniform(rs, h2, h1)
    n_pairs = h3 // 2
    shared = _uniform(rs, n_pairs, h2, scale=pair_gain)
    b_shared = rs.uniform(-0.5, 0.5, size=n_pairs).astype(np.float32)
    w2 = np.repeat(shared, 2, axis=0)  # rows 2j and 2j+1 share z_j
    b2 = np.stack([b_shared, b_shared - PAIR_OFFSET], axis=1).reshape(-1)
    v = rs.uniform(-1.0, 1.0, size=(ACTION_DIM, n_pairs))
    keep = np.argsort(rs.uniform(size=(ACTION_DIM, n_pairs)), axis=1)[:, :PAIRS_PER_OUTPUT]
    v *= np.eye(n_pairs)[keep].sum(axis=1)
    v *= (bounds / np.abs(v).sum(axis=1))[:, None]  # sum_j |v_ij| = bounds_i
    w3 = np.stack([v, -v], axis=2).reshape(ACTION_DIM, h3)
    b3 = -(v * PAIR_OFFSET / 2.0).sum(axis=1)  # centre each pair's [0, 2] range on 0
    layers = [
        (w0, np.zeros(h1)),
        (w1, rs.uniform(-0.1, 0.1, size=h2)),
        (w2, b2),
        (w3, b3),
    ]
    return _layers_dict(layers)


def _layers_dict(layers: List[Tuple[np.ndarray, np.ndarray]]) -> Dict[str, np.ndarray]:
    out: Dict[str, np.ndarray] = {}
    for i, (w, b) in enumerate(layers):
        out[f"{2 * i}.weight"] = np.asarray(w, dtype=np.float32)
        out[f"{2 * i}.bias"] = np.asarray(b, dtype=np.float32)
    return out


def _critic(rs: np.random.RandomState) -> Dict[str, np.ndarray]:
    sizes = (OBS_DIM,) + ACTOR_HIDDEN + (1,)
    return _layers_dict([(_uniform(rs, o, i), np.zeros(o)) for i, o in zip(sizes[:-1], sizes[1:])])


def _gate(rs: np.random.RandomState) -> Dict[str, np.ndarray]:
    """Return the gate MLP: unit 0/1 of layer 0 and unit 0 of layer 1 carry the designed path."""
    g1, g2 = GATE_HIDDEN
    c = GATE_CLAMP
    w0 = _uniform(rs, g1, OBS_DIM, scale=0.5)
    b0 = np.zeros(g1)
    for unit, bias in ((0, c), (1, -c)):  # h0 = relu(s + c), h1 = relu(s - c)
        w0[unit] = 0.0
        w0[unit, TARGET_POS_FAR] = 1.0
        w0[unit, TARGET_POS_NEAR] = -1.0
        b0[unit] = bias
    w1 = _uniform(rs, g2, g1)
    b1 = np.zeros(g2)
    w1[0] = 0.0
    w1[0, 0], w1[0, 1] = 1.0, -1.0  # v = h0 - h1 = clamp(s, -c, c) + c >= 0
    w2 = rs.normal(0.0, 0.03, size=(2, g2))
    w2[:, 0] = (-0.5, 0.5)
    b2 = np.array([0.5 * c, -0.5 * c])  # logit_arm - logit_base = v - c = clamp(s, -c, c)
    return _layers_dict([(w0, b0), (w1, b1), (w2, b2)])


def demo_state_dict(seed: int = 0) -> Dict[str, np.ndarray]:
    """Return the demo MoE variant-B ``model_state_dict`` as float32 numpy arrays, key order as rsl_rl."""
    rs = np.random.RandomState(seed)
    legs = slice(0, N_LEG_JOINTS)
    base_bounds = np.full(ACTION_DIM, BASE_BOUND)
    arm_bounds = np.full(ACTION_DIM, ARM_BOUND_ARM)
    arm_bounds[legs] = ARM_BOUND_LEGS
    sd: Dict[str, np.ndarray] = {}
    for name, bounds, gain in (("ac_base", base_bounds, 1.0), ("ac_arm", arm_bounds, ARM_TARGET_GAIN)):
        sd[f"{name}.std"] = np.full(ACTION_DIM, 0.5, dtype=np.float32)
        for key, value in _bounded_actor(rs, bounds, gain, PAIR_GAIN).items():
            sd[f"{name}.actor.{key}"] = value
        for key, value in _critic(rs).items():
            sd[f"{name}.critic.{key}"] = value
    for key, value in _gate(rs).items():
        sd[f"obs_moe.mlp.{key}"] = value
    return sd


def make_demo_checkpoint(path: str, *, seed: int = 0) -> str:
    """Write the untrained demo MoE checkpoint (variant B rsl_rl dict) to ``path`` and return it.

    Deterministic: the same seed gives the same tensors. Overwrites ``path`` (callers check first).
    """
    import torch

    model = {k: torch.from_numpy(v.copy()) for k, v in demo_state_dict(seed).items()}
    ckpt = {
        "model_state_dict": model,
        "optimizer_state_dict": {},
        "iter": 0,
        "infos": {
            "moetape_demo": True,
            "seed": int(seed),
            "trained": False,
            "note": "untrained moetape demo: bounded random experts, gate follows the EE target motion",
        },
    }
    _atomic_write(path, lambda f: torch.save(ckpt, f))
    return str(path)


DEMO_EXPERT_ROLES = ("base", "arm")
"""The demo MoE's experts, in gate-column order (variant B prefixes ``ac_base.``, ``ac_arm.``)."""


def demo_expert_state_dict(role: str, seed: int = 0) -> Dict[str, np.ndarray]:
    """Return the demo MoE's ``role`` expert ("base" or "arm") as a plain rsl_rl expert
    ``model_state_dict`` (``std``, ``actor.*``, ``critic.*``): the same arrays, the ``ac_<role>.``
    prefix dropped."""
    if role not in DEMO_EXPERT_ROLES:
        raise ValueError(f"role: expected one of {DEMO_EXPERT_ROLES}, got {role!r}")
    prefix = f"ac_{role}."
    return {k[len(prefix) :]: v for k, v in demo_state_dict(seed).items() if k.startswith(prefix)}


def make_demo_expert_checkpoint(path: str, role: str, *, seed: int = 0) -> str:
    """Write the demo MoE's ``role`` expert as a plain rsl_rl expert checkpoint (DESIGN.md §5) to
    ``path`` and return it: what ``--base_ckpt_path`` / ``--arm_ckpt_path`` take. Loaded as that
    expert's replacement it changes nothing (same weights). Overwrites ``path`` (callers check first).
    """
    import torch

    model = {k: torch.from_numpy(v.copy()) for k, v in demo_expert_state_dict(role, seed).items()}
    ckpt = {
        "model_state_dict": model,
        "optimizer_state_dict": {},
        "iter": 0,
        "infos": {
            "moetape_demo": True,
            "seed": int(seed),
            "trained": False,
            "role": role,
            "note": f"the untrained moetape demo MoE's {role} expert, as a plain rsl_rl expert",
        },
    }
    _atomic_write(path, lambda f: torch.save(ckpt, f))
    return str(path)


# ---------------------------------------------------------------------------------------------
# trajectories


def _ramp(t: np.ndarray, t_ramp_s: float = 1.0) -> np.ndarray:
    """Return float64 (T,) rising smoothly (smoothstep) from 0 at t=0 to 1 at t_ramp_s."""
    x = np.clip(t / t_ramp_s, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _shape(kind: int, t: np.ndarray, period_s: float, phase: float) -> np.ndarray:
    """Return float64 (T, 3) offsets in metres of one periodic EE path around its centre."""
    w = 2.0 * np.pi / period_s
    a = w * t + phase
    zero = np.zeros_like(t)
    if kind == 0:  # horizontal circle
        return np.stack([0.10 * np.cos(a), 0.10 * np.sin(a), zero], axis=1)
    if kind == 1:  # vertical circle, in front of the robot
        return np.stack([0.08 * np.cos(a), zero, 0.08 * np.sin(a)], axis=1)
    if kind == 2:  # figure-eight, sideways
        return np.stack([zero, 0.12 * np.sin(a), 0.06 * np.sin(2.0 * a)], axis=1)
    return np.stack([0.06 * np.sin(a), 0.10 * np.sin(1.5 * a + 0.7), 0.07 * np.sin(2.0 * a)], axis=1)


def demo_episodes(
    *, seed: int = 0, n_episodes: int = 4, duration_s: float = 8.0
) -> List[Dict[str, np.ndarray]]:
    """Return the demo episodes: dicts of ``t (T,)`` s, ``ee_pos (T, 3)`` m, ``ee_axis_angle (T, 3)`` rad.

    All float64, sampled at 200 Hz, T = round(duration_s * 200). Episode i cycles through a
    horizontal circle, a vertical circle, a figure-eight and a 3-D Lissajous path (0.06-0.12 m
    amplitude) around a centre 0.35 m in front of and 0.2 m above the arm base (world
    x -0.05, z 0.6, each jittered by up to 3 cm), eased in from the centre over the first second,
    with the EE orientation rocking gently (at most 0.15/0.2/0.25 rad about x/y/z).
    """
    rs = np.random.RandomState(seed)
    n = int(round(duration_s * TRAJECTORY_RATE_HZ))
    t = np.arange(n, dtype=np.float64) / TRAJECTORY_RATE_HZ
    ramp = _ramp(t)[:, None]
    base = np.asarray(ARM_BASE_WORLD, dtype=np.float64)
    episodes = []
    for i in range(n_episodes):
        centre = base + np.array([0.35, 0.0, 0.2]) + rs.uniform(-0.03, 0.03, size=3)
        period_s = (4.0, 5.0, 6.0, 8.0)[i % 4] * rs.uniform(0.85, 1.15)
        ee_pos = centre + ramp * _shape(i % 4, t, period_s, rs.uniform(0.0, 2.0 * np.pi))
        amp = np.array([0.15, 0.2, 0.25])
        freq_hz = rs.uniform(0.1, 0.25, size=3)
        phase = rs.uniform(0.0, 2.0 * np.pi, size=3)
        # a rotation vector with |r| < pi is a valid orientation; this one stays under 0.36 rad
        axis_angle = ramp * amp * np.sin(2.0 * np.pi * freq_hz * t[:, None] + phase)
        episodes.append({"t": t.copy(), "ee_pos": ee_pos, "ee_axis_angle": axis_angle})
    return episodes


def make_demo_trajectory(path: str, *, seed: int = 0, n_episodes: int = 4, duration_s: float = 8.0) -> str:
    """Write the demo trajectories (see ``demo_episodes``) as a legacy trajectory .pkl; return ``path``."""
    episodes = demo_episodes(seed=seed, n_episodes=n_episodes, duration_s=duration_s)
    data = legacy_pickle_bytes(episodes)
    _atomic_write(path, lambda f: f.write(data))
    return str(path)


def legacy_pickle_bytes(obj: Any) -> bytes:
    """Pickle ``obj`` (protocol 3) so that numpy 1.x can load its arrays too.

    numpy 2 names its array reconstructor ``numpy._core.multiarray._reconstruct``, a module numpy
    1.x lacks; every ``numpy._core`` global is renamed to the ``numpy.core`` spelling, which both
    numpy 1.x and 2.x import. Protocol 3 writes globals as text (``c module\\nname\\n``), so the
    rename just rewrites those opcodes.
    """
    raw = pickle.dumps(obj, protocol=3)
    out = io.BytesIO()
    start = 0
    for op, arg, pos in pickletools.genops(raw):
        if op.name != "GLOBAL" or not str(arg).startswith("numpy._core"):
            continue
        assert pos is not None  # genops over bytes always reports positions
        module, name = str(arg).split(" ", 1)
        end = pos + 1 + len(module) + 1 + len(name) + 1
        out.write(raw[start:pos])
        out.write(b"c" + ("numpy.core" + module[len("numpy._core") :]).encode("ascii") + b"\n")
        out.write(name.encode("ascii") + b"\n")
        start = end
    out.write(raw[start:])
    return out.getvalue()


def _atomic_write(path: str, write: Any) -> None:
    """Write via ``write(file)`` to a temporary file next to ``path``, then rename it into place."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
