"""A log as a Rerun recording: the robot in 3D, the targets, and the gate on the same timelines.

``export_rerun`` writes an .rrd file; ``moetape.replay.rerun_view`` streams the same recording to
Rerun's viewers. This module, ``rerun_scene`` (the static parts) and ``rerun_view`` are the only
modules of moetape that import rerun (rerun-sdk, the ``rerun`` extra).

Entity paths (``e`` = env index; every env under its own path):
    world/geoms/<kind>              static: geoms of <worldbody> itself (the floor)
    env<e>/robot/<body>             Transform3D per frame row: the body's world pose (frames/body_*)
    env<e>/robot/<body>/<kind>      static: the body's geoms from the stored MJCF, one batch per kind
                                    (Boxes3D, Capsules3D, Cylinders3D, Ellipsoids3D; sphere = Ellipsoids3D)
    env<e>/skeleton/bodies, links   logs without a model: Points3D + LineStrips3D per frame row,
                                    parents as ``moetape render`` infers them (replay/skeleton.py)
    env<e>/ee, env<e>/target        Transform3D per step (+ static axes, and a static marker point
                                    at ee/marker, target/marker that moves with the pose)
    env<e>/ee_to_target             LineStrips3D per step
    env<e>/future_targets           Points3D per frame row: frames/target_future_pos (8 poses)
    env<e>/gate/<expert>            Scalars per step: gate weight
    env<e>/gate_entropy             Scalars per step (natural log)
    env<e>/action                   Scalars per step, one series per joint (joint_names)
    env<e>/reward/total             Scalars per step; env<e>/terms/<name>, env<e>/metrics/<name> too
    env<e>/error/ee_pos_m           |target_pos - ee_pos| per step, m
    env<e>/error/ee_rot_rad         angle between target and EE orientation per step, rad
    env<e>/episode/id               Scalars per step: the episode counter
    env<e>/episode/events           TextLog at each step where an episode ended (done; "timeout" noted)
Timelines: ``step`` (policy step, sequence) and ``sim_time`` (simulated seconds: step * policy_dt_s;
a frame row's own time (step * decimation + substep) * sim_dt_s). The recording's wall-clock start
is the property ``created_utc``. Recording properties ``moetape``: log id, command line, versions,
run status, checkpoint / trajectory / model hashes and the whole provenance JSON.

Speed: the log is read in chunks of about ``EXPORT_CHUNK_BYTES`` of the selected envs (memory stays
bounded whatever the log's length); each chunk goes out as one ``send_columns`` call per entity,
its Arrow columns built straight from the numpy arrays (no per-row Python), the timelines built
once per chunk and shared by every env. Reading the next chunk overlaps with Rerun encoding and
writing the previous one.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import rerun as rr

from moetape.replay import skeleton
from moetape.replay.mjcf import RobotModel, parse_mjcf
from moetape.replay.rerun_scene import blueprint, send_static
from moetape.schema.errors import InputError
from moetape.schema.io import atomic_output, resolve_output
from moetape.schema.reader import Chunk, Log, open_log

APP_ID = "moetape"
RRD_NAME = "recording.rrd"
EXPORT_CHUNK_BYTES = 32 << 20  # log bytes (of the selected envs) read and sent per chunk

EnvArg = Union[None, int, str, Sequence[int]]
StepsArg = Optional[Tuple[Optional[int], Optional[int]]]
Progress = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------- selection
def select_envs(log: Log, env: EnvArg) -> List[int]:
    """Return the env indices ``env`` names: None or "all" = every env, an int or "3", or a list.

    Raises:
        InputError: an env the log does not have, or a value that is neither "all" nor an integer.
    """
    if env is None or (isinstance(env, str) and env.strip().lower() == "all"):
        return list(range(log.n_envs))
    if isinstance(env, str):
        try:
            env = int(env)
        except ValueError:
            raise InputError(f"--env {env!r}: expected an env index (0-{log.n_envs - 1}) or 'all'.") from None
    envs = [int(env)] if isinstance(env, (int, np.integer)) else [int(e) for e in env]
    bad = [e for e in envs if not 0 <= e < log.n_envs]
    if bad:
        raise InputError(
            f"{log.path}: --env {bad[0]} out of range; the log has {log.n_envs} env(s) (0-{log.n_envs - 1})."
        )
    return envs


def select_steps(log: Log, steps: StepsArg) -> Tuple[int, int]:
    """Return the policy steps [start, stop) of ``steps`` ((A, B), either None), checked against the log."""
    from moetape.replay.export import select

    sel = select(log, steps, None)
    return sel.start, sel.stop


# ---------------------------------------------------------------------------------------- columns
_TEMPLATES: Dict[str, Tuple[Any, pa.DataType]] = {}


def _template(component: str) -> Tuple[Any, pa.DataType]:
    """Return (descriptor, Arrow type of the column) of a component, as Rerun's own archetypes build it."""
    if not _TEMPLATES:
        v3 = np.zeros((1, 3), np.float32)
        for cols in (
            rr.Transform3D.columns(translation=v3, quaternion=np.array([[0, 0, 0, 1]], np.float32)),
            rr.Scalars.columns(scalars=np.zeros(1)),
            rr.Points3D.columns(positions=v3),
            rr.LineStrips3D.columns(strips=[np.zeros((2, 3), np.float32)]),
        ):
            for c in cols:
                d = c.component_descriptor()
                _TEMPLATES[d.component] = (d, c.as_arrow_array().type)
    return _TEMPLATES[component]


