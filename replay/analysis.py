"""Gating statistics of a log, streamed chunk by chunk with O(1)-memory accumulators.

``summary(log)`` makes one pass over the committed steps and returns a JSON-ready dict:

- per expert: mean, std (population), min, max of the gate weight; usage (share of rows with
  w > 0.5), dominance (w > 0.7) and balance (0.3 <= w <= 0.7) shares; mean gate entropy (nats);
- switching: changes of the dominant expert (argmax of the gate) per second of observed time,
  counted between consecutive steps of the same env and episode (a reset is not a switch);
  observed time = selected env-steps * policy_dt_s;
- dwell: how long the same expert stays dominant (mean/median/max seconds, per expert); a run
  ends at a switch, at the end of its episode, or at the end of the log (runs cut by the end of
  the log are counted as they are);
- correlation: Pearson r of each expert's weight with the EE position error
  (``steps/terms/task_reaching_pos_err`` if recorded, else ||target_pos - ee_pos||) and with the
  base-to-target distance (||target_pos - frames/root_pos|| at the step's first frame), overall,
  per env and per episode (episode ids of the selected envs, pooled); ``None`` where a variable
  is constant; an error computed from an ee_pos the log marks stale (``stale_after_reset``: a new
  episode's first step on Isaac Gym) is left out, and ``stale_after_reset.excluded_from_ee_pos_err``
  counts those env-steps (the recorded error term is computed after the step: never stale);
- episodes: episodes seen in the selection, finished ones (``done``), split into timeouts
  (``done`` and ``timeout``) and terminations (``done`` without ``timeout``), and unfinished ones;
- legacy: the figures the legacy script printed from ``weight_stats.pkl`` (env 0's gate, the
  entropy averaged over every env), over the selected step range but never limited to
  ``env``/``episode``: the JSON says so in ``legacy.scope`` and the text report in its heading;
- plugins: results of custom analyses (see ``moetape.replay.plugins``).

Only the dwell runs (one integer per run) are kept in memory; everything else is sums.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from moetape.replay import plugins as plugins_mod
from moetape.schema.errors import InputError
from moetape.schema.layout import STATUS_RUNNING
from moetape.schema.reader import Log, open_log, stale_mask

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


# ---------------------------------------------------------------------------- accumulators
class Moments:
    """Streaming per-group means and co-moments of V variables (Chan et al. pairwise merge).

    Groups are small non-negative ints (env index, episode id); memory is O(groups * V^2).
    """

    def __init__(self, n_vars: int) -> None:
        self.n_vars = n_vars
        self.n = np.zeros(0, dtype=np.int64)
        self.mean = np.zeros((0, n_vars))
        self.comoment = np.zeros((0, n_vars, n_vars))

    def _grow(self, size: int) -> None:
        extra = size - self.n.shape[0]
        if extra > 0:
            v = self.n_vars
            self.n = np.concatenate([self.n, np.zeros(extra, dtype=np.int64)])
            self.mean = np.concatenate([self.mean, np.zeros((extra, v))])
            self.comoment = np.concatenate([self.comoment, np.zeros((extra, v, v))])

    def update(self, groups: I64, x: F64) -> None:
        """Add rows ``x`` float64 (N, V) belonging to ``groups`` int (N,)."""
        p = self.part(groups, x)
        if p is not None:
            self.fold(p)

    def part(self, groups: I64, x: F64) -> Optional[Tuple[int, I64, F64, F64]]:
        """Return the moments of one batch of rows (size, n, mean, comoment), for ``fold``; None if empty.

        ``update`` is ``fold(part(...))``: folding the parts of the same batches in the same order
        gives the same floats, bit for bit (how a split pass is merged exactly).
        """
        if x.shape[0] == 0:
            return None
        size = int(groups.max()) + 1
        v = self.n_vars
        nb = np.bincount(groups, minlength=size).astype(np.int64)
        sums = np.stack([np.bincount(groups, x[:, i], minlength=size) for i in range(v)], axis=1)
        mb = sums / np.maximum(nb, 1)[:, None]
        d = x - mb[groups]
        cb = np.empty((size, v, v))
        for i in range(v):
            for j in range(i, v):
                cb[:, i, j] = cb[:, j, i] = np.bincount(groups, d[:, i] * d[:, j], minlength=size)
        return size, nb, mb, cb

    def fold(self, part: Tuple[int, I64, F64, F64]) -> None:
        """Merge one batch's moments (from ``part``) into the running ones (Chan et al.)."""
        size, nb, mb, cb = part
        self._grow(size)
        na, ma, ca = self.n[:size], self.mean[:size], self.comoment[:size]
        n = na + nb
        safe = np.maximum(n, 1)
        delta = mb - ma
        self.mean[:size] = ma + delta * (nb / safe)[:, None]
        self.comoment[:size] = (
            ca + cb + delta[:, :, None] * delta[:, None, :] * (na * nb / safe)[:, None, None]
        )
        self.n[:size] = n

    def groups(self) -> List[int]:
        """Return the group ids that received rows."""
        return [int(g) for g in np.flatnonzero(self.n)]

    def std(self, g: int, i: int) -> Optional[float]:
        """Return the population standard deviation of variable ``i`` in group ``g``."""
        if g >= self.n.shape[0] or self.n[g] == 0:
            return None
        return _num(math.sqrt(max(0.0, self.comoment[g, i, i] / self.n[g])))

    def corr(self, g: int, i: int, j: int) -> Optional[float]:
        """Return Pearson r of variables ``i`` and ``j`` in group ``g``; None if one is constant."""
        if g >= self.n.shape[0] or self.n[g] < 2:
            return None
        c = self.comoment[g]
        n = float(self.n[g])
        tiny = [1e-18 * n * (1.0 + self.mean[g, k] ** 2) for k in (i, j)]
        if c[i, i] <= tiny[0] or c[j, j] <= tiny[1]:
            return None
        return _num(max(-1.0, min(1.0, c[i, j] / math.sqrt(c[i, i] * c[j, j]))))


