"""The static parts of a log's Rerun recording: geoms, styles, recording properties, the layout.

Used by ``moetape.replay.rerun_export`` (see its docstring for the entity paths); imports rerun.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt
import rerun as rr
import rerun.blueprint as rrb

from moetape.replay import skeleton
from moetape.replay.mjcf import RobotModel
from moetape.schema.reader import Log

AXIS_LENGTH_M = 0.08
GATE_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))
ERROR_SERIES = ("position error (m)", "orientation error (rad)")  # env<e>/error, in this order
CAMERA_OFFSET_M = np.array([0.8, 0.3, 0.3]) * 1.5  # the legacy video camera, as `moetape render` uses
STALE_NOTE = (
    "This log marks stale rows (stale_after_reset: {}): on each new episode's first step they hold the "
    "previous episode's last values. Body poses of such a frame row are shown from the step's next row "
    "(substep logs) or the previous fresh row (policy-rate logs); the EE pose, the EE-to-target line "
    "and the EE errors are left out at those steps."
)


def rgba8(rgba: Sequence[float]) -> List[int]:
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
        colors = np.array([rgba8(g.rgba) for g in gs], dtype=np.uint8)
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


def flat_properties(log: Log) -> Dict[str, str]:
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


def blueprint(
    log: Log,
    env: int,
    *,
    model: bool = True,
    prefix: Optional[str] = None,
    name: str = "robot",
    error: Tuple[str, str] = ("error", "EE error"),
) -> rrb.Blueprint:
    """Return the default layout, close to ``moetape view``: the 3D scene beside gate / entropy / error.

    The 3D camera starts where ``moetape render``'s does (root + [0.8, 0.3, 0.3] * 1.5, looking at
    env ``env``'s root in the first frame). The plots are those under ``prefix`` (default
    ``/env<env>``, whose root body the camera then follows; the per-field layout passes ``/envs``);
    ``error`` is the error plot's entity below ``prefix`` and its title.
    """
    p = prefix or f"/env{env}"
    root = None
    if prefix is None:
        root = f"{p}/robot/{log.body_names[0]}" if model and log.body_names else f"{p}/skeleton"
    eye: Dict[str, Any] = {"tracking_entity": root} if root else {}
    if log.n_frames > 0:
        r0 = np.asarray(log.read("frames/root_pos", 0, 1, env=env)[0], np.float64)
        if np.all(np.isfinite(r0)):
            eye.update(position=r0 + CAMERA_OFFSET_M, look_target=r0, eye_up=[0, 0, 1])
    view3d = (
        rrb.Spatial3DView(origin="/", name=name, eye_controls=rrb.EyeControls3D(**eye))
        if eye
        else rrb.Spatial3DView(origin="/", name=name)
    )
    return rrb.Blueprint(
        rrb.Horizontal(
            view3d,
            rrb.Vertical(
                rrb.TimeSeriesView(origin=f"{p}/gate", name="gate weights"),
                rrb.TimeSeriesView(origin=f"{p}/gate_entropy", name="gate entropy (nat)"),
                rrb.TimeSeriesView(origin=f"{p}/{error[0]}", name=error[1]),
            ),
            column_shares=[3, 2],
        ),
        rrb.BlueprintPanel(state="collapsed"),
        rrb.SelectionPanel(state="collapsed"),
        rrb.TimePanel(state="expanded"),
    )


def send_properties(rec: rr.RecordingStream, log: Log, stale_note: str = "") -> None:
    """Send the recording's name and properties (the provenance), and the stale-rows note if the log has one.

    ``stale_note`` is added to the note (a layout's own words on the stale rows).
    """
    rec.send_recording_name(os.path.basename(log.path))
    rec.send_property("moetape", rr.AnyValues(**flat_properties(log)))  # type: ignore[arg-type]
    if log.stale_after_reset:
        note = STALE_NOTE.format(", ".join(log.stale_after_reset)) + stale_note
        rec.log("notes/stale_after_reset", rr.TextLog(note), static=True)


def send_static(
    rec: rr.RecordingStream,
    log: Log,
    envs: Sequence[int],
    model: Optional[RobotModel],
    drawn_bodies: Sequence[int],
) -> None:
    """Send the recording properties, the geoms, the axes, the markers and the series styles (static).

    Every archetype is built once and sent under each env's path (building is the costly part).
    """
    send_properties(rec, log)
    by_body = model.by_body() if model is not None else {}
    for kind, arch in _geom_batches(by_body.get("", [])).items():
        rec.log(f"world/geoms/{kind}", arch, static=True)
    per_env: List[Any] = []  # (path below env<e>, archetype)
    for i in drawn_bodies:
        name = log.body_names[i]
        per_env += [(f"robot/{name}/{kind}", arch) for kind, arch in _geom_batches(by_body[name]).items()]
    axes = rr.TransformAxes3D(AXIS_LENGTH_M)
    for what, color in (("ee", (0.2, 0.9, 0.2)), ("target", (1.0, 0.85, 0.1))):
        per_env.append((what, axes))
        # a child of the pose: it moves with it, with no rows of its own
        per_env.append(
            (f"{what}/marker", rr.Points3D([[0, 0, 0]], radii=0.012, colors=[rgba8(color + (1.0,))]))
        )
    # styles only (no positions or strips): static data of a component would hide its rows
    per_env += [
        ("ee", rr.LineStrips3D.from_fields(colors=[[255, 216, 26, 255]], radii=0.003)),
        ("future_targets", rr.Points3D.from_fields(colors=[[255, 170, 0, 200]], radii=0.01)),
        (
            "gate",
            rr.SeriesLines(
                names=list(log.expert_names),
                colors=[GATE_COLORS[k % len(GATE_COLORS)] for k in range(len(log.expert_names))],
            ),
        ),
        ("gate_entropy", rr.SeriesLines(names="entropy", colors=[[90, 90, 90]])),
        ("action", rr.SeriesLines(names=log.joint_names)),
        ("error", rr.SeriesLines(names=list(ERROR_SERIES))),
        ("reward", rr.SeriesLines(names=["total"] + list(log.term_names))),
    ]
    if model is None:
        per_env += [
            # the colours and sizes ``moetape render`` draws the skeleton with
            (
                "skeleton",
                rr.Points3D.from_fields(colors=[rgba8(skeleton.BODY_RGBA)], radii=skeleton.SPHERE_RADIUS_M),
            ),
            (
                "skeleton",
                rr.LineStrips3D.from_fields(colors=[rgba8(skeleton.LINK_RGBA)], radii=skeleton.LINK_RADIUS_M),
            ),
        ]
    metrics = [m for m in log.metric_names if log.dataset("metrics/" + m).ndim == 2]
    if metrics:
        per_env.append(("metrics", rr.SeriesLines(names=metrics)))
    for e in envs:
        for path, arch in per_env:
            rec.log(f"env{e}/{path}", arch, static=True)
