"""Write every committed step of a damaged log that can still be read to a new, clean log.

As MCAP's ``mcap recover``: the damaged file is only read. A step is kept when every field that
can be read at all reads at that step; the steps inside damaged chunks are dropped, in every field
(their rows would be half missing). A field that cannot be read at any step (its object header is
gone) does not cost any step: it is written as fill values (NaN, False or -1) and the new log says
which field is missing for which steps. frames/step and frames/substep are written afresh, so their
damage costs nothing.

The new log's provenance (``provenance_json``) gets a ``"salvage"`` object:
    source, source_log_id, source_run_status, source_n_steps, salvaged_utc
    kept        [[first source step, stop, first new step], ...]  runs of kept steps, in order
    lost        [{"dataset", "kind", "steps": [a, b], "envs": [e0, e1] | null}, ...]  damaged regions
    lost_steps  [[a, b], ...]   source steps (inclusive) not in the new log
    missing_fields  {HDF5 path: {"reason", "steps": [[a, b], ...] (new log's steps)}}
Readers need nothing of it; ``verify`` uses ``kept`` (episode continuity is not checked across a
gap) and ``missing_fields`` (fill values are not checked).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from moetape.schema import layout
from moetape.schema.commit import utc_now
from moetape.schema.errors import LogFormatError, LogReadError
from moetape.schema.io import atomic_output, check_output, resolve_output
from moetape.schema.reader import Log
from moetape.schema.upgrade import spec_of
from moetape.schema.validate import _check_data, _regions
from moetape.schema.writer import LogSpec, LogWriter

REGENERATED = ("frames/step", "frames/substep")
"""Fields the writer fills in itself: their damage loses nothing."""


def salvage(
    damaged: str,
    out: str,
    *,
    force: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Dict[str, Any]:
    """Copy every readable committed step of ``damaged`` into a new log ``out`` at the current format.

    Args:
        force: replace an existing ``out`` (a file only).
        progress: called with (work done, total work): every step is read, then the kept ones written.

    Returns:
        A JSON-ready report: paths, steps kept and lost, the lost regions, missing fields.

    Raises:
        LogError: ``damaged`` cannot be opened as a moetape log at all (not HDF5, a newer format,
            its root metadata damaged), ``out`` exists, or not one step can be read.
    """
    out = resolve_output(out, os.path.basename(os.fspath(damaged)))
    if os.path.abspath(damaged) == os.path.abspath(out):
        raise LogFormatError(f"{out}: the output must be a new file; salvage never writes the damaged log.")
    check_output(out, force=force)
    try:
        opened = Log(damaged, tolerant=True, allow_missing=True, check_length=False)
    except LogReadError as e:
        why = re.sub(r"\s*(Restore a copy; )?`moetape salvage`[^.]*\.", "", str(e)).rstrip(". ")
        raise LogReadError(
            f"{why}. salvage needs the log's root group and attributes: nothing written to {out}; "
            "restore the log from a copy."
        ) from e
    with opened as log:
        n = log.n_steps

        def scanned(done: int) -> None:
            if progress is not None:
                progress(done, 2 * n)

        bad, _problems = _check_data(log, scanned)
        regions = _regions(bad)
        missing, lost = _plan(log, regions)
        keep = np.ones(log.n_steps, dtype=bool)
        for d in lost:
            keep[d.steps[0] : d.steps[1] + 1] = False
        kept = _runs(keep)
        if log.n_steps and not kept:
            raise LogReadError(
                f"{damaged}: not one of its {log.n_steps} committed steps can be read in every field; "
                f"nothing written to {out}. Restore the log from a copy."
            )
        report = _report(log, damaged, out, kept, lost, missing, keep)
        with atomic_output(out, force=force, suffix=".h5") as tmp:
            _write(log, tmp, kept, missing, report, progress)
    return report


def _plan(log: Log, regions: List[Any]) -> Tuple[Dict[str, str], List[Any]]:
    """Split damage into fields missing as a whole (path -> why) and regions whose steps are lost."""
    missing = dict(log.unreadable)
    lost = []
    for path in sorted({d.path for d in regions}):
        mine = [d for d in regions if d.path == path]
        if path.split("/", 1)[-1] in ("step", "substep") and path.startswith("frames/"):
            continue
        if sum(d.steps[1] - d.steps[0] + 1 for d in mine) >= log.n_steps:
            missing[path] = f"every chunk fails ({mine[0].cause})"
        else:
            lost += mine
    for path in REGENERATED:
        missing.pop(path, None)
    return missing, sorted(lost, key=lambda d: (d.steps[0], d.path))


def _runs(mask: np.ndarray) -> List[Tuple[int, int, int]]:
    """Return (first, stop, first new index) of each run of True in ``mask``."""
    runs = []
    new = 0
    i = 0
    n = len(mask)
    while i < n:
        if not mask[i]:
            i += 1
            continue
        j = i
        while j < n and mask[j]:
            j += 1
        runs.append((i, j, new))
        new += j - i
        i = j
    return runs


def _ranges(mask: np.ndarray) -> List[List[int]]:
    return [[a, b - 1] for a, b, _ in _runs(mask)]


def _report(
    log: Log,
    damaged: str,
    out: str,
    kept: List[Tuple[int, int, int]],
    lost: List[Any],
    missing: Dict[str, str],
    keep: np.ndarray,
) -> Dict[str, Any]:
    n_kept = int(keep.sum())
    return {
        "source": os.path.abspath(damaged),
        "output": out,
        "source_log_id": log.log_id,
        "source_run_status": log.run_status,
        "source_n_steps": log.n_steps,
        "n_steps": n_kept,
        "n_envs": log.n_envs,
        "salvaged_utc": utc_now(),
        "kept": [list(r) for r in kept],
        "lost": [
            {
                "dataset": d.path,
                "kind": d.kind,
                "steps": list(d.steps),
                "envs": None if d.envs is None else list(d.envs),
            }
            for d in lost
        ],
        "lost_steps": _ranges(~keep),
        "missing_fields": {
            path: {"reason": why, "steps": [[0, n_kept - 1]] if n_kept else []}
            for path, why in sorted(missing.items())
        },
    }


def _fill(dtype: np.dtype) -> Any:
    if dtype.kind == "f":
        return np.nan
    if dtype.kind == "b":
        return False
    return -1


def _spec(log: Log) -> LogSpec:
    """The salvaged log's spec: the damaged one's, with a float32 scalar for a metric whose header is lost."""
    metrics: Dict[str, Tuple[Tuple[int, ...], str]] = {}
    for m in log.metric_names:
        path = layout.METRICS + "/" + m
        if path in log.unreadable:
            metrics[m] = ((), "float32")  # its shape is lost with its header; recorded as missing
        else:
            ds = log.dataset("metrics/" + m)
            metrics[m] = (tuple(ds.shape[2:]), str(ds.dtype))
    return spec_of(log, metrics)


def _optional(read: Callable[[], Any]) -> Any:
    """The model or trajectory if it can be read, else None (a salvaged log may lack them)."""
    try:
        return read()
    except LogReadError:
        return None


def _write(
    log: Log,
    tmp: str,
    kept: List[Tuple[int, int, int]],
    missing: Dict[str, str],
    report: Dict[str, Any],
    progress: Optional[Callable[[int, int], None]],
) -> None:
    """Append the kept steps to a new log at ``tmp``; missing fields get fill values."""
    spec = _spec(log)
    fps = log.frames_per_step
    shapes = spec.datasets()
    fields = [f for f in log.fields() if log.field_path(f) not in missing and f not in REGENERATED]
    fills = {
        path.split("/", 1)[1]: np.full(
            (fps,) + shapes[path][0] if layout.stream_of(path) else shapes[path][0],
            _fill(np.dtype(shapes[path][1])),
            dtype=shapes[path][1],
        )
        for path in missing
        if path in shapes and path not in REGENERATED
    }
    frame_fills = {k: v for k, v in fills.items() if layout.frame_path(k) in missing}
    step_fills = {k: v for k, v in fills.items() if layout.frame_path(k) not in missing}
    provenance = dict(log.provenance, salvage={k: v for k, v in report.items() if k != "output"})
    traj = _optional(log.trajectory)
    status = log.run_status if log.run_status != layout.STATUS_RUNNING else layout.STATUS_FAILED
    meta = {
        "command_line": log.meta.get("command_line", ""),
        "config": log.config,
        "provenance": provenance,
        "keep_attrs": dict(
            {k: log.meta[k] for k in layout.OPTIONAL_ATTRS if k in log.meta},
            created_utc=log.meta["created_utc"],
        ),
    }
    writer = LogWriter(
        tmp,
        spec,
        meta=meta,
        model_xml=_optional(lambda: log.model_xml),
        trajectory=None if traj is None else (traj["ee_pos"], traj["ee_axis_angle"], traj["dt_s"]),
    )
    step_fields = [f for f in fields if not f.startswith("frames/")]
    frame_fields = [f for f in fields if f.startswith("frames/")]
    try:
        for first, stop, _new in kept:
            for chunk in log.iter_chunks(fields, start=first, stop=stop):
                for i in range(chunk.stop - chunk.start):
                    step = {k: chunk.data[k][i] for k in step_fields}
                    step.update(step_fills)
                    frames = {
                        k.split("/", 1)[1]: chunk.data[k][i * fps : (i + 1) * fps] for k in frame_fields
                    }
                    frames.update(frame_fills)
                    writer.append(step, frames)
                if progress is not None:
                    progress(log.n_steps + chunk.stop, 2 * log.n_steps)
    except BaseException:
        writer.close(layout.STATUS_FAILED)
        raise
    writer.close(status)