class GateStats:
    """Per-expert weight moments, extremes and threshold shares, plus the mean entropy."""

    def __init__(self, n_experts: int) -> None:
        self.k = n_experts
        self.moments = Moments(n_experts + 1)  # last variable: entropy
        self.min = np.full(n_experts, np.inf)
        self.max = np.full(n_experts, -np.inf)
        self.usage = np.zeros(n_experts, dtype=np.int64)
        self.dominance = np.zeros(n_experts, dtype=np.int64)
        self.balance = np.zeros(n_experts, dtype=np.int64)

    def update(self, gate: np.ndarray, entropy: np.ndarray) -> None:
        """Add rows: gate (N, K), entropy (N,)."""
        if gate.shape[0] == 0:
            return
        g = np.asarray(gate, dtype=np.float64)
        x = np.concatenate([g, np.asarray(entropy, dtype=np.float64)[:, None]], axis=1)
        self.moments.update(np.zeros(g.shape[0], dtype=np.int64), x)
        self.min = np.minimum(self.min, g.min(axis=0))
        self.max = np.maximum(self.max, g.max(axis=0))
        w = np.asarray(gate)  # thresholds on the stored float32 values, as the legacy script did
        self.usage += (w > USAGE_THRESHOLD).sum(axis=0)
        self.dominance += (w > DOMINANCE_THRESHOLD).sum(axis=0)
        self.balance += ((w >= BALANCE_RANGE[0]) & (w <= BALANCE_RANGE[1])).sum(axis=0)

    @property
    def n(self) -> int:
        return int(self.moments.n[0]) if self.moments.n.shape[0] else 0

    def experts(self, names: Sequence[str]) -> List[Dict[str, Any]]:
        """Return one JSON-ready dict per expert."""
        n = self.n
        out = []
        for k, name in enumerate(names):
            has = n > 0
            out.append(
                {
                    "name": name,
                    "mean": _num(self.moments.mean[0, k]) if has else None,
                    "std": self.moments.std(0, k) if has else None,
                    "min": _num(self.min[k]) if has else None,
                    "max": _num(self.max[k]) if has else None,
                    "usage": self.usage[k] / n if has else None,
                    "dominance": self.dominance[k] / n if has else None,
                    "balance": self.balance[k] / n if has else None,
                }
            )
        return out

    def mean_entropy(self) -> Optional[float]:
        return _num(self.moments.mean[0, self.k]) if self.n else None


