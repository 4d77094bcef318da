"""The O(1)-memory accumulators of one summary pass: streaming moments (mergeable), gate weight
figures, switching and dwell runs, correlations, episode counts and the legacy figures.
``moetape.replay.analysis`` re-exports every name.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from moetape.replay.analysis_select import (
    BALANCE_RANGE,
    DOMINANCE_THRESHOLD,
    F64,
    I64,
    USAGE_THRESHOLD,
    _num,
)
from moetape.schema.reader import Log


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
