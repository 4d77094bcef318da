"""Check a log against the layout: structure, dtypes, shapes, counters, checksums, continuity.

``validate`` collects every problem and returns them all (STYLE §6.3); it raises only when the
file cannot be opened as a moetape log at all.
"""

from __future__ import annotations

from typing import Any, Callable, List, NamedTuple, Optional

import numpy as np

from moetape.schema import layout
from moetape.schema.errors import LogError, LogReadError
from moetape.schema.reader import Log, open_log

GATE_SUM_TOL = 1e-3
ENTROPY_TOL = 1e-3


class Problem(NamedTuple):
    """One thing wrong with a log: where (an HDF5 path or attribute) and what."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def validate(
    path: str,
    *,
    check_data: bool = True,
    progress: Optional[Callable[[int], None]] = None,
    notes: Optional[List[str]] = None,
) -> List[Problem]:
    """Return every problem found in the log at ``path`` (empty list: the log is valid).

    Args:
        check_data: read every committed row (fletcher32 checksums, gate sums, continuity).
        progress: called with the number of steps checked after each chunk.
        notes: if given, receives remarks that are not problems (e.g. a crashed run's torn last chunk).

    Raises:
        LogError: the file cannot be opened as a moetape log at all (see reader.open_log).
    """
    with open_log(path) as log:
        problems = _check_structure(log)
        if check_data and not problems:
            problems += _check_data(log, progress)
        if notes is not None:
            for ds in sorted(log.recovered):
                notes.append(
                    f"{ds}: the last chunk's checksum does not match (the run was killed while rewriting it); "
                    "its committed rows were read without the checksum"
                )
        return problems


def _check_structure(log: Log) -> List[Problem]:
    """Attributes, dataset presence, dtype, shape, chunking, filters and counters."""
    f = log.h5
    problems: List[Problem] = []
    meta = log.meta
    for name in layout.LIST_ATTRS:
        if not isinstance(meta.get(name), list):
            problems.append(Problem("attrs/" + name, f"expected a list of strings, got {meta.get(name)!r}"))
    if log.run_status not in layout.STATUSES:
        problems.append(
            Problem(
                layout.RUN_STATUS,
                f"unknown status {log.run_status!r}, expected one of {list(layout.STATUSES)}",
            )
        )
    fps = log.frames_per_step
    if fps not in (1, log.decimation):
        problems.append(
            Problem("attrs/frames_per_step", f"{fps} is neither 1 nor decimation {log.decimation}")
        )
    if abs(log.policy_dt_s - log.sim_dt_s * log.decimation) > 1e-9:
        problems.append(
            Problem(
                "attrs/policy_dt_s",
                f"{log.policy_dt_s} != sim_dt_s * decimation = {log.sim_dt_s * log.decimation}",
            )
        )
    sizes = {
        "E": log.n_envs,
        "O": int(meta["obs_dim"]),
        "A": int(meta["action_dim"]),
        "K": len(log.expert_names),
        "J": len(log.joint_names),
        "B": len(log.body_names),
    }
    metrics = {}
    for name in log.metric_names:
        ds = f.get(layout.METRICS + "/" + name)
        if ds is not None:
            metrics[name] = (tuple(ds.shape[2:]), str(ds.dtype))
    expected = layout.field_specs(sizes, log.term_names, metrics)
    if log.n_frames != log.n_steps * fps:
        problems.append(
            Problem(
                layout.N_COMMITTED, f"frames {log.n_frames} != steps {log.n_steps} x frames_per_step {fps}"
            )
        )
    for path, (shape, dtype) in expected.items():
        if path not in f:
            problems.append(Problem(path, "missing"))
            continue
        ds = f[path]
        if ds.dtype != np.dtype(dtype):
            problems.append(Problem(path, f"dtype {ds.dtype}, expected {dtype}"))
        if tuple(ds.shape[1:]) != shape:
            problems.append(Problem(path, f"row shape {tuple(ds.shape[1:])}, expected {shape}"))
        if ds.chunks is None or ds.maxshape[0] is not None:
            problems.append(Problem(path, f"not a chunked growable dataset (maxshape {ds.maxshape})"))
        if not ds.fletcher32:
            problems.append(Problem(path, "no fletcher32 checksum filter"))
        n = log.n_frames if layout.stream_of(path) else log.n_steps
        if ds.shape[0] < n:
            problems.append(Problem(path, f"{ds.shape[0]} rows but n_committed says {n}"))
    return problems


def _check_data(log: Log, progress: Optional[Callable[[int], None]]) -> List[Problem]:
    """Read every committed row: checksums, gate rows sum to 1, entropy, step continuity."""
    problems: List[Problem] = []
    fields = log.fields()
    fps = log.frames_per_step
    prev: Optional[dict] = None
    done_checks = 0
    try:
        for chunk in log.iter_chunks(fields):
            d = chunk.data
            problems += _check_chunk(chunk.start, d, prev, fps)
            prev = {k: d[k][-1] for k in ("episode", "step_in_episode", "done") if len(d[k])}
            done_checks = chunk.stop
            if progress is not None:
                progress(chunk.stop)
            if len(problems) > 50:
                problems.append(Problem(log.path, "more than 50 problems; stopped checking"))
                break
    except LogReadError as e:
        problems.append(Problem(log.path, f"checksum or read failure after step {done_checks}: {e}"))
    return problems


def _check_chunk(start: int, d: Any, prev: Optional[dict], fps: int) -> List[Problem]:
    problems: List[Problem] = []
    n = len(d["obs"])
    gate = d["gate"].astype(np.float64)
    bad = np.abs(gate.sum(axis=-1) - 1.0) > GATE_SUM_TOL
    if bad.any():
        s, e = np.argwhere(bad)[0]
        problems.append(
            Problem(
                "steps/gate", f"step {start + s} env {e}: weights sum to {gate[s, e].sum():.4f}, expected 1"
            )
        )
    ent = -(gate * np.log(gate + 1e-8)).sum(axis=-1)
    bad = np.abs(ent - d["gate_entropy"]) > ENTROPY_TOL
    if bad.any():
        s, e = np.argwhere(bad)[0]
        problems.append(
            Problem(
                "steps/gate_entropy",
                "step {} env {}: {:.4f}, gate gives {:.4f}".format(
                    start + s, e, d["gate_entropy"][s, e], ent[s, e]
                ),
            )
        )
    rows = np.arange(start * fps, (start + n) * fps)
    if not np.array_equal(d["frames/step"], rows // fps):
        problems.append(Problem("frames/step", f"not continuous from step {start}"))
    if not np.array_equal(d["frames/substep"], rows % fps):
        problems.append(Problem("frames/substep", f"not 0..{fps - 1} per step from step {start}"))
    ep, sie, done = d["episode"], d["step_in_episode"], d["done"]
    if prev is not None:
        ep = np.concatenate([prev["episode"][None], ep])
        sie = np.concatenate([prev["step_in_episode"][None], sie])
        done = np.concatenate([prev["done"][None], done])
        offset = start - 1
    else:
        offset = start
    ended = done[:-1]
    want_sie = np.where(ended, 0, sie[:-1] + 1)
    want_ep = np.where(ended, ep[:-1] + 1, ep[:-1])
    bad = (sie[1:] != want_sie) | (ep[1:] != want_ep)
    if bad.any():
        s, e = np.argwhere(bad)[0]
        problems.append(
            Problem(
                "steps/step_in_episode",
                f"step {offset + s + 1} env {e}: episode {ep[s + 1, e]} step {sie[s + 1, e]} does not follow "
                f"episode {ep[s, e]} step {sie[s, e]} (done={bool(done[s, e])})",
            )
        )
    return problems


def verify(path: str, **kwargs: Any) -> List[Problem]:
    """Return validate(path) problems, with an unopenable file reported as a single problem."""
    try:
        return validate(path, **kwargs)
    except LogError as e:
        return [Problem(path, str(e).split(": ", 1)[-1])]