class SwitchStats:
    """Switches of the dominant expert and the dwell runs between them, per env, streamed.

    Rows come as dominant expert ``dom`` int (n, E) and a segment key ``key`` int (n, E): the
    episode id, or -1 for rows outside the selection. A run is a stretch of equal (key, dom)
    within one env; a switch is a change of dom between consecutive rows with the same key >= 0.
    """

    def __init__(self, n_envs: int, n_experts: int) -> None:
        self.k = n_experts
        self.cur_dom = np.full(n_envs, -1, dtype=np.int64)
        self.cur_key = np.full(n_envs, -1, dtype=np.int64)
        self.cur_len = np.zeros(n_envs, dtype=np.int64)
        self.n_switches = 0
        self.n_rows = 0
        self._runs: List[List[I64]] = [[] for _ in range(n_experts)]

    def _close(self, dom: I64, key: I64, length: I64) -> None:
        keep = (key >= 0) & (dom >= 0) & (length > 0)
        dom, length = dom[keep], length[keep]
        for k in range(self.k):
            sel = length[dom == k]
            if sel.size:
                self._runs[k].append(sel.astype(np.int64))

    def update(self, dom: I64, key: I64) -> None:
        """Add consecutive rows of every env: dom, key int (n, E)."""
        n = dom.shape[0]
        if n == 0:
            return
        valid = key >= 0
        self.n_rows += int(valid.sum())
        prev_dom = np.concatenate([self.cur_dom[None], dom[:-1]])
        prev_key = np.concatenate([self.cur_key[None], key[:-1]])
        same_seg = (key == prev_key) & valid
        self.n_switches += int((same_seg & (dom != prev_dom) & (prev_dom >= 0)).sum())
        boundary = (key != prev_key) | (dom != prev_dom)
        for e in range(dom.shape[1]):
            idx = np.flatnonzero(boundary[:, e])
            if idx.size == 0:
                self.cur_len[e] += n
                continue
            first = np.array([self.cur_len[e] + idx[0]])
            self._close(self.cur_dom[e : e + 1], self.cur_key[e : e + 1], first)
            self._close(dom[idx[:-1], e], key[idx[:-1], e], np.diff(idx))
            self.cur_dom[e], self.cur_key[e], self.cur_len[e] = dom[idx[-1], e], key[idx[-1], e], n - idx[-1]

    def finish(self) -> None:
        """Close the runs still open at the end of the log."""
        self._close(self.cur_dom, self.cur_key, self.cur_len)
        self.cur_len[:] = 0

    def runs(self, k: int) -> I64:
        """Return the lengths, in steps, of expert ``k``'s dwell runs."""
        return np.concatenate(self._runs[k]) if self._runs[k] else np.zeros(0, dtype=np.int64)

    def result(self, names: Sequence[str], dt_s: float) -> Dict[str, Any]:
        """Return the JSON-ready switching and dwell figures (call ``finish`` first)."""
        duration = self.n_rows * dt_s
        dwell = []
        for k, name in enumerate(names):
            r = self.runs(k) * dt_s
            dwell.append(
                {
                    "expert": name,
                    "n_runs": int(r.size),
                    "mean_s": _num(r.mean()) if r.size else None,
                    "median_s": _num(np.median(r)) if r.size else None,
                    "max_s": _num(r.max()) if r.size else None,
                }
            )
        return {
            "switching": {
                "n_switches": self.n_switches,
                "duration_s": duration,
                "rate_hz": self.n_switches / duration if duration > 0 else None,
            },
            "dwell": dwell,
        }


