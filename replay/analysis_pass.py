"""One summary pass: ``summary`` feeds a log's chunks to the accumulators (``_Pass``) and builds
the JSON-ready dict. ``moetape.replay.analysis`` re-exports every name.
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from moetape.replay import plugins as plugins_mod
from moetape.replay.analysis_select import (
    BALANCE_RANGE,
    DOMINANCE_THRESHOLD,
    ROOT_POS_FIELD,
    SUMMARY_FORMAT_VERSION,
    USAGE_THRESHOLD,
    Selection,
    ee_error,
    ee_error_fields,
    ee_error_is_stale,
    ee_error_source,
    select,
)
from moetape.replay.analysis_stats import CorrStats, EpisodeCounts, GateStats, LegacyStats, SwitchStats
from moetape.schema.layout import STATUS_RUNNING
from moetape.schema.reader import Log, open_log, stale_mask


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
