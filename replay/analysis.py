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

This module re-exports the pieces: ``analysis_select`` (thresholds, EE error, selection),
``analysis_stats`` (the accumulators), ``analysis_pass`` (``summary``) and ``analysis_split``
(partial statistics of step ranges and their exact merge).
"""

from __future__ import annotations

from moetape.replay.analysis_pass import (
    _fields,
    _legacy_scope,
    _Pass,
    _take,
    summary,
)
from moetape.replay.analysis_select import (
    BALANCE_RANGE,
    DOMINANCE_THRESHOLD,
    EE_ERR_FIELD,
    F64,
    I64,
    ROOT_POS_FIELD,
    SUMMARY_FORMAT_VERSION,
    USAGE_THRESHOLD,
    Selection,
    _num,
    ee_error,
    ee_error_fields,
    ee_error_is_stale,
    ee_error_source,
    select,
    step_range,
)
from moetape.replay.analysis_split import (
    _NO_EPISODE,
    SummaryPartial,
    _RecordedEpisodes,
    _RecordedLegacy,
    _RecordedMoments,
    _RecordedSwitches,
    chunk_steps,
    merge_partials,
    partial_summary,
)
from moetape.replay.analysis_stats import (
    CorrStats,
    EpisodeCounts,
    GateStats,
    LegacyStats,
    Moments,
    SwitchStats,
    episode_counts,
)

__all__ = [
    "BALANCE_RANGE",
    "CorrStats",
    "DOMINANCE_THRESHOLD",
    "EE_ERR_FIELD",
    "EpisodeCounts",
    "F64",
    "GateStats",
    "I64",
    "LegacyStats",
    "Moments",
    "ROOT_POS_FIELD",
    "SUMMARY_FORMAT_VERSION",
    "Selection",
    "SummaryPartial",
    "SwitchStats",
    "USAGE_THRESHOLD",
    "_NO_EPISODE",
    "_Pass",
    "_RecordedEpisodes",
    "_RecordedLegacy",
    "_RecordedMoments",
    "_RecordedSwitches",
    "_fields",
    "_legacy_scope",
    "_num",
    "_take",
    "chunk_steps",
    "ee_error",
    "ee_error_fields",
    "ee_error_is_stale",
    "ee_error_source",
    "episode_counts",
    "merge_partials",
    "partial_summary",
    "select",
    "step_range",
    "summary",
]
