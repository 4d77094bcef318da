"""A log as a Rerun recording: the robot in 3D, the targets, and the gate on the same timelines.

``export_rerun`` writes an .rrd file; ``moetape.replay.rerun_view`` streams the same recording to
Rerun's viewers. This module, ``rerun_fields`` (the per-field layout), ``rerun_columns`` (Arrow
columns from numpy), ``rerun_scene`` (the static parts) and ``rerun_view`` are the only modules of
moetape that import rerun (rerun-sdk, the ``rerun`` extra).

Entity paths of the default layout, per-env (``e`` = env index; every env under its own path; the
per-field layout, ``--layout per-field``, is in ``rerun_fields``):
    world/geoms/<kind>              static: geoms of <worldbody> itself (the floor)
    env<e>/robot/<body>             Transform3D per frame row: the body's world pose (frames/body_*)
    env<e>/robot/<body>/<kind>      static: the body's geoms from the stored MJCF, one batch per kind
                                    (Boxes3D, Capsules3D, Cylinders3D, Ellipsoids3D; sphere = Ellipsoids3D)
    env<e>/skeleton                 logs without a model, per frame row: Points3D (the bodies) and
                                    LineStrips3D (links to the parents ``moetape render`` infers,
                                    replay/skeleton.py) on one entity
    env<e>/ee, env<e>/target        Transform3D per step (+ static axes, and a static marker point
                                    at ee/marker, target/marker that moves with the pose); env<e>/ee
                                    also holds the line from the EE to the target (LineStrips3D, in
                                    the EE's own frame: (0, 0, 0) to R_ee^T (target_pos - ee_pos))
    env<e>/future_targets           Points3D per frame row: frames/target_future_pos (8 poses)
    env<e>/gate                     Scalars per step, one series per expert (expert_names): gate weight
    env<e>/gate_entropy             Scalars per step (natural log)
    env<e>/action                   Scalars per step, one series per joint (joint_names)
    env<e>/reward                   Scalars per step: the total, then one series per term (term_names)
    env<e>/metrics                  Scalars per step, one series per scalar metric (if the log has any)
    env<e>/error                    Scalars per step: |target_pos - ee_pos| (m), then the angle
                                    between target and EE orientation (rad)
    env<e>/episode/events           TextLog at each step where an episode ended (done; "timeout" noted)
    notes/stale_after_reset         static TextLog, logs that mark stale rows (see below)
Timelines: ``step`` (policy step, sequence) and ``sim_time`` (simulated seconds: step * policy_dt_s;
a frame row's own time (step * decimation + substep) * sim_dt_s). The recording's wall-clock start
is the property ``created_utc``. Recording properties ``moetape``: log id, command line, versions,
run status, checkpoint / trajectory / model hashes and the whole provenance JSON.

Several series of one kind share an entity (one row per step carries them all): Rerun's cost is
mostly per row and entity, so this keeps an all-envs export of many envs affordable.
Speed: the log is read in chunks of about ``EXPORT_CHUNK_BYTES`` of the selected envs (memory stays
bounded whatever the log's length); each chunk goes out as one ``send_columns`` call per entity,
its Arrow columns built straight from the numpy arrays (no per-row Python; every env's column is
a zero-copy slice of one array built for all envs), the timelines built once per chunk and shared
by every env. Reading the next chunk overlaps with Rerun encoding and writing the previous one.
Stale rows after a reset (the log's optional ``stale_after_reset``, Isaac Gym; see
``moetape.schema.layout``): on a new episode's first step, frame row 0's body poses and the step's
EE pose hold the previous episode's last values. Such a row's body poses are sent from the row
``moetape render`` draws instead (``schema.reader.fresh_rows``: the step's row 1 on substep logs,
the previous fresh row on policy-rate logs); the EE pose, the EE-to-target line and both EE errors
are left out at those steps (no row: a gap in the series), and one static note says so.
The .rrd has no footer (see ``save_without_footer``): Rerun's footer keeps an entry per chunk in
memory until the end.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union, cast

import numpy as np
import numpy.typing as npt
import rerun as rr

from moetape.replay import skeleton
from moetape.replay.mjcf import RobotModel, parse_mjcf
from moetape.replay.poses import pos_error, rot_error, rotate_inverse
from moetape.replay.rerun_columns import Columns, FreshBodies, env_major
from moetape.replay.rerun_scene import blueprint, send_static
from moetape.schema.errors import InputError
from moetape.schema.io import atomic_output, resolve_output
from moetape.schema.layout import stale_rule
from moetape.schema.reader import Chunk, Log, open_log

APP_ID = "moetape"
RRD_NAME = "recording.rrd"
EXPORT_CHUNK_BYTES = 32 << 20  # log bytes (of the selected envs) read and sent per chunk
STALE_SENT = ("steps/ee_pos", "steps/ee_quat_xyzw", "frames/body_pos", "frames/body_quat_xyzw")

LAYOUTS = ("per-env", "per-field")
EnvArg = Union[None, int, str, Sequence[int]]
StepsArg = Optional[Tuple[Optional[int], Optional[int]]]
Progress = Callable[[int, int], None]
Send = Tuple[str, List[Any], Any]  # entity path, timelines, columns: one send_columns call


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


# ---------------------------------------------------------------------------------------- the writer
class RecordingWriter:
    """Send a log's static parts, then chunks of steps, to a RecordingStream (any sink): the per-env layout."""

    layout = "per-env"

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
        declared = log.stale_after_reset
        self.stale_bodies = [f for f in STALE_SENT[2:] if f in declared]
        self.stale_ee = any(f in declared for f in STALE_SENT[:2])
        self.ee_left_out = 0  # env-steps whose EE pose and errors were not sent (stale)
        self.fresh_bodies = FreshBodies(log, self.envs, self.stale_bodies, _env_selection(self.envs))

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
        if set(self.log.stale_after_reset) & set(STALE_SENT):  # the rows stale_rule needs
            f.append("step_in_episode")
        return f + ["terms/" + t for t in self.log.term_names] + ["metrics/" + m for m in self.scalar_metrics]

    def blueprint(self) -> Any:
        """The default layout: env ``envs[0]``'s 3D scene beside its gate / entropy / error plots."""
        return blueprint(self.log, self.envs[0], model=self.model is not None)

    def send_static(self) -> None:
        """Send the recording properties, the geoms, the axes and the series styles (static)."""
        send_static(self.rec, self.log, self.envs, self.model, self.drawn_bodies)

    def send_chunk(self, chunk: Chunk) -> None:
        """Send policy steps [chunk.start, chunk.stop) of every selected env (chunk read with those envs)."""
        self.send(self.columns(chunk))

    def send(self, sends: List[Send]) -> None:
        """Send what ``columns`` built: one ``send_columns`` call per entity."""
        send = self.rec.send_columns
        for path, indexes, columns in sends:
            send(path, indexes=indexes, columns=columns)

    def columns(self, chunk: Chunk) -> List[Send]:
        """Return (entity path, timelines, columns) of every entity the layout sends for a chunk."""
        if chunk.stop <= chunk.start:
            return []
        return self.layout_columns(chunk.data, *self.chunk_rows(chunk))

    def chunk_rows(
        self, chunk: Chunk
    ) -> Tuple[npt.NDArray[np.int64], List[Any], List[Any], Any, Dict[str, Any]]:
        """Return a chunk's steps, their timelines, its frame rows' timelines, its stale mask and body poses.

        The stale mask (steps, envs) is None when the log declares no stale rows; the body poses
        (``frames/body_pos``, ``frames/body_quat_xyzw``) have each stale row replaced by its fresh row.
        """
        d, log = chunk.data, self.log
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
        stale = stale_rule(d["episode"], d["step_in_episode"]) if "step_in_episode" in d else None
        return steps, idx, fidx, stale, self.fresh_bodies(chunk.start, d, stale)

    def layout_columns(
        self,
        d: Dict[str, Any],
        steps: npt.NDArray[np.int64],
        idx: List[Any],
        fidx: List[Any],
        stale: Any,
        bodies: Dict[str, Any],
    ) -> List[Send]:
        """The per-env layout's sends for a chunk's data ``d`` and ``chunk_rows``: every entity of every env."""
        log = self.log
        out: List[Send] = []
        # every field's column for all envs at once (env-major); each env's column is a slice of it
        em = env_major
        keep = ~em(stale) if stale is not None and self.stale_ee and stale.any() else None
        ee_idx = [idx] * len(self.envs)
        if keep is not None:  # stale EE rows left out: each env's block holds its kept rows
            self.ee_left_out += int(keep.size - keep.sum())
            ee_idx = [
                idx
                if keep[col].all()
                else [
                    rr.TimeColumn("step", sequence=steps[keep[col]]),
                    rr.TimeColumn("sim_time", duration=steps[keep[col]] * log.policy_dt_s),
                ]
                for col in range(len(self.envs))
            ]

        def ee_rows(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
            return values if keep is None else values[keep]

        def ee_cols(c: Columns) -> Columns:
            return c if keep is None else c.blocks(keep.sum(axis=1))

        def series(fields: Sequence[str]) -> Columns:  # one entity, one series per field: (env, steps, k)
            return Columns.scalars(em(np.stack([d[f] for f in fields], axis=-1)), batch=True)

        scalars = {
            "gate": Columns.scalars(em(d["gate"]), batch=True),
            "gate_entropy": Columns.scalars(em(d["gate_entropy"])),
            "action": Columns.scalars(em(d["action"]), batch=True),
            "reward": series(["reward"] + ["terms/" + t for t in log.term_names]),
        }
        if self.scalar_metrics:
            scalars["metrics"] = series(["metrics/" + m for m in self.scalar_metrics])
        ee_pos, target_pos = em(d["ee_pos"], np.float32), em(d["target_pos"], np.float32)
        ee_quat = em(d["ee_quat_xyzw"])
        errors = np.stack(
            [pos_error(ee_pos, target_pos), rot_error(ee_quat, em(d["target_quat_xyzw"]))], axis=-1
        )
        error = ee_cols(Columns.scalars(ee_rows(errors), batch=True))
        # the EE entity: its pose, and the line to the target in the EE's own frame (one row per step)
        to_target = rotate_inverse(ee_quat, target_pos - ee_pos)
        seg = np.stack([np.zeros_like(to_target), to_target], axis=-2)[
            ..., None, :, :
        ]  # (env, step, 1, 2, 3)
        ee = (
            ee_cols(Columns.vectors("Transform3D:translation", ee_rows(ee_pos))),
            ee_cols(Columns.vectors("Transform3D:quaternion", ee_rows(ee_quat))),
            ee_cols(Columns.strips(ee_rows(seg))),
        )
        target_pose = (
            Columns.vectors("Transform3D:translation", target_pos),
            Columns.vectors("Transform3D:quaternion", em(d["target_quat_xyzw"])),
        )
        fut = Columns.vectors(
            "Points3D:positions",
            em(d["frames/target_future_pos"]),
            batch=True,
        )
        n_bodies = bodies["frames/body_pos"].shape[2]
        if self.model is not None:  # blocks (env, body)
            body_t = Columns.vectors(
                "Transform3D:translation", np.transpose(bodies["frames/body_pos"], (1, 2, 0, 3))
            )
            body_q = Columns.vectors(
                "Transform3D:quaternion", np.transpose(bodies["frames/body_quat_xyzw"], (1, 2, 0, 3))
            )
        else:
            skel = self._skeleton_columns(em(bodies["frames/body_pos"]))
        done = np.asarray(d["done"], bool)
        for col, e in enumerate(self.envs):  # the chunk's env axis holds exactly self.envs, in order
            p = f"env{e}"
            if self.model is not None:
                for i in self.drawn_bodies:
                    b = col * n_bodies + i
                    out.append((f"{p}/robot/{log.body_names[i]}", fidx, [body_t[b], body_q[b]]))
            else:
                out.append((f"{p}/skeleton", fidx, [c[col] for c in skel]))
            out.append((f"{p}/future_targets", fidx, [fut[col]]))
            out.append((f"{p}/target", idx, [target_pose[0][col], target_pose[1][col]]))
            if keep is None or keep[col].any():
                ei = ee_idx[col]
                out.append((f"{p}/ee", ei, [c[col] for c in ee]))
                out.append((f"{p}/error", ei, [error[col]]))
            for path, c in scalars.items():
                out.append((f"{p}/{path}", idx, [c[col]]))
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
                out.append((f"{p}/episode/events", sub, rr.TextLog.columns(text=texts)))
        return out

    def _skeleton_columns(self, bpos: npt.NDArray[np.float32]) -> List[Columns]:
        """Bodies (env, rows, bodies, 3) as points a row, and the links to their parents as strips."""
        if self.parents is None:
            self.parents = skeleton.infer_parents(self.log.body_names, bpos[0, 0])
        out = [Columns.vectors("Points3D:positions", bpos, batch=True)]
        links = [(par, i) for i, par in enumerate(self.parents) if par >= 0]
        if links:  # (env, rows, links, 2, 3)
            seg = np.stack([bpos[:, :, [a for a, _ in links]], bpos[:, :, [c for _, c in links]]], axis=3)
            out.append(Columns.strips(seg))
        return out


# ---------------------------------------------------------------------------------------- export
def writer_for(layout: str) -> Type[RecordingWriter]:
    """Return the writer class of a layout name ("per-env" or "per-field").

    Raises:
        InputError: another name.
    """
    if layout == "per-env":
        return RecordingWriter
    if layout == "per-field":
        from moetape.replay.rerun_fields import FieldsWriter

        # a RecordingWriter subclass; cast: mypy, run on the source folders, sees this module under
        # two names (replay.rerun_export, and moetape.replay.rerun_export through the import)
        return cast(Type[RecordingWriter], FieldsWriter)
    raise InputError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}.")


