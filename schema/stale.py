"""Which rows of a log are stale after an env reset (``stale_mask``), and the frame rows that stand
in for them when drawing rigid-body poses (``fresh_rows``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np

from moetape.schema import layout

if TYPE_CHECKING:
    from moetape.schema.reader import EnvSel, Log


def stale_mask(
    log: Log, start: int = 0, stop: Optional[int] = None, *, env: EnvSel = None, field: Optional[str] = None
) -> np.ndarray:
    """Return bool (n, E), or (n,) for one env: the steps [start, stop) whose stale_after_reset rows are stale.

    A step is stale when the log declares stale fields (``Log.stale_after_reset``) and it is the first
    step of an episode after the env's first (``layout.stale_rule``: step_in_episode == 0 and
    episode > 0). For a steps/ field the step's row is stale; for a frames/ field its row 0 (substep 0).
    ``field``: only if that field ("ee_pos", "steps/ee_pos" or "frames/body_pos") is declared stale;
    otherwise all False. Logs without the attribute read nothing and give all False.
    """
    stop = log.n_steps if stop is None else min(int(stop), log.n_steps)
    start = max(0, min(int(start), stop))
    declared = log.stale_after_reset
    if field is not None:
        path = (
            field if field.startswith((layout.STEPS + "/", layout.FRAMES + "/")) else layout.step_path(field)
        )
        declared = [f for f in declared if f == path]
    if not declared or stop <= start:
        envs = np.arange(log.n_envs)[log._env_index(env)]
        return np.zeros((stop - start,) + np.shape(envs), dtype=bool)
    episode = log.read("episode", start, stop, env=env)
    step_in_episode = log.read("step_in_episode", start, stop, env=env)
    return np.asarray(layout.stale_rule(episode, step_in_episode), dtype=bool)


def fresh_rows(stale: np.ndarray, frames_per_step: int) -> np.ndarray:
    """Return int64 (n * fps, ...): per frame row of n steps, the row whose rigid-body poses stand for it.

    ``stale`` is bool (n, ...) per step (:func:`stale_mask` for a frames/ field). A fresh row stands
    for itself; a stale row (row 0 of a stale step) for the step's next row (substep logs) or the
    previous fresh row of these steps (policy-rate logs: one row per step); -1 where none precedes
    it in these steps (the caller looks before them, or takes the next fresh row). Rows count from
    the first of the n steps. The rule ``moetape render`` and ``export rerun`` draw by.
    """
    stale = np.asarray(stale, dtype=bool)
    fps = int(frames_per_step)
    n_rows = stale.shape[0] * fps
    rows = np.arange(n_rows, dtype=np.int64).reshape((n_rows,) + (1,) * (stale.ndim - 1))
    rows = np.array(np.broadcast_to(rows, (n_rows,) + stale.shape[1:]))
    if fps > 1:
        first = rows[::fps]
        first[stale] += 1
        return rows
    return np.maximum.accumulate(np.where(stale, -1, rows), axis=0)
