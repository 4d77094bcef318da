"""A log as a Rerun recording: the robot in 3D, the targets, and the gate on the same timelines.

The only module of moetape that imports rerun (rerun-sdk, the ``rerun`` extra). ``export_rerun``
writes an .rrd file; ``view_rerun`` streams the same recording to Rerun's native viewer or to its web
viewer served on localhost, optionally following a log that is still being recorded.

Entity paths (``e`` = env index; every env under its own path):
    world/geoms/<kind>              static: geoms of <worldbody> itself (the floor)
    env<e>/robot/<body>             Transform3D per frame row: the body's world pose (frames/body_*)
    env<e>/robot/<body>/<kind>      static: the body's geoms from the stored MJCF, one batch per kind
                                    (Boxes3D, Capsules3D, Cylinders3D, Ellipsoids3D; sphere = Ellipsoids3D)
    env<e>/skeleton/bodies, links   logs without a model: Points3D + LineStrips3D per frame row,
                                    parents as ``moetape render`` infers them (replay/skeleton.py)
    env<e>/ee, env<e>/target        Transform3D per step (+ static axes): EE and target pose
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
Timelines: ``step`` (policy step, sequence), ``sim_time`` (simulated seconds: step * policy_dt_s; a
frame row's own time (step * decimation + substep) * sim_dt_s), ``wall_time`` (steps only:
created_utc + t_wall_s). Recording properties ``moetape``: log id, command line, versions, run
status, checkpoint / trajectory / model hashes and the whole provenance JSON.

Data goes out in columns (``send_columns``), one call per entity per chunk of steps read from the
log, so memory stays bounded by the reader's chunk size.

Usage data: Rerun's viewer collects anonymous usage data unless it is turned off. Every viewer and
server started here runs with ``viewer_env()``: Rerun's documented switch, ``rerun analytics
disable``, applied to a Rerun config folder of moetape's own (XDG_CONFIG_HOME), plus
``RERUN_ANALYTICS=0`` (the variable newer Rerun releases document). The servers bind 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt
import rerun as rr
import rerun.blueprint as rrb

from moetape.replay import skeleton
from moetape.replay.mjcf import RobotModel, parse_mjcf
from moetape.schema.errors import InputError, LogError
from moetape.schema.io import atomic_output, resolve_output
from moetape.schema.reader import Chunk, Log, open_log

APP_ID = "moetape"
RRD_NAME = "recording.rrd"
AXIS_LENGTH_M = 0.08
POS_ERR_TERM = "task_reaching_pos_err"
GATE_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))
EXPORT_CHUNK_STEPS = 2048
HOST = "127.0.0.1"

EnvArg = Union[None, int, str, Sequence[int]]
StepsArg = Optional[Tuple[Optional[int], Optional[int]]]
Progress = Callable[[int, int], None]


class RerunError(LogError, RuntimeError):
    """Rerun's viewer or server could not be started or stopped working."""


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


# ---------------------------------------------------------------------------------------- static parts
def _rgba8(rgba: Sequence[float]) -> List[int]:
    return [int(round(255 * min(1.0, max(0.0, float(c))))) for c in rgba]


def _geom_batches(geoms: Sequence[Any]) -> Dict[str, Any]:
    """Return one Rerun archetype per geom kind for the geoms of one body (in the body frame)."""
    out: Dict[str, Any] = {}
    kinds: Dict[str, List[Any]] = {}
    for g in geoms:
        kinds.setdefault(g.kind, []).append(g)
    for kind, gs in kinds.items():
        pos = np.array([g.pos for g in gs], dtype=np.float32)
        quat = np.array([g.quat_xyzw for g in gs], dtype=np.float32)
        size = np.array([g.size for g in gs], dtype=np.float32)
        colors = np.array([_rgba8(g.rgba) for g in gs], dtype=np.uint8)
        if kind == "box":
            out[kind] = rr.Boxes3D(
                half_sizes=size, centers=pos, quaternions=quat, colors=colors, fill_mode="solid"
            )
        elif kind == "plane":  # infinite planes (size 0) are left to the 3D view's own ground grid
            half = size.copy()
            half[:, 2] = 0.0005
            out[kind] = rr.Boxes3D(
                half_sizes=half, centers=pos, quaternions=quat, colors=colors, fill_mode="solid"
            )
        elif kind in ("sphere", "ellipsoid"):
            half = np.repeat(size[:, :1], 3, axis=1) if kind == "sphere" else size
            out[kind] = rr.Ellipsoids3D(
                half_sizes=half, centers=pos, quaternions=quat, colors=colors, fill_mode="solid"
            )
        elif kind == "cylinder":
            out[kind] = rr.Cylinders3D(
                lengths=2 * size[:, 1],
                radii=size[:, 0],
                centers=pos,
                quaternions=quat,
                colors=colors,
                fill_mode="solid",
            )
        elif kind == "capsule":
            # Rerun's capsule starts at its translation and runs along +z; MuJoCo's is centred.
            start = np.array(
                [g.pos - _rotate_xyzw(g.quat_xyzw, np.array([0.0, 0.0, g.size[1]])) for g in gs],
                dtype=np.float32,
            )
            out[kind] = rr.Capsules3D(
                lengths=2 * size[:, 1],
                radii=size[:, 0],
                translations=start,
                quaternions=quat,
                colors=colors,
                fill_mode="solid",
            )
    return out


