"""Check a log against the layout: structure, dtypes, shapes, counters, checksums, continuity.

``validate`` collects every problem and returns them all (STYLE §6.3); it raises only when the
file cannot be opened as a moetape log at all.
"""

from __future__ import annotations

from typing import Any, Callable, List, NamedTuple, Optional, Set, Tuple

import numpy as np

from moetape.schema import layout
from moetape.schema.errors import LogError, LogReadError
from moetape.schema.reader import STREAM_BYTES, Log, open_log

GATE_SUM_TOL = 1e-3
MAX_PROBLEMS = 50
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
    """Read every committed row: checksums, gate rows sum to 1, entropy, step continuity.

    A range that fails to read is narrowed down to the HDF5 chunks that fail (one problem per
    dataset chunk), and checking goes on with the next range, so every damaged chunk is listed.
    """
    problems: List[Problem] = []
    fields = log.fields()
    fps = log.frames_per_step
    prev: Optional[dict] = None
    reported: Set[Tuple[str, int]] = set()
    per = max(1, STREAM_BYTES // log.step_bytes(fields))
    start = 0
    while start < log.n_steps:
        stop = min(log.n_steps, start + per)
        try:
            d = {name: log.read(name, start, stop) for name in fields}
        except LogReadError:
            problems += _locate_bad_chunks(log, fields, start, stop, reported)
            prev = None  # continuity cannot be checked across an unreadable range
        else:
            problems += _check_chunk(start, d, prev, fps)
            prev = {k: d[k][-1] for k in ("episode", "step_in_episode", "done") if len(d[k])}
        if progress is not None:
            progress(stop)
        if len(problems) > MAX_PROBLEMS:
            problems.append(Problem(log.path, f"more than {MAX_PROBLEMS} problems; stopped checking"))
            break
        start = stop
    return problems


def _locate_bad_chunks(
    log: Log, fields: List[str], start: int, stop: int, reported: Set[Tuple[str, int]]
) -> List[Problem]:
    """Return one problem per HDF5 chunk of ``fields`` in steps [start, stop) that cannot be read.

    ``reported`` holds the (dataset, first row) of chunks already reported by an earlier range.
    """
    found = False
    problems: List[Problem] = []
    fps = log.frames_per_step
    for name in fields:
        ds = log.dataset(name)
        path = ds.name.lstrip("/")
        per_row = fps if layout.stream_of(path) else 1
        rows = ds.chunks[0] if ds.chunks else max(1, stop - start)
        first = (start * per_row // rows) * rows
        for r0 in range(first, stop * per_row, rows):
            s0, s1 = max(start, r0 // per_row), min(stop, -(-(r0 + rows) // per_row))
            try:
                log.read(name, s0, s1)
            except LogReadError as e:
                found = True
                if (path, r0) not in reported:
                    reported.add((path, r0))
                    problems.append(Problem(path, _bad_chunk_text(log, ds, r0, rows, per_row, e)))
    if not found:  # the range failed as a whole but no single dataset does: report the range
        problems.append(
            Problem(
                log.path, f"checksum or read failure in steps {start}-{stop - 1}; each dataset reads alone"
            )
        )
    return problems


def _bad_chunk_text(log: Log, ds: Any, r0: int, rows: int, per_row: int, e: LogError) -> str:
    """Say which steps of a dataset are lost and what can still be done, without pointing at verify."""
    where = ""
    try:
        info = ds.id.get_chunk_info_by_coord((r0,) + (0,) * (ds.ndim - 1))
        if info.byte_offset is not None:
            where = f", {info.size} bytes at file offset {info.byte_offset}"
    except (OSError, ValueError, RuntimeError):
        pass
    text = str(e)
    cause = text.split("cannot read data (", 1)[1].rsplit(");", 1)[0] if "cannot read data (" in text else ""
    last_row = min(r0 + rows, log.n_steps * per_row) - 1
    s0, s1 = r0 // per_row, last_row // per_row + 1
    return (
        f"checksum or read failure in steps {s0}-{s1 - 1} (HDF5 chunk of rows {r0}-{last_row}{where}"
        + (f"; {cause}" if cause else "")
        + "). Those rows are lost in this file and moetape cannot repair them (there is no salvage "
        "command): restore the log from a copy. Commands that read other fields, or other steps "
        "(`moetape stats --steps A:B`), still work"
    )


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