class CorrStats:
    """Pearson r of every expert's weight with the EE error and the base-to-target distance.

    Each of the two is accumulated over the rows where it is finite (an Isaac Gym run may lack the
    error term in some envs; a log without frames has no distance), so one never hides the other.
    """

    def __init__(self, n_experts: int, scopes: Sequence[str] = ("overall", "env", "episode")) -> None:
        self.k = n_experts
        self.scopes = tuple(scopes)
        self.moments = {(y, by): Moments(n_experts + 1) for y in ("err", "dist") for by in self.scopes}

    def update(self, gate: np.ndarray, err: F64, dist: F64, env: I64, episode: I64) -> None:
        """Add selected rows: gate (N, K), err (N,), dist (N,), env ids (N,), episode ids (N,)."""
        g = np.asarray(gate, dtype=np.float64)
        for y_name, y in (("err", err), ("dist", dist)):
            x = np.concatenate([g, y[:, None]], axis=1)
            ok = np.isfinite(x).all(axis=1)
            x = x[ok]
            self.moments[y_name, "overall"].update(np.zeros(x.shape[0], dtype=np.int64), x)
            if "env" in self.scopes:
                self.moments[y_name, "env"].update(env[ok], x)
            if "episode" in self.scopes:
                self.moments[y_name, "episode"].update(episode[ok], x)

    def _row(self, by: str, g: int) -> Dict[str, Any]:
        k = self.k
        me, md = self.moments["err", by], self.moments["dist", by]
        has_e = g < me.n.shape[0] and me.n[g] > 0
        has_d = g < md.n.shape[0] and md.n[g] > 0
        return {
            "n": int(me.n[g]) if has_e else 0,
            "n_target_distance": int(md.n[g]) if has_d else 0,
            "r_ee_pos_err": [me.corr(g, i, k) for i in range(k)],
            "r_target_distance": [md.corr(g, i, k) for i in range(k)],
            "mean_ee_pos_err_m": _num(me.mean[g, k]) if has_e else None,
        }

    def _groups(self, by: str) -> List[int]:
        return sorted(set(self.moments["err", by].groups()) | set(self.moments["dist", by].groups()))

    def result(self) -> Dict[str, Any]:
        """Return the JSON-ready figures of the scopes accumulated (by_env / by_episode only if kept)."""
        out: Dict[str, Any] = {"overall": self._row("overall", 0)}
        if "env" in self.scopes:
            out["by_env"] = [dict(env=g, **self._row("env", g)) for g in self._groups("env")]
        if "episode" in self.scopes:
            out["by_episode"] = [dict(episode=g, **self._row("episode", g)) for g in self._groups("episode")]
        return out


class EpisodeCounts:
    """Episodes seen, finished, timed out and terminated in the selected rows, streamed.

    Episode ids rise by one per env at each ``done`` (the layout's contract), so the episodes seen
    are the changes of id along each env's selected rows; an episode already running at the first
    selected step counts as seen.
    """

    def __init__(self, n_envs: int) -> None:
        self.last = np.full(n_envs, np.iinfo(np.int64).min, dtype=np.int64)
        self.seen = 0
        self.finished = 0
        self.timeouts = 0

    def update(self, episode: np.ndarray, done: np.ndarray, timeout: np.ndarray, mask: np.ndarray) -> None:
        """Add consecutive rows: episode int, done/timeout bool, mask bool, all (n, E)."""
        n, e = episode.shape
        if n == 0:
            return
        ep = np.asarray(episode, dtype=np.int64)
        rows = np.where(mask, np.arange(n)[:, None], -1)
        last = np.maximum.accumulate(rows, axis=0)
        before = np.vstack([np.full((1, e), -1), last[:-1]])
        prev = np.where(
            before >= 0, np.take_along_axis(ep, np.maximum(before, 0), axis=0), self.last[None, :]
        )
        self.seen += int((mask & (ep != prev)).sum())
        ended = mask & np.asarray(done, dtype=bool)
        self.finished += int(ended.sum())
        self.timeouts += int((ended & np.asarray(timeout, dtype=bool)).sum())
        has = last[-1] >= 0
        self.last[has] = ep[last[-1][has], np.flatnonzero(has)]

    def result(self) -> Dict[str, int]:
        """Return the JSON-ready counts."""
        return {
            "seen": self.seen,
            "finished": self.finished,
            "timeouts": self.timeouts,
            "terminations": self.finished - self.timeouts,
            "unfinished": self.seen - self.finished,
        }


def episode_counts(log: Log, *, start: int = 0, stop: Optional[int] = None) -> Dict[str, int]:
    """Return the episode and termination counts of every env over steps [start, stop) (see EpisodeCounts)."""
    counts = EpisodeCounts(log.n_envs)
    for chunk in log.iter_chunks(["episode", "done", "timeout"], start=start, stop=stop):
        d = chunk.data
        counts.update(d["episode"], d["done"], d["timeout"], np.ones(d["done"].shape, dtype=bool))
    return counts.result()


