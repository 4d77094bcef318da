"""Check a log against the layout: structure, dtypes, shapes, counters, checksums, continuity.

``validate`` collects every problem and returns them all (STYLE §6.3); it raises only when the
file cannot be opened as a moetape log at all.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Optional, Set, Tuple

import numpy as np

from moetape.schema import layout
from moetape.schema.errors import LogError, LogReadError
from moetape.schema.io import H5_ERRORS, read_dataset
from moetape.schema.reader import STREAM_BYTES, Log

GATE_SUM_TOL = 1e-3
MAX_PROBLEMS = 50
ENTROPY_TOL = 1e-3


class Problem(NamedTuple):
    """One thing wrong with a log: where (an HDF5 path or attribute) and what.

    ``damage`` is set for a damaged region of a dataset (see ``Damage.as_dict``), None otherwise.
    """

    where: str
    what: str
    damage: Optional[Dict[str, Any]] = None

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


CHECKSUM = "checksum"
"""A data chunk is where the index says but its bytes fail their fletcher32 checksum."""
STRUCTURE = "structure"
"""HDF5 metadata (object header, chunk index) cannot be read, so the data cannot even be located."""


class BadChunk(NamedTuple):
    """One HDF5 chunk of a dataset that cannot be read."""

    path: str
    rows: Tuple[int, int]
    """[first, last] row of the dataset the chunk holds (committed rows only)."""
    steps: Tuple[int, int]
    """[first, last] policy step those rows belong to."""
    envs: Optional[Tuple[int, int]]
    """[first, last] env the chunk holds; None for a dataset without an env axis."""
    offset: Optional[int]
    size: Optional[int]
    kind: str
    """CHECKSUM or STRUCTURE."""
    cause: str


class Damage(NamedTuple):
    """A damaged region: adjacent unreadable chunks of one dataset (or a whole unreadable dataset)."""

    path: str
    kind: str
    steps: Tuple[int, int]
    envs: Optional[Tuple[int, int]]
    chunks: List[BadChunk]
    cause: str

    def as_dict(self, intact_before: bool) -> Dict[str, Any]:
        return {
            "dataset": self.path,
            "group": self.path.rsplit("/", 1)[0] if "/" in self.path else "",
            "kind": self.kind,
            "steps": list(self.steps),
            "envs": None if self.envs is None else list(self.envs),
            "chunks": [
                {
                    "rows": list(c.rows),
                    "envs": None if c.envs is None else list(c.envs),
                    "offset": c.offset,
                    "size": c.size,
                }
                for c in self.chunks
            ],
            "intact_before": intact_before,
            "cause": self.cause,
        }


def validate(
    path: str,
    *,
    check_data: bool = True,
    progress: Optional[Callable[[int], None]] = None,
    notes: Optional[List[str]] = None,
) -> List[Problem]:
    """Return every problem found in the log at ``path`` (empty list: the log is valid).

    Every damaged region is its own problem (dataset, chunks, steps, envs, checksum or structure,
    whether the committed steps before it are intact): a dataset whose object header cannot be
    read, and each run of adjacent chunks that cannot be read.

    Args:
        check_data: read every committed row (fletcher32 checksums, gate sums, continuity).
        progress: called with the number of steps checked after each chunk.
        notes: if given, receives remarks that are not problems (e.g. a crashed run's torn last chunk).

    Raises:
        LogError: the file cannot be opened as a moetape log at all (see reader.open_log).
    """
    with Log(path, tolerant=True) as log:
        damages = [
            Damage(fp, STRUCTURE, (0, max(0, log.n_steps - 1)), None, [], why)
            for fp, why in sorted(log.unreadable.items())
        ]
        problems = _check_structure(log)
        if check_data and not problems:
            bad, found = _check_data(log, progress)
            problems += found
            damages += _regions(bad)
        problems = _damage_problems(log, damages) + problems
        if notes is not None:
            for ds in sorted(log.recovered):
                notes.append(
                    f"{ds}: the last chunk's checksum does not match (the run was killed while rewriting it); "
                    "its committed rows were read without the checksum"
                )
        return problems


def _check_structure(log: Log) -> List[Problem]:
    """Attributes, dataset presence, dtype, shape, chunking, filters and counters."""
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
    datasets = {log.field_path(name): log.dataset(name) for name in log.fields()}
    metrics = {}
    for name in log.metric_names:
        ds = datasets.get(layout.METRICS + "/" + name)
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
        if path in log.unreadable:
            continue  # a damaged region, reported with the others
        ds = datasets[path]
        if ds.dtype != np.dtype(dtype):
            problems.append(Problem(path, f"dtype {ds.dtype}, expected {dtype}"))
        if tuple(ds.shape[1:]) != shape:
            problems.append(Problem(path, f"row shape {tuple(ds.shape[1:])}, expected {shape}"))
        if ds.chunks is None or ds.maxshape[0] is not None:
            problems.append(Problem(path, f"not a chunked growable dataset (maxshape {ds.maxshape})"))
        if not ds.fletcher32:
            problems.append(Problem(path, "no fletcher32 checksum filter"))
    return problems


CONTINUITY_FIELDS = ("episode", "step_in_episode", "done")


def _salvage_marks(log: Log) -> Tuple[Set[int], Set[str]]:
    """Return a salvaged log's gaps (first step of each kept run after the first) and filled fields.

    ``moetape salvage`` drops the steps of damaged chunks, so episodes do not continue across a gap,
    and writes fill values for a field that was lost whole (see schema/salvage.py).
    """
    try:
        info = log.provenance.get("salvage")
        if not isinstance(info, dict):
            return set(), set()
        gaps = {int(run[2]) for run in info.get("kept", []) if int(run[2]) > 0}
        return gaps, set(info.get("missing_fields", {}))
    except (ValueError, TypeError, IndexError, AttributeError):
        return set(), set()


def _check_data(log: Log, progress: Optional[Callable[[int], None]]) -> Tuple[List[BadChunk], List[Problem]]:
    """Read every committed row: checksums, gate rows sum to 1, entropy, step continuity.

    Each field is read on its own; a range of a field that fails to read is narrowed down to the
    HDF5 chunks that fail, and checking goes on with the next range, so every damaged chunk of
    every dataset is found. Returns (bad chunks, other problems).
    """
    problems: List[Problem] = []
    bad: List[BadChunk] = []
    fields = log.fields()
    fps = log.frames_per_step
    gaps, filled = _salvage_marks(log)
    prev: Optional[dict] = None
    reported: Set[Tuple[str, int, int]] = set()
    per = max(1, STREAM_BYTES // log.step_bytes(fields)) if fields else log.n_steps
    start = 0
    while start < log.n_steps:
        stop = min(log.n_steps, start + per)
        d: Dict[str, Any] = {}
        for name in fields:
            try:
                d[name] = log.read(name, start, stop)
            except LogReadError as e:
                bad += _locate_bad_chunks(log, name, start, stop, reported, e)
        if len(problems) <= MAX_PROBLEMS:
            checked = {k: v for k, v in d.items() if log.field_path(k) not in filled}
            problems += _check_chunk(start, stop, checked, prev, fps, gaps)
        if all(k in d for k in CONTINUITY_FIELDS):
            prev = {k: d[k][-1] for k in CONTINUITY_FIELDS if len(d[k])}
        else:
            prev = None  # continuity cannot be checked across an unreadable range
        if progress is not None:
            progress(stop)
        start = stop
    if len(problems) > MAX_PROBLEMS:
        problems = problems[:MAX_PROBLEMS] + [
            Problem(log.path, f"more than {MAX_PROBLEMS} consistency problems; the rest are not listed")
        ]
    return bad, problems


def _locate_bad_chunks(
    log: Log, name: str, start: int, stop: int, reported: Set[Tuple[str, int, int]], error: LogError
) -> List[BadChunk]:
    """Return the HDF5 chunks of field ``name`` in steps [start, stop) that cannot be read.

    ``reported`` holds the (dataset, first row, first env) of chunks already found by an earlier range.
    """
    ds = log.dataset(name)
    path = ds.name.lstrip("/")
    per_row = log.frames_per_step if layout.stream_of(path) else 1
    n_rows = log.n_frames if layout.stream_of(path) else log.n_steps
    chunks = ds.chunks or ds.shape
    rows = max(1, chunks[0])
    env_step = chunks[1] if ds.ndim > 1 and path not in NO_ENV_AXIS else None
    env_origins = range(0, ds.shape[1], env_step) if env_step else [None]
    found: List[BadChunk] = []
    failed = False
    r_stop = min(stop * per_row, n_rows)
    for r0 in range((start * per_row // rows) * rows, r_stop, rows):
        r1 = min(r0 + rows, n_rows)
        for e0 in env_origins:
            sel: Tuple[Any, ...] = (slice(max(r0, start * per_row), min(r1, r_stop)),)
            if e0 is not None:
                sel += (slice(e0, min(e0 + (env_step or 1), ds.shape[1])),)
            try:
                read_dataset(ds, sel, log.path)
                continue
            except LogReadError as e:
                if _tail_reads(log, name, path, r0, r1, per_row):
                    continue
                cause = str(e)
            failed = True
            key = (path, r0, e0 or 0)
            if key in reported:
                continue
            reported.add(key)
            found.append(_bad_chunk(log, ds, path, r0, r1, e0, env_step, per_row, cause))
    if not failed:  # the range fails but no chunk alone does
        found.append(
            BadChunk(
                path,
                (start * per_row, stop * per_row - 1),
                (start, stop - 1),
                None,
                None,
                None,
                STRUCTURE,
                _cause(str(error)),
            )
        )
    return found


NO_ENV_AXIS = {layout.step_path("t_wall_s"), layout.frame_path("step"), layout.frame_path("substep")}


def _tail_reads(log: Log, name: str, path: str, r0: int, r1: int, per_row: int) -> bool:
    """True if a crashed run's torn last chunk, read without its checksum, holds these rows."""
    if log.ended_cleanly:
        return False
    try:
        log.read(name, r0 // per_row, -(-r1 // per_row))
        return True
    except LogReadError:
        return False


def _bad_chunk(
    log: Log,
    ds: Any,
    path: str,
    r0: int,
    r1: int,
    e0: Optional[int],
    env_step: Optional[int],
    per_row: int,
    cause: str,
) -> BadChunk:
    offset = size = None
    try:
        info = ds.id.get_chunk_info_by_coord(
            (r0,) + ((e0 or 0),) + (0,) * (ds.ndim - 2) if ds.ndim > 1 else (r0,)
        )
        if info.byte_offset is not None:
            offset, size = int(info.byte_offset), int(info.size)
    except H5_ERRORS:
        pass
    text = _cause(cause)
    kind = CHECKSUM if ("filter" in text or "fletcher" in text.lower()) and offset is not None else STRUCTURE
    envs = None if e0 is None else (e0, min(e0 + (env_step or 1), ds.shape[1]) - 1)
    return BadChunk(path, (r0, r1 - 1), (r0 // per_row, (r1 - 1) // per_row), envs, offset, size, kind, text)


def _cause(text: str) -> str:
    if "cannot read data (" in text:
        return text.split("cannot read data (", 1)[1].rsplit(");", 1)[0]
    return text.split(": ", 1)[-1][:200]


def _regions(bad: List[BadChunk]) -> List[Damage]:
    """Merge each dataset's chunks whose steps touch or overlap (and are of one kind) into regions."""
    out: List[Damage] = []
    for c in sorted(bad, key=lambda c: (c.path, c.steps, c.envs or (0, 0))):
        last = out[-1] if out else None
        if (
            last is not None
            and last.path == c.path
            and last.kind == c.kind
            and c.steps[0] <= last.steps[1] + 1
        ):
            envs = _union(last.envs, c.envs)
            out[-1] = last._replace(
                steps=(last.steps[0], max(last.steps[1], c.steps[1])), envs=envs, chunks=last.chunks + [c]
            )
        else:
            out.append(Damage(c.path, c.kind, c.steps, c.envs, [c], c.cause))
    return out


def _union(a: Optional[Tuple[int, int]], b: Optional[Tuple[int, int]]) -> Optional[Tuple[int, int]]:
    if a is None or b is None:
        return None
    return (min(a[0], b[0]), max(a[1], b[1]))


def _damage_problems(log: Log, damages: List[Damage]) -> List[Problem]:
    """Turn damaged regions into problems, each saying whether the steps before it are intact."""
    first = min((d.steps[0] for d in damages), default=None)
    out = []
    for d in sorted(damages, key=lambda d: (d.steps[0], d.path)):
        intact = first is None or d.steps[0] <= first
        out.append(Problem(d.path, _damage_text(log, d, intact), d.as_dict(intact)))
    return out


def _damage_text(log: Log, d: Damage, intact_before: bool) -> str:
    """Say what a damaged region holds, what kind of damage it is, and what can still be done."""
    s0, s1 = d.steps
    envs = (
        "all envs"
        if d.envs is None
        else (f"env {d.envs[0]}" if d.envs[0] == d.envs[1] else f"envs {d.envs[0]}-{d.envs[1]}")
    )
    if not d.chunks:
        what = f"the whole dataset is unreadable, steps {s0}-{s1}, {envs} ({d.cause}; structure: its object header cannot be read)"
    else:
        rows = f"rows {d.chunks[0].rows[0]}-{d.chunks[-1].rows[1]}"
        at = [f"{c.size} bytes at file offset {c.offset}" for c in d.chunks if c.offset is not None]
        n = len(d.chunks)
        place = f"HDF5 chunk of {rows}" if n == 1 else f"{n} HDF5 chunks, {rows}"
        kind = (
            "checksum: the data fails its fletcher32 checksum"
            if d.kind == CHECKSUM
            else "structure: the chunk index or object header cannot be read"
        )
        what = (
            f"checksum or read failure in steps {s0}-{s1} ({place}, {envs}"
            + (f", {'; '.join(at[:3])}{', ...' if len(at) > 3 else ''}" if at else "")
            + f"; {d.cause}; {kind})"
        )
    if s0 == 0:
        before = "it starts at the first step"
    elif intact_before:
        before = f"the committed steps before {s0} are intact in every field"
    else:
        before = f"steps before {s0} are damaged too (listed above)"
    return (
        f"{what}; {before}. Those rows are lost in this file: restore the log from a copy, or "
        "`moetape salvage LOG OUT` writes every readable step and field to a new log. Commands that "
        "read other fields, or other steps (`moetape stats --steps A:B`), still work"
    )


def _check_chunk(
    start: int, stop: int, d: Dict[str, Any], prev: Optional[dict], fps: int, gaps: Optional[Set[int]] = None
) -> List[Problem]:
    """Gate sums, entropy, frame counters and episode continuity of the fields read for [start, stop)."""
    problems: List[Problem] = []
    n = stop - start
    if "gate" in d:
        gate = d["gate"].astype(np.float64)
        bad = np.abs(gate.sum(axis=-1) - 1.0) > GATE_SUM_TOL
        if bad.any():
            s, e = np.argwhere(bad)[0]
            problems.append(
                Problem(
                    "steps/gate",
                    f"step {start + s} env {e}: weights sum to {gate[s, e].sum():.4f}, expected 1",
                )
            )
        if "gate_entropy" in d:
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
    if "frames/step" in d and not np.array_equal(d["frames/step"], rows // fps):
        problems.append(Problem("frames/step", f"not continuous from step {start}"))
    if "frames/substep" in d and not np.array_equal(d["frames/substep"], rows % fps):
        problems.append(Problem("frames/substep", f"not 0..{fps - 1} per step from step {start}"))
    if not all(k in d for k in CONTINUITY_FIELDS):
        return problems
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
    for g in gaps or ():  # a salvaged log's kept runs: the step after a gap follows nothing
        if 0 <= g - offset - 1 < len(bad):
            bad[g - offset - 1] = False
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
