"""Compare two logs of the same trajectory played by two checkpoints, step by step, streamed.

Both logs must have the same observation and action sizes and experts (else InputError). Logs
with different env counts are compared over the envs both have (0 to min(E_a, E_b) - 1), with a
warning that says so.
Different trajectory or robot model (provenance sha256 entries, the stored trajectory arrays,
the stored MJCF) or rates only give warnings: the comparison may still be what the user wants.
Over the common steps [0, min(S_a, S_b)): mean |gate_a - gate_b| per expert, mean
|action_a - action_b| (all joints, and legs = first 12 / arm = last 6 when the action has 18),
and each log's mean EE position error. An EE error computed from an ee_pos the log marks stale
(``stale_after_reset``: a new episode's first step on Isaac Gym) is left out of that log's mean,
as ``moetape stats`` does; ``ee_pos_err_excluded_stale`` (per side) counts those env-steps.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from moetape.replay.analysis import (
    SUMMARY_FORMAT_VERSION,
    ee_error,
    ee_error_fields,
    ee_error_is_stale,
    ee_error_source,
)
from moetape.schema.errors import InputError
from moetape.schema.layout import stale_rule
from moetape.schema.reader import Log

LEG_JOINTS = 12
LEGGED_ARM_ACTIONS = 18  # 12 legs + 6 arm: the joint groups apply only to this action size


def _flatten(value: Any, prefix: str = "") -> Dict[str, Any]:
    """Flatten nested dicts and lists to {"a.b.0.c": leaf}."""
    out: Dict[str, Any] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}.{i}" if prefix else str(i)))
    else:
        out[prefix] = value
    return out


def _identity_keys(prov: Dict[str, Any]) -> Dict[str, Any]:
    """Return provenance sha256 entries that identify the trajectory or the robot model."""
    out = {}
    for key, value in _flatten(prov).items():
        low = key.lower()
        if "sha" not in low:
            continue
        if (
            "traj" in low
            or "robot" in low
            or (
                "model" in low
                and not any(w in low for w in ("checkpoint", "ckpt", "policy", "moe", "expert"))
            )
        ):
            out[key] = value
    return out


def _trajectory_warning(a: Log, b: Log) -> Optional[str]:
    ta, tb = a.trajectory(), b.trajectory()
    if ta is None or tb is None:
        return None
    same = (
        all(
            np.shape(ta[k]) == np.shape(tb[k]) and np.array_equal(ta[k], tb[k])
            for k in ("ee_pos", "ee_axis_angle")
        )
        and ta["dt_s"] == tb["dt_s"]
    )
    return None if same else "the stored target trajectories differ (trajectory/ee_pos, ee_axis_angle)"


def check_comparable(a: Log, b: Log) -> List[str]:
    """Raise if the logs cannot be compared step by step; return warnings about softer differences.

    Raises:
        InputError: different obs_dim, action_dim or expert names.
    """
    pairs: List[Tuple[str, Any, Any]] = [
        ("obs_dim", int(a.meta["obs_dim"]), int(b.meta["obs_dim"])),
        ("action_dim", int(a.meta["action_dim"]), int(b.meta["action_dim"])),
        ("expert_names", a.expert_names, b.expert_names),
    ]
    problems = [f"{name} {va} vs {vb}" for name, va, vb in pairs if va != vb]
    if problems:
        raise InputError(
            "{} and {} are not comparable: {}. Compare logs of the same policy sizes and experts.".format(
                a.path, b.path, "; ".join(problems)
            )
        )
    warnings = []
    if a.n_envs != b.n_envs:
        m = min(a.n_envs, b.n_envs)
        warnings.append(
            f"env counts differ (A has {a.n_envs}, B has {b.n_envs}); comparing the envs both have, "
            + (f"0-{m - 1}" if m > 1 else "env 0")
        )
    ia, ib = _identity_keys(a.provenance), _identity_keys(b.provenance)
    for key in sorted(set(ia) | set(ib)):
        if ia.get(key) != ib.get(key):
            warnings.append(f"provenance {key} differs: {ia.get(key)} vs {ib.get(key)}")
    traj = _trajectory_warning(a, b)
    if traj:
        warnings.append(traj)
    xa, xb = a.model_xml, b.model_xml
    if xa is not None and xb is not None and xa != xb:
        warnings.append("the stored robot models (model/mjcf) differ")
    if a.policy_dt_s != b.policy_dt_s:
        warnings.append(
            f"policy_dt_s differs: {a.policy_dt_s} vs {b.policy_dt_s}; steps are compared by index"
        )
    if a.n_steps != b.n_steps:
        warnings.append(
            f"step counts differ ({a.n_steps} vs {b.n_steps}); comparing the common steps 0-{min(a.n_steps, b.n_steps) - 1}"
        )
    return warnings


class _Sums:
    """Running sums of a mean, skipping NaN."""

    def __init__(self, size: int) -> None:
        self.sum = np.zeros(size)
        self.n = np.zeros(size, dtype=np.int64)

    def update(self, x: np.ndarray) -> None:
        """Add values x (..., size)."""
        v = np.asarray(x, dtype=np.float64).reshape(-1, self.sum.shape[0])
        ok = np.isfinite(v)
        self.sum += np.where(ok, v, 0.0).sum(axis=0)
        self.n += ok.sum(axis=0)

    def mean(self) -> List[Optional[float]]:
        return [float(s / n) if n else None for s, n in zip(self.sum, self.n)]

    def pooled(self, sl: slice = slice(None)) -> Optional[float]:
        n = int(self.n[sl].sum())
        return float(self.sum[sl].sum() / n) if n else None


def compare(a: Log, b: Log) -> Dict[str, Any]:
    """Compare two logs over their common steps; return a JSON-ready dict (see module docstring).

    Raises:
        InputError: not comparable (see check_comparable) or no common steps.
    """
    warnings = check_comparable(a, b)
    n = min(a.n_steps, b.n_steps)
    if n == 0:
        raise InputError(
            f"{a.path} and {b.path}: no common steps to compare ({a.n_steps} and {b.n_steps} committed)."
        )
    k = len(a.expert_names)
    n_act = int(a.meta["action_dim"])
    n_envs = min(a.n_envs, b.n_envs)
    envs = None if a.n_envs == b.n_envs else slice(0, n_envs)
    stale_a, stale_b = ee_error_is_stale(a), ee_error_is_stale(b)
    fa = ["gate", "action"] + ee_error_fields(a) + (["episode", "step_in_episode"] if stale_a else [])
    fb = ["gate", "action"] + ee_error_fields(b) + (["episode", "step_in_episode"] if stale_b else [])
    excluded = {"a": 0, "b": 0}

    def err_of(side: str, data: Dict[str, np.ndarray], stale: bool) -> np.ndarray:
        err = ee_error(data)
        if stale:  # an error from a stale ee_pos is left out
            mask = stale_rule(data["episode"], data["step_in_episode"])
            excluded[side] += int(mask.sum())
            err = np.where(mask, np.nan, err)
        return err[..., None]

    per = max(1, min(32 * 1024 * 1024 // a.step_bytes(fa), 32 * 1024 * 1024 // b.step_bytes(fb)))
    gate_diff, act_diff = _Sums(k), _Sums(n_act)
    gate_a, gate_b, err_a, err_b = _Sums(k), _Sums(k), _Sums(1), _Sums(1)
    chunks_a = a.iter_chunks(fa, stop=n, chunk_steps=per, env=envs)
    chunks_b = b.iter_chunks(fb, stop=n, chunk_steps=per, env=envs)
    for ca, cb in zip(chunks_a, chunks_b):
        ga = np.asarray(ca.data["gate"], dtype=np.float64)
        gb = np.asarray(cb.data["gate"], dtype=np.float64)
        gate_diff.update(np.abs(ga - gb))
        act_diff.update(
            np.abs(np.asarray(ca.data["action"], np.float64) - np.asarray(cb.data["action"], np.float64))
        )
        gate_a.update(ga)
        gate_b.update(gb)
        err_a.update(err_of("a", ca.data, stale_a))
        err_b.update(err_of("b", cb.data, stale_b))
    groups: Dict[str, Optional[float]] = {"all": act_diff.pooled()}
    if n_act == LEGGED_ARM_ACTIONS:
        groups["legs"] = act_diff.pooled(slice(0, LEG_JOINTS))
        groups["arm"] = act_diff.pooled(slice(LEG_JOINTS, None))
    ea, eb = err_a.pooled(), err_b.pooled()

    def side(lg: Log, gate: _Sums, err: Optional[float], n_excluded: int) -> Dict[str, Any]:
        return {
            "path": lg.path,
            "log_id": lg.log_id,
            "n_steps": lg.n_steps,
            "n_envs": lg.n_envs,
            "run_status": lg.run_status,
            "mean_gate": gate.mean(),
            "mean_ee_pos_err_m": err,
            "ee_pos_err_source": ee_error_source(lg),
            "ee_pos_err_excluded_stale": n_excluded,
        }

    return {
        "format_version": SUMMARY_FORMAT_VERSION,
        "a": side(a, gate_a, ea, excluded["a"]),
        "b": side(b, gate_b, eb, excluded["b"]),
        "common_steps": n,
        "n_envs": n_envs,
        "envs": list(range(n_envs)),
        "expert_names": a.expert_names,
        "joint_names": a.joint_names,
        "mean_abs_gate_diff": gate_diff.mean(),
        "mean_abs_action_diff": groups,
        "mean_abs_action_diff_per_joint": act_diff.mean(),
        "ee_pos_err_diff_m": (eb - ea) if ea is not None and eb is not None else None,
        "warnings": warnings,
    }