class LegacyStats:
    """What the legacy script printed from weight_stats.pkl: env 0 base/arm usage, env-mean entropy."""

    def __init__(self) -> None:
        self.n = 0
        self.base_used = 0
        self.arm_used = 0
        self.entropy_sum = 0.0

    def update(self, gate: np.ndarray, entropy: np.ndarray) -> None:
        """Add steps of every env: gate (n, E, K), entropy (n, E)."""
        self.n += gate.shape[0]
        self.base_used += int((gate[:, 0, 0] > USAGE_THRESHOLD).sum())
        if gate.shape[2] > 1:
            self.arm_used += int((gate[:, 0, 1] > USAGE_THRESHOLD).sum())
        self._add_entropy(float(np.asarray(entropy, dtype=np.float64).mean(axis=1).sum()))

    def _add_entropy(self, chunk_sum: float) -> None:
        self.entropy_sum += chunk_sum

    def result(self, n_experts: int) -> Dict[str, Any]:
        n = self.n
        return {
            "source": "weight_stats.pkl as the legacy script wrote it: env 0 gate columns 0/1 and the "
            "entropy averaged over envs, every step",
            "n_steps": n,
            "base_usage": self.base_used / n if n else None,
            "arm_usage": self.arm_used / n if n and n_experts > 1 else None,
            "mean_entropy": self.entropy_sum / n if n else None,
        }


def _legacy_scope(sel: Selection, n_envs: int) -> Dict[str, Any]:
    """Say which rows the legacy figures cover, and whether that is the selection."""
    return {
        "scope": {
            "gate_env": 0,
            "entropy_envs": list(range(n_envs)),
            "start": sel.start,
            "stop": sel.stop,
            "episode": None,
        },
        "matches_selection": sel.episode is None and sel.envs == [0] and n_envs == 1,
    }


# ---------------------------------------------------------------------------- the pass
def _take(arr: np.ndarray, envs: List[int], n_envs: int) -> np.ndarray:
    """Select the env axis (axis 1) unless every env is selected."""
    return arr if len(envs) == n_envs else arr[:, envs]


def summary(
    log: Union[Log, str, os.PathLike[str]],
    *,
    env: Optional[int] = None,
    episode: Optional[int] = None,
    start: Optional[int] = None,
    stop: Optional[int] = None,
    plugins: Iterable[Any] = (),
) -> Dict[str, Any]:
    """Return the gating statistics of ``log`` as a JSON-ready dict (see the module docstring).

    Args:
        log: an open Log (or a path, opened and closed here).
        env: one env index; default every env.
        episode: one episode id (of the selected envs); default every episode.
        start, stop: the policy steps [start, stop) to cover; default every committed step.
        plugins: custom analyses: "module:attribute" specs, ``plugins.Plugin`` objects or
            callables (see ``moetape.replay.plugins``); none by default.

    Raises:
        InputError: env out of range, a bad step range, episode not present, or a bad plugin.
    """
    if not isinstance(log, Log):
        with open_log(os.fspath(log)) as opened:
            return summary(opened, env=env, episode=episode, start=start, stop=stop, plugins=plugins)
    sel = select(log, env=env, episode=episode, start=start, stop=stop)
    active = plugins_mod.start(plugins_mod.resolve(plugins), log)
    scan = _Pass(log, sel, active)
    for chunk in log.iter_chunks(_fields(log, active), start=sel.start, stop=sel.stop):
        scan.feed(chunk)
    return scan.result()


def _fields(log: Log, active: Sequence[Any] = ()) -> List[str]:
    """Return the fields one summary pass reads (they set its chunk size)."""
    fields = ["gate", "gate_entropy", "episode", "done", "timeout"] + ee_error_fields(log) + ["target_pos"]
    fields += [ROOT_POS_FIELD] if log.has_field(ROOT_POS_FIELD) else []
    return list(dict.fromkeys(fields + plugins_mod.fields_of(active)))