class ArrowColumn:
    """A component column for ``send_columns`` whose Arrow array is already built."""

    __slots__ = ("array", "descriptor")

    def __init__(self, descriptor: Any, array: pa.Array) -> None:
        self.descriptor, self.array = descriptor, array

    def component_descriptor(self) -> Any:
        """The component's descriptor (archetype, component, component type)."""
        return self.descriptor

    def as_arrow_array(self) -> pa.Array:
        """The column: one list per row."""
        return self.array


def _offsets(rows: int, per_row: int) -> pa.Array:
    return pa.array(np.arange(0, rows * per_row + 1, per_row, dtype=np.int32))


def _vectors(values: npt.NDArray[Any], typ: pa.DataType) -> pa.Array:
    """Flat float32 vectors of ``typ`` (a fixed-size list type) from an array (..., n)."""
    flat = np.ascontiguousarray(values, np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), type=typ)


class Columns:
    """One component's column for many entities at once: block b (``rows`` rows) = one entity's column.

    The Arrow array is built once from a numpy array whose leading axes are the blocks; each
    entity's column is a zero-copy slice of it.
    """

    __slots__ = ("array", "descriptor", "rows")

    def __init__(self, descriptor: Any, array: pa.Array, rows: int) -> None:
        self.descriptor, self.array, self.rows = descriptor, array, rows

    def __getitem__(self, block: int) -> ArrowColumn:
        return ArrowColumn(self.descriptor, self.array.slice(block * self.rows, self.rows))

    @classmethod
    def vectors(cls, component: str, values: npt.NDArray[Any], per_row: int = 1) -> Columns:
        """Vectors (blocks..., rows, [per_row,] n): ``per_row`` vectors a row (Points3D, Transform3D)."""
        desc, typ = _template(component)
        n_rows = values.size // (values.shape[-1] * per_row)
        inner = _vectors(values, typ.value_type)
        lead = values.shape[: values.ndim - (2 if per_row == 1 else 3)]
        return cls(
            desc,
            pa.ListArray.from_arrays(_offsets(n_rows, per_row), inner, type=typ),
            n_rows // max(1, int(np.prod(lead))),
        )

    @classmethod
    def scalars(cls, values: npt.NDArray[Any], per_row: int = 1) -> Columns:
        """Scalars (blocks..., rows[, per_row]): ``per_row`` series a row."""
        desc, typ = _template("Scalars:scalars")
        flat = np.ascontiguousarray(values, np.float64).reshape(-1)
        n_rows = flat.size // per_row
        lead = values.shape[: values.ndim - (1 if per_row == 1 else 2)]
        arr = pa.ListArray.from_arrays(_offsets(n_rows, per_row), pa.array(flat), type=typ)
        return cls(desc, arr, n_rows // max(1, int(np.prod(lead))))

    @classmethod
    def strips(cls, values: npt.NDArray[Any]) -> Columns:
        """LineStrips3D (blocks..., rows, strips, points, 3)."""
        desc, typ = _template("LineStrips3D:strips")
        strips, points = values.shape[-3:-1]
        n_strips = values.size // (points * 3)
        strip_typ = typ.value_type
        inner = pa.ListArray.from_arrays(
            _offsets(n_strips, points), _vectors(values, strip_typ.value_type), type=strip_typ
        )
        n_rows = n_strips // strips
        lead = values.shape[:-4]
        return cls(
            desc,
            pa.ListArray.from_arrays(_offsets(n_rows, strips), inner, type=typ),
            n_rows // max(1, int(np.prod(lead))),
        )


def _env_major(a: npt.NDArray[Any], dtype: Any = None) -> npt.NDArray[Any]:
    """(rows, envs, ...) -> a contiguous (envs, rows, ...) copy, so each env's rows are one block."""
    return np.ascontiguousarray(np.swapaxes(a, 0, 1), dtype=dtype)


def pos_error(ee: npt.NDArray[np.float32], target: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Return |target - ee| per row, m: float64 (n,)."""
    return np.linalg.norm(np.asarray(target, np.float64) - np.asarray(ee, np.float64), axis=-1)


def rot_error(q_ee: npt.NDArray[np.float32], q_target: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Return the rotation angle between two orientations (x, y, z, w) per row, rad in [0, pi]."""
    a = np.asarray(q_ee, np.float64)
    b = np.asarray(q_target, np.float64)
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    dot = np.abs(np.sum(a * b, axis=-1)) / np.maximum(na * nb, 1e-12)
    return 2.0 * np.arccos(np.clip(dot, 0.0, 1.0))


# ---------------------------------------------------------------------------------------- the writer
class RecordingWriter:
    """Send a log's static parts, then chunks of steps, to a RecordingStream (any sink)."""

    def __init__(self, rec: rr.RecordingStream, log: Log, envs: Sequence[int]) -> None:
        self.rec, self.log, self.envs = rec, log, list(envs)
        xml = log.model_xml
        self.model: Optional[RobotModel] = parse_mjcf(xml, where=f"{log.path}: model/mjcf") if xml else None
        names = log.body_names
        self.drawn_bodies: List[int] = []
        self.unmatched_bodies: List[str] = []
        if self.model is not None:
            by_body = self.model.by_body()
            self.drawn_bodies = [i for i, n in enumerate(names) if n in by_body]
            self.unmatched_bodies = sorted(b for b in by_body if b and b not in names)
        self.parents: Optional[List[int]] = None
        self.scalar_metrics = [m for m in log.metric_names if log.dataset("metrics/" + m).ndim == 2]

    @property
    def mode(self) -> str:
        return "model" if self.model is not None else "skeleton"

    def fields(self) -> List[str]:
        """Return the log fields a chunk must hold."""
        f = [
            "gate",
            "gate_entropy",
            "action",
            "reward",
            "done",
            "timeout",
            "episode",
            "ee_pos",
            "ee_quat_xyzw",
            "target_pos",
            "target_quat_xyzw",
            "frames/step",
            "frames/substep",
            "frames/body_pos",
            "frames/body_quat_xyzw",
            "frames/target_future_pos",
        ]
        return f + ["terms/" + t for t in self.log.term_names] + ["metrics/" + m for m in self.scalar_metrics]

    def send_static(self) -> None:
        """Send the recording properties, the geoms, the axes and the series styles (static)."""
        send_static(self.rec, self.log, self.envs, self.model, self.drawn_bodies)

    def send_chunk(self, chunk: Chunk) -> None:
        """Send policy steps [chunk.start, chunk.stop) of every selected env (chunk read with those envs)."""
        d, log = chunk.data, self.log
        if chunk.stop <= chunk.start:
            return
        steps = np.arange(chunk.start, chunk.stop, dtype=np.int64)
        idx = [
            rr.TimeColumn("step", sequence=steps),
            rr.TimeColumn("sim_time", duration=steps * log.policy_dt_s),
        ]
        fstep = np.asarray(d["frames/step"], np.int64)
        fsub = np.asarray(d["frames/substep"], np.int64)
        fidx = [
            rr.TimeColumn("step", sequence=fstep),
            rr.TimeColumn("sim_time", duration=(fstep * log.decimation + fsub) * log.sim_dt_s),
        ]
        # every field's column for all envs at once (env-major); each env's column is a slice of it
        em = _env_major
        scalars = {
            "gate_entropy": Columns.scalars(em(d["gate_entropy"])),
            "action": Columns.scalars(em(d["action"]), per_row=d["action"].shape[-1]),
            "reward/total": Columns.scalars(em(d["reward"])),
            "error/ee_pos_m": Columns.scalars(em(pos_error(d["ee_pos"], d["target_pos"]))),
            "error/ee_rot_rad": Columns.scalars(em(rot_error(d["ee_quat_xyzw"], d["target_quat_xyzw"]))),
            "episode/id": Columns.scalars(em(d["episode"])),
        }
        for t in log.term_names:
            scalars["terms/" + t] = Columns.scalars(em(d["terms/" + t]))
        for m in self.scalar_metrics:
            scalars["metrics/" + m] = Columns.scalars(em(d["metrics/" + m]))
        n_exp = d["gate"].shape[-1]
        gate = Columns.scalars(np.transpose(d["gate"], (1, 2, 0)))  # blocks (env, expert)
        ee_pos, target_pos = em(d["ee_pos"], np.float32), em(d["target_pos"], np.float32)
        poses = {
            what: (
                Columns.vectors("Transform3D:translation", pos),
                Columns.vectors("Transform3D:quaternion", em(d[f"{what}_quat_xyzw"])),
            )
            for what, pos in (("ee", ee_pos), ("target", target_pos))
        }
        seg = Columns.strips(np.stack([ee_pos, target_pos], axis=2)[:, :, None])  # (env, step, 1, 2, 3)
        fut = Columns.vectors(
            "Points3D:positions",
            em(d["frames/target_future_pos"]),
            per_row=d["frames/target_future_pos"].shape[2],
        )
        n_bodies = d["frames/body_pos"].shape[2]
        if self.model is not None:  # blocks (env, body)
            body_t = Columns.vectors(
                "Transform3D:translation", np.transpose(d["frames/body_pos"], (1, 2, 0, 3))
            )
            body_q = Columns.vectors(
                "Transform3D:quaternion", np.transpose(d["frames/body_quat_xyzw"], (1, 2, 0, 3))
            )
        else:
            skel = self._skeleton_columns(em(d["frames/body_pos"]))
        done = np.asarray(d["done"], bool)
        send = self.rec.send_columns
        for col, e in enumerate(self.envs):  # the chunk's env axis holds exactly self.envs, in order
            p = f"env{e}"
            if self.model is not None:
                for i in self.drawn_bodies:
                    b = col * n_bodies + i
                    send(f"{p}/robot/{log.body_names[i]}", indexes=fidx, columns=[body_t[b], body_q[b]])
            else:
                for path, c in skel.items():
                    send(f"{p}/skeleton/{path}", indexes=fidx, columns=[c[col]])
            send(f"{p}/future_targets", indexes=fidx, columns=[fut[col]])
            for what, (tr, q) in poses.items():
                send(f"{p}/{what}", indexes=idx, columns=[tr[col], q[col]])
            send(f"{p}/ee_to_target", indexes=idx, columns=[seg[col]])
            for k, name in enumerate(log.expert_names):
                send(f"{p}/gate/{name}", indexes=idx, columns=[gate[col * n_exp + k]])
            for path, c in scalars.items():
                send(f"{p}/{path}", indexes=idx, columns=[c[col]])
            ended = np.flatnonzero(done[:, col])
            if len(ended):
                texts = [
                    "episode {} ended{}".format(
                        int(d["episode"][i, col]), " (timeout)" if d["timeout"][i, col] else ""
                    )
                    for i in ended
                ]
                sub = [
                    rr.TimeColumn("step", sequence=steps[ended]),
                    rr.TimeColumn("sim_time", duration=steps[ended] * log.policy_dt_s),
                ]
                send(f"{p}/episode/events", indexes=sub, columns=rr.TextLog.columns(text=texts))

    def _skeleton_columns(self, bpos: npt.NDArray[np.float32]) -> Dict[str, Columns]:
        """Bodies (env, rows, bodies, 3) as points a row, and the links to their parents as strips."""
        if self.parents is None:
            self.parents = skeleton.infer_parents(self.log.body_names, bpos[0, 0])
        out = {"bodies": Columns.vectors("Points3D:positions", bpos, per_row=bpos.shape[2])}
        links = [(par, i) for i, par in enumerate(self.parents) if par >= 0]
        if links:  # (env, rows, links, 2, 3)
            seg = np.stack([bpos[:, :, [a for a, _ in links]], bpos[:, :, [c for _, c in links]]], axis=3)
            out["links"] = Columns.strips(seg)
        return out


# ---------------------------------------------------------------------------------------- export
def new_recording(log: Log, *, suffix: str = "") -> rr.RecordingStream:
    """Return a RecordingStream for ``log`` (application "moetape", recording id = the log id)."""
    return rr.RecordingStream(APP_ID, recording_id=log.log_id + suffix)


def _env_selection(envs: Sequence[int]) -> Any:
    """The reader's env selection for ``envs``: a slice when contiguous (reads only those envs)."""
    if list(envs) == list(range(envs[0], envs[-1] + 1)):
        return slice(envs[0], envs[-1] + 1)
    return list(envs)


def chunk_steps_for(log: Log, fields: Sequence[str], n_envs: int, budget: int = EXPORT_CHUNK_BYTES) -> int:
    """Return the policy steps per chunk so that a chunk of ``n_envs`` envs holds about ``budget`` bytes."""
    per_step = log.step_bytes(fields) * max(1, n_envs) / max(1, log.n_envs)
    return max(1, int(budget // max(1.0, per_step)))


def stream_steps(
    writer: RecordingWriter,
    start: int,
    stop: Optional[int],
    *,
    progress: Optional[Progress] = None,
    follow: bool = False,
    chunk_steps: Optional[int] = None,
    poll_s: float = 0.25,
) -> int:
    """Send steps [start, stop) in chunks (``follow``: until the run ends); return the last step sent + 1.

    Each chunk is read while Rerun still encodes the one before; the stream is flushed before the
    next chunk goes out, so at most one chunk waits in Rerun's queue (memory stays bounded).
    """
    log = writer.log
    fields = writer.fields()
    sel = _env_selection(writer.envs)
    per = chunk_steps or chunk_steps_for(log, fields, len(writer.envs))
    chunks = (
        log.follow(fields, start=start, env=sel, poll_s=poll_s)
        if follow
        else log.iter_chunks(fields, start=start, stop=stop, env=sel, chunk_steps=per)
    )
    done = start
    total = (stop if stop is not None else log.n_steps) - start
    for chunk in chunks:
        writer.rec.flush()
        writer.send_chunk(chunk)
        done = chunk.stop
        if progress is not None:
            progress(done - start, max(total, done - start))
    writer.rec.flush()
    return done


def export_rerun(
    log_path: str,
    out: str,
    *,
    env: EnvArg = None,
    steps: StepsArg = None,
    force: bool = False,
    progress: Optional[Progress] = None,
    chunk_steps: Optional[int] = None,
) -> Dict[str, Any]:
    """Write a log (or some envs / steps of it) as a Rerun recording (.rrd), streaming.

    Args:
        env: None or "all" = every env, else one env index (or a list).
        steps: (A, B) policy steps, either None; default all committed steps.
        progress: called with (steps done, steps total).
        chunk_steps: policy steps per chunk; default about ``EXPORT_CHUNK_BYTES`` of log data.

    Returns:
        {"path", "envs", "steps": [start, stop], "n_steps", "mode" ("model" | "skeleton"),
        "run_status", "recovered" (datasets whose torn last chunk was read), "unmatched_bodies",
        "skipped_geoms", "bytes"}.

    Raises:
        InputError: env or steps out of range. OutputExistsError: ``out`` exists without ``force``.
        LogFormatError / LogReadError / NewerFormatError: see ``open_log``.
    """
    with open_log(log_path) as log:
        envs = select_envs(log, env)
        start, stop = select_steps(log, steps)
        path = resolve_output(out, RRD_NAME)
        writer: Optional[RecordingWriter] = None
        with atomic_output(path, force=force, suffix=".rrd") as tmp:
            rec = new_recording(log)
            writer = RecordingWriter(rec, log, envs)
            rec.save(tmp, default_blueprint=blueprint(log, envs[0], model=writer.model is not None))
            writer.send_static()
            stream_steps(writer, start, stop, progress=progress, chunk_steps=chunk_steps)
            rec.disconnect()
        return {
            "path": path,
            "envs": envs,
            "steps": [start, stop],
            "n_steps": stop - start,
            "mode": writer.mode,
            "run_status": log.run_status,
            "recovered": sorted(log.recovered),
            "unmatched_bodies": writer.unmatched_bodies,
            "skipped_geoms": dict(writer.model.skipped) if writer.model is not None else {},
            "bytes": os.path.getsize(path),
        }
