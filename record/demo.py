"""The demo MoE checkpoint and demo EE trajectories, so moetape runs without anybody's training run.

The checkpoint is a **trained** policy, committed under ``record/assets/demo_policy/``:
``demo_moe.pt`` (rsl_rl dict, QM-MoE variant-B layout: ``ac_base.*`` and ``ac_arm.*`` actor-critics,
109-128-64-32-18 ELU, and the gate ``obs_moe.mlp.*``, 109-128-64-2 ReLU, softmax after),
``demo_moe.json`` (how it was made: script, seed, iterations, reward weights, final figures) and
``training_curves.png``. ``scripts/train_demo_policy.py`` (``make train-demo``) trained it with
rsl_rl's PPO on the bundled MuJoCo EE-tracking task (moetape.record.train_moe); the gate's weights
are learned, none is set by hand. Making the demo copies that file; nothing is trained at demo time.

Its two experts are also written alone, as plain rsl_rl expert checkpoints (``std``, ``actor.*``,
``critic.*``: :func:`make_demo_expert_checkpoint`), so the legacy full script's required
``--base_ckpt_path`` / ``--arm_ckpt_path`` have files to take; as replacements they change nothing.

The trajectory file is the legacy .pkl: a list of dicts of float64 numpy arrays, written with
pickle protocol 3 and the arrays' reconstructor named ``numpy.core.multiarray._reconstruct`` (the
numpy 1.x name, which numpy 2 still loads), so Python 3.8 with numpy 1.x loads it too. Protocol 3
stores bytes natively (protocol 2 would add a ``_codecs.encode`` global) and writes globals as
plain text opcodes, which is what makes the rename safe.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import shutil
from typing import Any, Dict, List

import numpy as np

from moetape.schema.errors import InputError

DEMO_POLICY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "demo_policy")
DEMO_CHECKPOINT = os.path.join(DEMO_POLICY_DIR, "demo_moe.pt")
"""The committed trained demo MoE checkpoint (scripts/train_demo_policy.py)."""
DEMO_METADATA = os.path.join(DEMO_POLICY_DIR, "demo_moe.json")
"""How the demo checkpoint was made: script, seed, iterations, reward weights, final figures."""
TRAJECTORY_RATE_HZ = 200.0
ARM_BASE_WORLD = (-0.4, 0.0, 0.4)
"""Approximate arm base position of the spawned robot (trunk at (-0.5, 0, 0.3), facing +x), metres."""


# ---------------------------------------------------------------------------------------------
# checkpoint


def _check_asset(path: str) -> str:
    if not os.path.isfile(path):
        raise InputError(
            f"{path}: the committed demo policy file is missing; expected it in the moetape package. "
            "Reinstall moetape, or train one: make train-demo"
        )
    return path


def demo_metadata() -> Dict[str, Any]:
    """Return the demo checkpoint's metadata (``demo_moe.json``): how it was trained and its figures."""
    with open(_check_asset(DEMO_METADATA), encoding="utf-8") as f:
        return dict(json.load(f))


def demo_state_dict() -> Dict[str, np.ndarray]:
    """Return the trained demo MoE's variant-B ``model_state_dict`` as float32 numpy arrays, in its key order."""
    from moetape.record.policy import read_checkpoint

    sd = read_checkpoint(_check_asset(DEMO_CHECKPOINT))["model_state_dict"]
    return {k: v.numpy() for k, v in sd.items()}


def make_demo_checkpoint(path: str) -> str:
    """Copy the trained demo MoE checkpoint (variant-B rsl_rl dict) to ``path`` and return it.

    The bytes are the committed file's, so the log's checkpoint sha256 names the committed policy.
    Overwrites ``path`` (callers check first).
    """
    src = _check_asset(DEMO_CHECKPOINT)
    _atomic_write(path, lambda f: _copy_into(src, f))
    return str(path)


def _copy_into(src: str, f: Any) -> None:
    with open(src, "rb") as g:
        shutil.copyfileobj(g, f)


DEMO_EXPERT_ROLES = ("base", "arm")
"""The demo MoE's experts, in gate-column order (variant B prefixes ``ac_base.``, ``ac_arm.``)."""


def demo_expert_state_dict(role: str) -> Dict[str, np.ndarray]:
    """Return the demo MoE's ``role`` expert ("base" or "arm") as a plain rsl_rl expert
    ``model_state_dict`` (``std``, ``actor.*``, ``critic.*``): the same arrays, the ``ac_<role>.``
    prefix dropped."""
    if role not in DEMO_EXPERT_ROLES:
        raise ValueError(f"role: expected one of {DEMO_EXPERT_ROLES}, got {role!r}")
    prefix = f"ac_{role}."
    return {k[len(prefix) :]: v for k, v in demo_state_dict().items() if k.startswith(prefix)}


def make_demo_expert_checkpoint(path: str, role: str) -> str:
    """Write the demo MoE's ``role`` expert as a plain rsl_rl expert checkpoint (DESIGN.md §5) to
    ``path`` and return it: what ``--base_ckpt_path`` / ``--arm_ckpt_path`` take. Loaded as that
    expert's replacement it changes nothing (same weights). Overwrites ``path`` (callers check first).
    """
    import torch

    model = {k: torch.from_numpy(v.copy()) for k, v in demo_expert_state_dict(role).items()}
    meta = demo_metadata()
    ckpt = {
        "model_state_dict": model,
        "optimizer_state_dict": {},
        "iter": int(meta["config"]["iterations"]),
        "infos": {
            "moetape_demo": True,
            "trained": True,
            "role": role,
            "note": f"the trained moetape demo MoE's {role} expert, as a plain rsl_rl expert",
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