def _rotate_xyzw(q: npt.ArrayLike, v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return skeleton.quat_xyzw_to_mat(q) @ v


def _flat_properties(log: Log) -> Dict[str, str]:
    """Return the recording properties: provenance flattened to dotted keys, values as text."""
    prov = log.provenance
    out = {
        "log_id": log.log_id,
        "log_path": os.path.abspath(log.path),
        "format_version": str(log.format_version),
        "moetape_version": str(log.meta.get("moetape_version", "")),
        "command_line": str(log.meta.get("command_line", "")),
        "created_utc": str(log.meta.get("created_utc", "")),
        "run_status": log.run_status,
        "backend": str(log.meta.get("backend", "")),
        "experts": ", ".join(log.expert_names),
        "provenance_json": json.dumps(prov, sort_keys=True),
    }

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out["provenance." + prefix] = value if isinstance(value, str) else json.dumps(value)

    walk("", prov)
    return out


def _created_epoch_s(log: Log) -> Optional[float]:
    text = str(log.meta.get("created_utc", "") or "")
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


CAMERA_OFFSET_M = np.array([0.8, 0.3, 0.3]) * 1.5  # the legacy video camera, as `moetape render` uses


def blueprint(log: Log, env: int, *, model: bool = True) -> rrb.Blueprint:
    """Return the default layout, close to ``moetape view``: the 3D scene beside gate / entropy / error.

    The 3D camera starts where ``moetape render``'s does (root + [0.8, 0.3, 0.3] * 1.5, looking at the
    root in the first frame) and follows the root body.
    """
    p = f"/env{env}"
    root = f"{p}/robot/{log.body_names[0]}" if model and log.body_names else f"{p}/skeleton/bodies"
    eye = rrb.EyeControls3D(tracking_entity=root)
    if log.n_frames > 0:
        r0 = np.asarray(log.read("frames/root_pos", 0, 1, env=env)[0], np.float64)
        if np.all(np.isfinite(r0)):
            eye = rrb.EyeControls3D(
                position=r0 + CAMERA_OFFSET_M, look_target=r0, eye_up=[0, 0, 1], tracking_entity=root
            )
    return rrb.Blueprint(
        rrb.Horizontal(
            rrb.Spatial3DView(origin="/", name="robot", eye_controls=eye),
            rrb.Vertical(
                rrb.TimeSeriesView(origin=f"{p}/gate", name="gate weights"),
                rrb.TimeSeriesView(origin=f"{p}/gate_entropy", name="gate entropy (nat)"),
                rrb.TimeSeriesView(origin=f"{p}/error", name="EE error"),
            ),
            column_shares=[3, 2],
        ),
        rrb.BlueprintPanel(state="collapsed"),
        rrb.SelectionPanel(state="collapsed"),
        rrb.TimePanel(state="expanded"),
    )


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
        self.created_s = _created_epoch_s(log)

    @property
    def mode(self) -> str:
        return "model" if self.model is not None else "skeleton"

    def fields(self) -> List[str]:
        """Return the log fields a chunk must hold."""
        f = [
            "t_wall_s",
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
        rec, log = self.rec, self.log
        rec.send_recording_name(os.path.basename(log.path))
        rec.send_property("moetape", rr.AnyValues(**_flat_properties(log)))
        if self.model is not None:
            by_body = self.model.by_body()
            for kind, arch in _geom_batches(by_body.get("", [])).items():
                rec.log(f"world/geoms/{kind}", arch, static=True)
        for e in self.envs:
            p = f"env{e}"
            if self.model is not None:
                for i in self.drawn_bodies:
                    name = log.body_names[i]
                    for kind, arch in _geom_batches(by_body[name]).items():
                        rec.log(f"{p}/robot/{name}/{kind}", arch, static=True)
            for what, color in (("ee", (0.2, 0.9, 0.2)), ("target", (1.0, 0.85, 0.1))):
                rec.log(f"{p}/{what}", rr.TransformAxes3D(AXIS_LENGTH_M), static=True)
                rec.log(
                    f"{p}/{what}_marker",
                    rr.Points3D([[0, 0, 0]], radii=0.012, colors=[_rgba8(color + (1.0,))]),
                    static=True,
                )
            rec.log(
                f"{p}/ee_to_target",
                rr.LineStrips3D([], colors=[[255, 216, 26, 255]], radii=0.003),
                static=True,
            )
            rec.log(
                f"{p}/future_targets",
                rr.Points3D(np.zeros((0, 3)), colors=[[255, 170, 0, 200]], radii=0.01),
                static=True,
            )
            for k, name in enumerate(log.expert_names):
                rec.log(
                    f"{p}/gate/{name}",
                    rr.SeriesLines(names=name, colors=[GATE_COLORS[k % len(GATE_COLORS)]]),
                    static=True,
                )
            rec.log(f"{p}/gate_entropy", rr.SeriesLines(names="entropy", colors=[[90, 90, 90]]), static=True)
            rec.log(f"{p}/action", rr.SeriesLines(names=log.joint_names), static=True)
            rec.log(f"{p}/error/ee_pos_m", rr.SeriesLines(names="position error (m)"), static=True)
            rec.log(f"{p}/error/ee_rot_rad", rr.SeriesLines(names="orientation error (rad)"), static=True)

    def send_chunk(self, chunk: Chunk) -> None:
        """Send policy steps [chunk.start, chunk.stop) of every selected env (chunk read with all envs or a slice)."""
        d = chunk.data
        n = chunk.stop - chunk.start
        if n <= 0:
            return
        steps = np.arange(chunk.start, chunk.stop, dtype=np.int64)
        wall = None if self.created_s is None else self.created_s + np.asarray(d["t_wall_s"], np.float64)
        step_idx = self._step_index(steps, wall)
        fstep = np.asarray(d["frames/step"], np.int64)
        fsub = np.asarray(d["frames/substep"], np.int64)
        frame_idx = [
            rr.TimeColumn("step", sequence=fstep),
            rr.TimeColumn("sim_time", duration=(fstep * self.log.decimation + fsub) * self.log.sim_dt_s),
        ]
        per_row = ("t_wall_s", "frames/step", "frames/substep")
        for col, e in enumerate(self.envs):  # the chunk's env axis holds exactly self.envs, in order
            env_data = {k: v if k in per_row else v[:, col] for k, v in d.items()}
            self._send_env(e, env_data, steps, wall, step_idx, frame_idx)

    def _step_index(self, steps: npt.NDArray[np.int64], wall: Optional[npt.NDArray[np.float64]]) -> List[Any]:
        idx = [
            rr.TimeColumn("step", sequence=steps),
            rr.TimeColumn("sim_time", duration=steps * self.log.policy_dt_s),
        ]
        if wall is not None:
            idx.append(rr.TimeColumn("wall_time", timestamp=wall))
        return idx

    def _send_env(
        self,
        e: int,
        d: Dict[str, np.ndarray],
        steps: npt.NDArray[np.int64],
        wall: Optional[npt.NDArray[np.float64]],
        idx: List[Any],
        fidx: List[Any],
    ) -> None:
        rec, log, p = self.rec, self.log, f"env{e}"
        send = rec.send_columns
        # the robot
        bpos, bquat = d["frames/body_pos"], d["frames/body_quat_xyzw"]
        if self.model is not None:
            for i in self.drawn_bodies:
                send(
                    f"{p}/robot/{log.body_names[i]}",
                    indexes=fidx,
                    columns=rr.Transform3D.columns(translation=bpos[:, i], quaternion=bquat[:, i]),
                )
        else:
            self._send_skeleton(p, bpos, fidx)
        rows = len(bpos)
        fut = d["frames/target_future_pos"]
        send(
            f"{p}/future_targets",
            indexes=fidx,
            columns=rr.Points3D.columns(positions=fut.reshape(-1, 3)).partition(
                lengths=[fut.shape[1]] * rows
            ),
        )
        # poses of the step
        for what in ("ee", "target"):
            cols = rr.Transform3D.columns(translation=d[f"{what}_pos"], quaternion=d[f"{what}_quat_xyzw"])
            send(f"{p}/{what}", indexes=idx, columns=cols)
            send(
                f"{p}/{what}_marker",
                indexes=idx,
                columns=rr.Transform3D.columns(translation=d[f"{what}_pos"]),
            )
        seg = np.stack([d["ee_pos"], d["target_pos"]], axis=1)
        send(f"{p}/ee_to_target", indexes=idx, columns=rr.LineStrips3D.columns(strips=list(seg)))
        # time series
        gate = d["gate"]
        for k, name in enumerate(log.expert_names):
            send(f"{p}/gate/{name}", indexes=idx, columns=rr.Scalars.columns(scalars=gate[:, k]))
        send(f"{p}/gate_entropy", indexes=idx, columns=rr.Scalars.columns(scalars=d["gate_entropy"]))
        send(f"{p}/action", indexes=idx, columns=rr.Scalars.columns(scalars=d["action"]))
        send(f"{p}/reward/total", indexes=idx, columns=rr.Scalars.columns(scalars=d["reward"]))
        for t in log.term_names:
            send(f"{p}/terms/{t}", indexes=idx, columns=rr.Scalars.columns(scalars=d["terms/" + t]))
        for m in self.scalar_metrics:
            send(
                f"{p}/metrics/{m}",
                indexes=idx,
                columns=rr.Scalars.columns(scalars=d["metrics/" + m].astype(np.float64)),
            )
        send(
            f"{p}/error/ee_pos_m",
            indexes=idx,
            columns=rr.Scalars.columns(scalars=pos_error(d["ee_pos"], d["target_pos"])),
        )
        send(
            f"{p}/error/ee_rot_rad",
            indexes=idx,
            columns=rr.Scalars.columns(scalars=rot_error(d["ee_quat_xyzw"], d["target_quat_xyzw"])),
        )
        # episodes
        send(
            f"{p}/episode/id",
            indexes=idx,
            columns=rr.Scalars.columns(scalars=d["episode"].astype(np.float64)),
        )
        ended = np.flatnonzero(d["done"])
        if len(ended):
            texts = [
                "episode {} ended{}".format(int(d["episode"][i]), " (timeout)" if d["timeout"][i] else "")
                for i in ended
            ]
            sub = self._step_index(steps[ended], None if wall is None else wall[ended])
            send(f"{p}/episode/events", indexes=sub, columns=rr.TextLog.columns(text=texts))

    def _send_skeleton(self, p: str, bpos: npt.NDArray[np.float32], fidx: List[Any]) -> None:
        if self.parents is None:
            self.parents = skeleton.infer_parents(self.log.body_names, bpos[0])
        rows, b = bpos.shape[:2]
        self.rec.send_columns(
            f"{p}/skeleton/bodies",
            indexes=fidx,
            columns=rr.Points3D.columns(positions=bpos.reshape(-1, 3)).partition(lengths=[b] * rows),
        )
        links = [(par, i) for i, par in enumerate(self.parents) if par >= 0]
        if links:
            seg = np.stack(
                [bpos[:, [a for a, _ in links]], bpos[:, [c for _, c in links]]], axis=2
            )  # (rows, L, 2, 3)
            self.rec.send_columns(
                f"{p}/skeleton/links",
                indexes=fidx,
                columns=rr.LineStrips3D.columns(strips=list(seg.reshape(-1, 2, 3))).partition(
                    lengths=[len(links)] * rows
                ),
            )


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


# ---------------------------------------------------------------------------------------- export
def new_recording(log: Log, *, suffix: str = "") -> rr.RecordingStream:
    """Return a RecordingStream for ``log`` (application "moetape", recording id = the log id)."""
    return rr.RecordingStream(APP_ID, recording_id=log.log_id + suffix)


def _env_selection(envs: Sequence[int]) -> Any:
    """The reader's env selection for ``envs``: a slice when contiguous (reads only those envs)."""
    if list(envs) == list(range(envs[0], envs[-1] + 1)):
        return slice(envs[0], envs[-1] + 1)
    return list(envs)


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
    """Send steps [start, stop) in chunks (``follow``: until the run ends); return the last step sent + 1."""
    log = writer.log
    fields = writer.fields()
    sel = _env_selection(writer.envs)
    per = chunk_steps or max(
        1,
        min(EXPORT_CHUNK_STEPS, (8 << 20) // log.step_bytes(fields) * log.n_envs // max(1, len(writer.envs))),
    )
    chunks = (
        log.follow(fields, start=start, env=sel, poll_s=poll_s)
        if follow
        else log.iter_chunks(fields, start=start, stop=stop, env=sel, chunk_steps=per)
    )
    done = start
    total = (stop if stop is not None else log.n_steps) - start
    for chunk in chunks:
        writer.send_chunk(chunk)
        writer.rec.flush()
        done = chunk.stop
        if progress is not None:
            progress(done - start, max(total, done - start))
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
            rec.flush()
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


# ---------------------------------------------------------------------------------------- viewers
def rerun_executable() -> str:
    """Return the path of the ``rerun`` binary that rerun-sdk ships (package ``rerun_cli``)."""
    override = os.environ.get("RERUN_CLI_PATH")
    if override:
        return override
    import rerun_cli

    folder = os.path.dirname(os.path.abspath(rerun_cli.__file__))
    bundled = os.path.join(folder, "Rerun.app", "Contents", "MacOS", "Rerun")
    exe = bundled if sys.platform == "darwin" and os.path.exists(bundled) else os.path.join(folder, "rerun")
    if sys.platform.startswith("win"):
        exe += ".exe"
    if not os.path.exists(exe):
        raise RerunError(
            f"rerun-sdk is installed but its viewer binary is missing ({exe}); reinstall: pip install 'moetape[rerun]'"
        )
    return exe


def rerun_config_home() -> str:
    """Return the XDG_CONFIG_HOME moetape gives the Rerun processes it starts (their analytics.json)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "moetape", "rerun-config")


def _analytics_off(config_home: str) -> bool:
    try:
        with open(os.path.join(config_home, "rerun", "analytics.json"), encoding="utf-8") as f:
            return json.load(f).get("analytics_enabled") is False
    except (OSError, ValueError):
        return False


def viewer_env(base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Return the environment for a Rerun viewer or server with its usage data collection off.

    Rerun's documented switch is ``rerun analytics disable``, which writes analytics.json in Rerun's
    config folder; it is run once against a config folder of moetape's own (XDG_CONFIG_HOME below
    ``rerun_config_home()``), so the user's own Rerun settings stay as they are. ``RERUN_ANALYTICS=0``
    is set too, the variable newer Rerun releases document.

    Raises:
        RerunError: the switch could not be applied.
    """
    env = dict(os.environ if base is None else base)
    home = rerun_config_home()
    env["XDG_CONFIG_HOME"] = home
    env["RERUN_ANALYTICS"] = "0"
    if not _analytics_off(home):
        os.makedirs(home, exist_ok=True)
        try:
            subprocess.run(
                [rerun_executable(), "analytics", "disable"],
                env=env,
                capture_output=True,
                timeout=120,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise RerunError(
                f"could not run `rerun analytics disable` ({e}); the viewer was not started."
            ) from e
        if not _analytics_off(home):
            raise RerunError(
                f"`rerun analytics disable` did not turn off Rerun's usage data in {home}; the viewer was not "
                "started. Run `rerun analytics disable` yourself and retry."
            )
    return env


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _wait_listening(proc: subprocess.Popen, port: int, log_file: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RerunError(f"the Rerun server exited with status {proc.returncode}: {_tail(log_file)}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RerunError(
        f"the Rerun server did not listen on {HOST}:{port} within {timeout_s:.0f} s: {_tail(log_file)}"
    )


def _tail(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return "(no output)"
    return lines[-1][-300:] if lines else "(no output)"


def web_url(web_port: int, grpc_port: int) -> str:
    """Return the address that opens the web viewer on the recording the gRPC server holds."""
    return f"http://{HOST}:{web_port}/?url=rerun%2Bhttp%3A%2F%2F{HOST}%3A{grpc_port}%2Fproxy"


def check_display(environ: Optional[Dict[str, str]] = None) -> None:
    """Raise RerunError when the native viewer cannot open a window (Linux without a display)."""
    env = os.environ if environ is None else environ
    if sys.platform.startswith("linux") and not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")):
        raise RerunError(
            "--rerun opens a window but there is no display (DISPLAY / WAYLAND_DISPLAY unset); "
            "use --web to serve the viewer to a browser, or `moetape export rerun` and open the .rrd elsewhere."
        )


def start_server(
    *, web: bool, port: Optional[int], log_file: str
) -> Tuple[subprocess.Popen, int, Optional[int]]:
    """Start Rerun's native viewer (``web`` False) or its web viewer server on 127.0.0.1.

    Returns:
        (process, gRPC port, web viewer port or None).
    """
    env = viewer_env()
    grpc = free_port()
    args = [rerun_executable(), "--bind", HOST, "--port", str(grpc)]
    web_port = None
    if web:
        web_port = free_port() if port is None else int(port)
        args += ["--serve-web", "--web-viewer-port", str(web_port)]
    else:
        args += ["--expect-data-soon"]
    out = open(log_file, "ab")  # noqa: SIM115 - owned by the process below
    try:
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    except OSError as e:
        raise RerunError(f"could not start the Rerun viewer ({e}).") from e
    finally:
        out.close()
    try:
        _wait_listening(proc, grpc, log_file)
        if web_port is not None:
            _wait_listening(proc, web_port, log_file)
    except BaseException:
        stop_process(proc)
        raise
    return proc, grpc, web_port


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """End a process we started: SIGTERM, then SIGKILL if it does not exit in ``timeout_s``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def view_rerun(
    log_path: str,
    *,
    env: EnvArg = None,
    web: bool = False,
    port: Optional[int] = None,
    follow: bool = False,
    on_ready: Optional[Callable[[Dict[str, Any]], None]] = None,
    progress: Optional[Progress] = None,
    wait: bool = True,
) -> Dict[str, Any]:
    """Open Rerun's native viewer, or serve its web viewer on 127.0.0.1, and stream a log into it.

    ``on_ready`` gets {"url" (web only), "grpc_url", "pid"} once the viewer listens, before any step
    is sent. With ``follow``, steps are sent as they are committed until the run ends. With ``wait``
    the call returns when the viewer exits (native: the window is closed; web: Ctrl-C or SIGTERM).
    """
    if not web:
        check_display()
    with open_log(log_path) as log:
        envs = select_envs(log, env)
        if port is not None and not 0 < int(port) < 65536:
            raise InputError(f"--port {port}: expected a TCP port from 1 to 65535.")
        log_file = os.path.join(rerun_config_home(), "server.log")
        os.makedirs(os.path.dirname(log_file), exist_ok=True)
        restore = _sigterm_as_interrupt()
        proc = None
        rec: Optional[rr.RecordingStream] = None
        try:
            proc, grpc, web_port = start_server(web=web, port=port, log_file=log_file)
            grpc_url = f"rerun+http://{HOST}:{grpc}/proxy"
            info: Dict[str, Any] = {
                "grpc_url": grpc_url,
                "pid": proc.pid,
                "envs": envs,
                "mode": "web" if web else "native",
            }
            if web_port is not None:
                info["url"] = web_url(web_port, grpc)
            rec = new_recording(log)
            writer = RecordingWriter(rec, log, envs)
            rec.connect_grpc(
                grpc_url, default_blueprint=blueprint(log, envs[0], model=writer.model is not None)
            )
            if on_ready is not None:
                on_ready(info)
            writer.send_static()
            info["steps_sent"] = stream_steps(writer, 0, None, progress=progress, follow=follow)
            rec.flush()
            info["run_status"] = log.run_status
            if wait:
                while proc.poll() is None:
                    time.sleep(0.2)
            return info
        except KeyboardInterrupt:
            return {"interrupted": True}
        finally:
            if rec is not None and proc is not None and proc.poll() is None:
                rec.disconnect()
            if proc is not None:
                stop_process(proc)
            restore()


def _sigterm_as_interrupt() -> Callable[[], None]:
    """Make SIGTERM raise KeyboardInterrupt (so the viewer we started is stopped); return the undo."""
    try:
        old = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    except ValueError:  # not the main thread
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, old)