class _Pass:
    """The accumulators of one summary pass over ``sel``, fed chunk by chunk."""

    def __init__(self, log: Log, sel: Selection, active: Sequence[Any] = (), corr_scopes: Sequence[str] = ()):
        k = len(log.expert_names)
        self.log, self.sel, self.active = log, sel, active
        self.gate_stats, self.switch_stats = GateStats(k), SwitchStats(len(sel.envs), k)
        self.corr_stats = CorrStats(k, corr_scopes or ("overall", "env", "episode"))
        self.legacy, self.episodes = LegacyStats(), EpisodeCounts(len(sel.envs))
        self.n_stale = self.n_excluded = 0

    def feed(self, chunk: Any) -> None:
        log, sel = self.log, self.sel
        n_envs, fps = log.n_envs, log.frames_per_step
        env_ids = np.asarray(sel.envs, dtype=np.int64)
        d = chunk.data
        self.legacy.update(d["gate"], d["gate_entropy"])
        gate = _take(d["gate"], sel.envs, n_envs)
        ent = _take(d["gate_entropy"], sel.envs, n_envs)
        ep = _take(d["episode"], sel.envs, n_envs).astype(np.int64)
        mask = sel.mask(ep)
        self.episodes.update(
            ep, _take(d["done"], sel.envs, n_envs), _take(d["timeout"], sel.envs, n_envs), mask
        )
        self.gate_stats.update(gate[mask], ent[mask])
        dom = np.where(mask, gate.argmax(axis=2), -1)
        self.switch_stats.update(dom, np.where(mask, ep, -1))
        err = _take(ee_error(d), sel.envs, n_envs)
        if log.stale_after_reset:
            stale = _take(stale_mask(log, chunk.start, chunk.stop), sel.envs, n_envs) & mask
            self.n_stale += int(stale.sum())
            if ee_error_is_stale(log):
                self.n_excluded += int(stale.sum())
                err = np.where(stale, np.nan, err)
        dist = np.full(err.shape, np.nan)
        if log.has_field(ROOT_POS_FIELD):
            root = np.asarray(d[ROOT_POS_FIELD][::fps], dtype=np.float64)
            m = root.shape[0]  # a crashed log may hold fewer frame rows than steps
            diff = np.asarray(d["target_pos"][:m], dtype=np.float64) - root
            dist[:m] = _take(np.linalg.norm(diff, axis=-1), sel.envs, n_envs)
        env_grid = np.broadcast_to(env_ids[None, :], ep.shape)
        self.corr_stats.update(gate[mask], err[mask], dist[mask], env_grid[mask], ep[mask])
        plugins_mod.feed(self.active, chunk, sel.envs, mask)

    def result(self) -> Dict[str, Any]:
        log, sel = self.log, self.sel
        names = log.expert_names
        k, n_envs = len(names), log.n_envs
        gate_stats, switch_stats = self.gate_stats, self.switch_stats
        switch_stats.finish()
        n_rows = gate_stats.n
        n_excluded = self.n_excluded
        out: Dict[str, Any] = {
            "format_version": SUMMARY_FORMAT_VERSION,
            "log": {
                "path": log.path,
                "log_id": log.log_id,
                "log_format_version": log.format_version,
                "run_status": log.run_status,
                "partial": log.run_status == STATUS_RUNNING,
                "n_steps": log.n_steps,
                "n_envs": n_envs,
                "policy_dt_s": log.policy_dt_s,
            },
            "selection": {
                "envs": sel.envs,
                "episode": sel.episode,
                "env_steps": n_rows,
                "duration_s": n_rows * log.policy_dt_s,
            },
            "step_range": {"start": sel.start, "stop": sel.stop},
            "episodes": self.episodes.result(),
            "thresholds": {
                "usage": USAGE_THRESHOLD,
                "dominance": DOMINANCE_THRESHOLD,
                "balance": list(BALANCE_RANGE),
            },
            "expert_names": names,
            "experts": gate_stats.experts(names),
            "entropy": {"mean": gate_stats.mean_entropy(), "max_possible": math.log(k) if k > 1 else 0.0},
        }
        out.update(switch_stats.result(names, log.policy_dt_s))
        has_root = log.has_field(ROOT_POS_FIELD)
        out["correlation"] = dict(
            ee_pos_err_source=ee_error_source(log),
            ee_pos_err_excluded_stale=n_excluded,
            target_distance_source="norm(target_pos - frames/root_pos)" if has_root else None,
            **self.corr_stats.result(),
        )
        out["stale_after_reset"] = {
            "fields": log.stale_after_reset,
            "env_steps": self.n_stale,
            "excluded_from_ee_pos_err": n_excluded,
        }
        out["legacy"] = dict(self.legacy.result(k), **_legacy_scope(sel, n_envs))
        out["plugins"] = plugins_mod.results(self.active)
        return out


