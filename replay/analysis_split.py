"""Split summary passes: the mergeable partial statistics of one step range of a log
(``partial_summary``) and their exact merge into ``summary``'s dict (``merge_partials``).
``moetape.replay.analysis`` re-exports every name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from moetape.replay.analysis_pass import _fields, _Pass
from moetape.replay.analysis_select import F64, I64, Selection, select, step_range
from moetape.replay.analysis_stats import EpisodeCounts, LegacyStats, Moments
from moetape.schema.errors import InputError
from moetape.schema.reader import Log

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