def new_recording(log: Log, *, suffix: str = "") -> rr.RecordingStream:
    """Return a RecordingStream for ``log`` (application "moetape", recording id = the log id)."""
    return rr.RecordingStream(APP_ID, recording_id=log.log_id + suffix)


def save_without_footer(rec: rr.RecordingStream, path: str, default_blueprint: Any) -> None:
    """Stream ``rec`` to the file ``path``, without Rerun's footer (the chunk manifest).

    With the footer, Rerun keeps a manifest entry for every chunk sent until the end, so memory
    would grow with the log's length (a few KB per entity and chunk of steps); without it memory
    stays bounded. The file is a valid .rrd that Rerun's viewers open as usual (``rerun rrd verify``
    reports the missing footer; ``rerun rrd optimize FILE -o OUT`` writes a copy with one). Rerun
    warns about the missing footer on stderr, from its native code, once, while the sink is
    created: that line is not shown (file descriptor 2 points to /dev/null for the call).
    """
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        rec.save(path, default_blueprint=default_blueprint, write_footer=False)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


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

    Each chunk is read and converted while Rerun still encodes the chunk before; the stream is
    flushed before the chunk goes out, so at most one chunk waits in Rerun's queue and memory holds
    about two chunks whatever the log's length.
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
        sends = writer.columns(chunk)  # read and converted while Rerun still encodes the chunk before
        writer.rec.flush()  # that chunk is written: at most one waits in Rerun's queue
        writer.send(sends)
        del sends
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
    layout: str = "per-env",
) -> Dict[str, Any]:
    """Write a log (or some envs / steps of it) as a Rerun recording (.rrd), streaming.

    Args:
        env: None or "all" = every env, else one env index (or a list).
        steps: (A, B) policy steps, either None; default all committed steps.
        progress: called with (steps done, steps total).
        chunk_steps: policy steps per chunk; default about ``EXPORT_CHUNK_BYTES`` of log data.
        layout: "per-env" (every env under env<e>/, see the module docstring) or "per-field" (each
            field one entity holding every env: ``moetape.replay.rerun_fields``).

    Returns:
        {"path", "envs", "steps": [start, stop], "n_steps", "mode" ("model" | "skeleton"),
        "layout", "run_status", "recovered" (datasets whose torn last chunk was read), "unmatched_bodies",
        "skipped_geoms", "stale_after_reset" ({"fields", "ee_env_steps_left_out",
        "body_rows_replaced"}: see the module docstring), "bytes"}.

    Raises:
        InputError: env or steps out of range, an unknown layout. OutputExistsError: ``out`` exists without ``force``.
        LogFormatError / LogReadError / NewerFormatError: see ``open_log``.
    """
    writer_class = writer_for(layout)
    with open_log(log_path) as log:
        envs = select_envs(log, env)
        start, stop = select_steps(log, steps)
        path = resolve_output(out, RRD_NAME)
        writer: Optional[RecordingWriter] = None
        with atomic_output(path, force=force, suffix=".rrd") as tmp:
            rec = new_recording(log)
            writer = writer_class(rec, log, envs)
            save_without_footer(rec, tmp, writer.blueprint())
            writer.send_static()
            stream_steps(writer, start, stop, progress=progress, chunk_steps=chunk_steps)
            rec.disconnect()
        return {
            "path": path,
            "envs": envs,
            "steps": [start, stop],
            "n_steps": stop - start,
            "mode": writer.mode,
            "layout": writer.layout,
            "run_status": log.run_status,
            "recovered": sorted(log.recovered),
            "unmatched_bodies": writer.unmatched_bodies,
            "skipped_geoms": dict(writer.model.skipped) if writer.model is not None else {},
            "stale_after_reset": {
                "fields": log.stale_after_reset,
                "ee_env_steps_left_out": writer.ee_left_out,
                "body_rows_replaced": writer.fresh_bodies.rows_replaced,
            },
            "bytes": os.path.getsize(path),
        }
