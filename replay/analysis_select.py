"""Shared pieces of the gating statistics: the thresholds and field names, the EE position error
(recorded term or computed from the positions) and the selection (envs, episode, step range) a
summary covers. ``moetape.replay.analysis`` re-exports every name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import numpy.typing as npt

from moetape.schema.errors import InputError
from moetape.schema.reader import Log

SUMMARY_FORMAT_VERSION = 1
USAGE_THRESHOLD = 0.5
DOMINANCE_THRESHOLD = 0.7
BALANCE_RANGE = (0.3, 0.7)
EE_ERR_FIELD = "terms/task_reaching_pos_err"
ROOT_POS_FIELD = "frames/root_pos"

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


# ---------------------------------------------------------------------------- shared helpers
def ee_error_fields(log: Log) -> List[str]:
    """Return the fields ``ee_error`` needs: the recorded error term, else the two positions."""
    return [EE_ERR_FIELD] if log.has_field(EE_ERR_FIELD) else ["ee_pos", "target_pos"]


def ee_error_source(log: Log) -> str:
    """Describe where the EE position error comes from (for reports)."""
    return "steps/" + EE_ERR_FIELD if log.has_field(EE_ERR_FIELD) else "norm(target_pos - ee_pos)"


def ee_error(data: Dict[str, np.ndarray]) -> F64:
    """Return the EE position error, m, float64 (n, E), from a chunk read with ``ee_error_fields``."""
    if EE_ERR_FIELD in data:
        return np.asarray(data[EE_ERR_FIELD], dtype=np.float64)
    diff = np.asarray(data["target_pos"], dtype=np.float64) - np.asarray(data["ee_pos"], dtype=np.float64)
    return np.asarray(np.linalg.norm(diff, axis=-1), dtype=np.float64)


def ee_error_is_stale(log: Log) -> bool:
    """Return True if ``ee_error`` reads a field the log marks stale after a reset (steps/ee_pos)."""
    return not log.has_field(EE_ERR_FIELD) and "steps/ee_pos" in log.stale_after_reset


def _num(x: float) -> Optional[float]:
    """Return a JSON-ready float: None for NaN/inf."""
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class Selection:
    """The envs, the policy steps [start, stop) and (optionally) the one episode an analysis covers."""

    envs: List[int]
    episode: Optional[int]
    start: int = 0
    stop: int = 0

    def mask(self, episode: np.ndarray) -> npt.NDArray[np.bool_]:
        """Return bool (n, len(envs)): rows in the selection, given episode ids (n, len(envs))."""
        if self.episode is None:
            return np.ones(episode.shape, dtype=bool)
        return np.asarray(episode == self.episode)


def step_range(log: Log, start: Optional[int] = None, stop: Optional[int] = None) -> Tuple[int, int]:
    """Check a ``--steps A:B`` range (half-open, as Python slices) against the log; return (start, stop).

    Raises:
        InputError: a negative bound, an empty range, or a start past the committed steps.
    """
    n = log.n_steps
    a = 0 if start is None else int(start)
    b = n if stop is None else min(int(stop), n)
    if a < 0 or (stop is not None and int(stop) < 0):
        raise InputError(f"{log.path}: --steps {a}:{stop}: bounds must be >= 0 (steps 0-{n - 1}).")
    if n == 0:
        raise InputError(f"{log.path}: the log has no committed steps; --steps selects nothing.")
    if a >= n:
        raise InputError(
            f"{log.path}: --steps starts at {a} but the log has {n} committed steps (0-{n - 1}); "
            f"pass a start below {n}."
        )
    if b <= a:
        raise InputError(f"{log.path}: --steps {a}:{stop} is empty; the stop must be greater than the start.")
    return a, b


def select(
    log: Log,
    *,
    env: Optional[int] = None,
    episode: Optional[int] = None,
    start: Optional[int] = None,
    stop: Optional[int] = None,
) -> Selection:
    """Check ``env``/``episode`` and the step range [start, stop) against the log; return the selection.

    Raises:
        InputError: env index out of range, a bad step range, or the episode is in none of the
            selected envs within the range.
    """
    n = log.n_envs
    if start is None and stop is None:
        a, b = 0, log.n_steps
    else:
        a, b = step_range(log, start, stop)
    if env is not None and not 0 <= int(env) < n:
        raise InputError(
            "{}: --env {} out of range; the log has {} env{} (0-{}).".format(
                log.path, env, n, "" if n == 1 else "s", n - 1
            )
        )
    envs = [int(env)] if env is not None else list(range(n))
    if episode is None:
        return Selection(envs, None, a, b)
    lo = np.full(len(envs), np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full(len(envs), -1, dtype=np.int64)
    found = False
    for chunk in log.iter_chunks(["episode"], start=a, stop=b):
        ep = chunk.data["episode"][:, envs]
        lo = np.minimum(lo, ep.min(axis=0))
        hi = np.maximum(hi, ep.max(axis=0))
        found = found or bool((ep == episode).any())
    if not found:
        if b <= a:
            have = "the log has no steps"
        elif len(envs) == 1:
            have = f"env {envs[0]} has episodes {lo[0]}-{hi[0]}"
        else:
            have = f"its envs have episodes {int(lo.min())}-{int(hi.max())}"
        where = "the log" if (a, b) == (0, log.n_steps) else f"steps {a}-{b - 1}"
        raise InputError(f"{log.path}: episode {episode} not in {where} ({have}).")
    return Selection(envs, int(episode), a, b)