# ---------------------------------------------------------------------------- split passes
# A log far larger than the others in a sweep is summarised by several tasks, one per step range,
# whose partials are merged into exactly the dict ``summary`` gives (every env, every episode, no
# plugins; correlation overall only). Exactness: the ranges start at the chunk boundaries of the
# whole pass, each task keeps one partial per chunk for every float figure (moments, the legacy
# entropy sum), and the merge folds them in chunk order with the same accumulators; integer
# figures are summed; the dominant-expert runs come as run-length codes per chunk and env, replayed
# through ``SwitchStats`` (runs join across a range boundary as in one pass); episodes seen across a
# boundary are counted once (an env's first selected episode of a range equal to its last one
# before it is the same episode).
_NO_EPISODE = np.iinfo(np.int64).min


def chunk_steps(log: Log) -> int:
    """Return the policy steps of one chunk of ``summary``'s pass (without plugins) over ``log``."""
    from moetape.schema import reader

    return max(1, reader.STREAM_BYTES // log.step_bytes(_fields(log)))


class _RecordedMoments(Moments):
    """Moments that keep each batch's part (for a later ``fold``) instead of folding it."""

    def __init__(self, n_vars: int) -> None:
        super().__init__(n_vars)
        self.parts: List[Tuple[int, I64, F64, F64]] = []

    def update(self, groups: I64, x: F64) -> None:
        p = self.part(groups, x)
        if p is not None:
            self.parts.append(p)


class _RecordedSwitches:
    """Keeps each chunk's dominant-expert runs as run-length codes: (n, runs per env, dom, key, length)."""

    def __init__(self) -> None:
        self.chunks: List[Tuple[int, I64, I64, I64, I64]] = []

    def update(self, dom: I64, key: I64) -> None:
        n, e = dom.shape
        if n == 0:
            return
        change = np.ones((n, e), dtype=bool)
        change[1:] = (dom[1:] != dom[:-1]) | (key[1:] != key[:-1])
        env_idx, row_idx = np.nonzero(change.T)  # env-major: each env's runs in order
        counts = np.bincount(env_idx, minlength=e).astype(np.int64)  # >= 1: row 0 starts a run
        nxt = np.append(row_idx[1:], n)
        nxt[np.cumsum(counts) - 1] = n
        self.chunks.append((n, counts, dom[row_idx, env_idx], key[row_idx, env_idx], nxt - row_idx))

    def finish(self) -> None:
        pass

    @staticmethod
    def expand(code: Tuple[int, I64, I64, I64, I64]) -> Tuple[I64, I64]:
        """Return the (dom, key) int64 (n, E) rows of one chunk's run-length code."""
        n, counts, dom, key, length = code
        e = counts.size
        d = np.repeat(dom.astype(np.int64), length).reshape(e, n).T
        k = np.repeat(key.astype(np.int64), length).reshape(e, n).T
        return np.ascontiguousarray(d), np.ascontiguousarray(k)


class _RecordedEpisodes(EpisodeCounts):
    """EpisodeCounts that also keep each env's first selected episode (to merge across a boundary)."""

    def __init__(self, n_envs: int) -> None:
        super().__init__(n_envs)
        self.first = np.full(n_envs, _NO_EPISODE, dtype=np.int64)

    def update(self, episode: np.ndarray, done: np.ndarray, timeout: np.ndarray, mask: np.ndarray) -> None:
        if episode.shape[0]:
            take = (self.first == _NO_EPISODE) & mask.any(axis=0)
            rows = mask.argmax(axis=0)
            cols = np.flatnonzero(take)
            self.first[cols] = np.asarray(episode, dtype=np.int64)[rows[cols], cols]
        super().update(episode, done, timeout, mask)


class _RecordedLegacy(LegacyStats):
    """LegacyStats that keep each chunk's entropy sum (added in chunk order at the merge)."""

    def __init__(self) -> None:
        super().__init__()
        self.entropy_parts: List[float] = []

    def _add_entropy(self, chunk_sum: float) -> None:
        self.entropy_parts.append(chunk_sum)


@dataclass
class SummaryPartial:
    """What one step range [start, stop) of a split summary pass hands to ``merge_partials`` (picklable)."""

    start: int
    stop: int
    gate_moments: List[Tuple[int, I64, F64, F64]]
    gate_min: F64
    gate_max: F64
    gate_counts: Tuple[I64, I64, I64]  # usage, dominance, balance
    corr_moments: Dict[str, List[Tuple[int, I64, F64, F64]]]  # "err", "dist": overall parts
    switches: List[Tuple[int, I64, I64, I64, I64]]
    episodes: Tuple[int, int, int, I64, I64]  # seen, finished, timeouts, first, last per env
    legacy: Tuple[int, int, int, List[float]]  # n, base_used, arm_used, entropy per chunk
    n_stale: int
    n_excluded: int


def partial_summary(log: Log, start: int, stop: int) -> SummaryPartial:
    """Return the mergeable partial statistics of steps [start, stop) of ``log`` (every env and episode).

    ``start`` must be a chunk boundary of the whole pass (its start plus a multiple of
    ``chunk_steps(log)``) for ``merge_partials`` to equal ``summary`` exactly.

    Raises:
        InputError: a bad step range.
    """
    a, b = step_range(log, start, stop)
    sel = Selection(list(range(log.n_envs)), None, a, b)
    k = len(log.expert_names)
    scan = _Pass(log, sel, corr_scopes=("overall",))
    scan.gate_stats.moments = _RecordedMoments(k + 1)
    for y in ("err", "dist"):
        scan.corr_stats.moments[y, "overall"] = _RecordedMoments(k + 1)
    switches, episodes, legacy = _RecordedSwitches(), _RecordedEpisodes(log.n_envs), _RecordedLegacy()
    scan.switch_stats, scan.episodes, scan.legacy = switches, episodes, legacy  # type: ignore[assignment]
    for chunk in log.iter_chunks(_fields(log), start=a, stop=b, chunk_steps=chunk_steps(log)):
        scan.feed(chunk)
    g = scan.gate_stats
    return SummaryPartial(
        start=a,
        stop=b,
        gate_moments=g.moments.parts,  # type: ignore[attr-defined]
        gate_min=g.min,
        gate_max=g.max,
        gate_counts=(g.usage, g.dominance, g.balance),
        corr_moments={y: scan.corr_stats.moments[y, "overall"].parts for y in ("err", "dist")},  # type: ignore[attr-defined]
        switches=switches.chunks,
        episodes=(episodes.seen, episodes.finished, episodes.timeouts, episodes.first, episodes.last),
        legacy=(legacy.n, legacy.base_used, legacy.arm_used, legacy.entropy_parts),
        n_stale=scan.n_stale,
        n_excluded=scan.n_excluded,
    )


def merge_partials(log: Log, parts: Sequence[SummaryPartial]) -> Dict[str, Any]:
    """Return ``summary(log, start=parts[0].start, stop=parts[-1].stop)`` from the partials of
    consecutive step ranges, value for value, except that ``correlation`` has no by_env/by_episode.

    Raises:
        InputError: the parts are not consecutive ranges.
    """
    if not parts:
        raise InputError(f"{log.path}: no partial statistics to merge.")
    for p, q in zip(parts, parts[1:]):
        if p.stop != q.start:
            raise InputError(
                f"{log.path}: partial statistics cover steps {p.start}-{p.stop - 1} then from {q.start}; "
                "expected consecutive ranges."
            )
    sel = select(log, start=parts[0].start, stop=parts[-1].stop)
    scan = _Pass(log, sel, corr_scopes=("overall",))
    g, c, sw, eps, leg = scan.gate_stats, scan.corr_stats, scan.switch_stats, scan.episodes, scan.legacy
    last = np.full(log.n_envs, _NO_EPISODE, dtype=np.int64)
    for p in parts:
        for m in p.gate_moments:
            g.moments.fold(m)
        g.min, g.max = np.minimum(g.min, p.gate_min), np.maximum(g.max, p.gate_max)
        g.usage, g.dominance, g.balance = (
            a + b for a, b in zip((g.usage, g.dominance, g.balance), p.gate_counts)
        )
        for y in ("err", "dist"):
            for m in p.corr_moments[y]:
                c.moments[y, "overall"].fold(m)
        for code in p.switches:
            sw.update(*_RecordedSwitches.expand(code))
        seen, finished, timeouts, first, p_last = p.episodes
        eps.seen += seen - int(((first != _NO_EPISODE) & (first == last)).sum())
        eps.finished += finished
        eps.timeouts += timeouts
        last = np.where(p_last != _NO_EPISODE, p_last, last)
        n, base_used, arm_used, entropy_parts = p.legacy
        leg.n, leg.base_used, leg.arm_used = leg.n + n, leg.base_used + base_used, leg.arm_used + arm_used
        for v in entropy_parts:
            leg._add_entropy(v)
        scan.n_stale += p.n_stale
        scan.n_excluded += p.n_excluded
    eps.last = last
    return scan.result()
