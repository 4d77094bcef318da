"""The per-field layout of a Rerun recording: each field one entity, every env in it (``--layout per-field``).

``moetape export rerun`` puts every env under its own path by default (``rerun_export``): with many
envs that is many entities, and Rerun's cost is mostly per row and entity (each row carries a row
id and both timelines), so an all-envs export of 64 envs sends ~11 rows per env-step. This layout
sends one row per field and step for all envs, the envs being the row's instances: one series per
env in each plot (named env<e>), one box (or point, or set of points) per env in 3D. It is the
overview of a whole run, lighter than the per-env layout: the EE and target poses are boxes (centre
and quaternion, as stored) rather than axes, and the EE-to-target line is left out. The robot is
drawn as the skeleton of its recorded bodies whether or not the log stores a model (Rerun's
transforms are one per entity, so the per-env layout is the one that poses a model's geoms).

Entity paths (the envs are the instances, in the order exported; series named env<e>):
    envs/skeleton                   per frame row: Points3D (every env's bodies) and LineStrips3D
                                    (every env's links to the parents ``moetape render`` infers)
    envs/future_targets             Points3D per frame row: every env's 8 future targets
    envs/target, envs/ee            Boxes3D per step: one box per env, centred on the target (EE)
                                    position and turned by its orientation (the stored quaternion,
                                    x, y, z, w); its half sizes (static) are longest along x
    envs/gate/<expert>              Scalars per step, one series per env: gate weight
    envs/gate_entropy               Scalars per step (natural log)
    envs/action/<joint>             Scalars per step
    envs/reward/total, envs/reward/<term>, envs/metrics/<name>
    envs/error/ee_pos_m             |target_pos - ee_pos| per step, m
    envs/error/ee_rot_rad           angle between target and EE orientation per step, rad
    envs/episode/events             TextLog at each step where an episode of some env ended
Timelines, properties and stale rows after a reset as in ``rerun_export``, except that a stale EE
row cannot be left out of one env alone: its EE box and both errors are NaN there (not drawn, a
gap in the series).
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np
import numpy.typing as npt
import rerun as rr
import rerun.blueprint as rrb

from moetape.replay import skeleton
from moetape.replay.overlay import GATE_COLORS
from moetape.replay.poses import pos_error, rot_error
from moetape.replay.rerun_columns import Columns
from moetape.replay.rerun_export import RecordingWriter, Send
from moetape.replay.rerun_scene import blueprint, rgba8, send_properties
from moetape.schema.reader import Log

PREFIX = "envs"
POSE_BOX_HALF_M = np.array([0.04, 0.015, 0.008], np.float32)  # EE and target markers
PALETTE = GATE_COLORS  # one colour per env series, cycled (matplotlib's tab10)


def scalar_paths(log: Log, metrics: Sequence[str]) -> List[str]:
    """Return the scalar entities (below envs/) of a log, in the order they are sent."""
    return (
        [f"gate/{n}" for n in log.expert_names]
        + ["gate_entropy"]
        + [f"action/{j}" for j in log.joint_names]
        + ["reward/total"]
        + [f"reward/{t}" for t in log.term_names]
        + [f"metrics/{m}" for m in metrics]
        + ["error/ee_pos_m", "error/ee_rot_rad"]
    )


class FieldsWriter(RecordingWriter):
    """A ``RecordingWriter`` for the per-field layout (see the module docstring)."""

    layout = "per-field"

    def __init__(self, rec: rr.RecordingStream, log: Log, envs: Sequence[int]) -> None:
        super().__init__(rec, log, envs)
        self.model = None  # the skeleton, whether or not the log stores a model
        self.drawn_bodies, self.unmatched_bodies = [], []

    def blueprint(self) -> rrb.Blueprint:
        """The 3D scene of every env beside the gate / entropy / EE position error plots of every env."""
        error = ("error/ee_pos_m", "EE position error (m)")  # one plot per unit: the envs' lines are many
        return blueprint(self.log, self.envs[0], prefix=f"/{PREFIX}", name="robots", error=error)

    def send_static(self) -> None:
        """Send the recording properties, the notes and the styles (static; no positions or values)."""
        rec, log, n = self.rec, self.log, len(self.envs)
        send_properties(rec, log, " (per-field layout: those EE values are NaN.)")
        names = [f"env{e}" for e in self.envs]
        colors = [PALETTE[k % len(PALETTE)] for k in range(n)]
        for path in scalar_paths(log, self.scalar_metrics):
            rec.log(f"{PREFIX}/{path}", rr.SeriesLines(names=names, colors=colors), static=True)
        for what, color in (("ee", (0.2, 0.9, 0.2)), ("target", (1.0, 0.85, 0.1))):
            # one half-size per env (the boxes' count), longest along x so the orientation shows
            box = rr.Boxes3D.from_fields(
                half_sizes=np.tile(POSE_BOX_HALF_M, (n, 1)),
                colors=[rgba8(color + (1.0,))],
                fill_mode="solid",
            )
            rec.log(f"{PREFIX}/{what}", box, static=True)
        rec.log(
            f"{PREFIX}/future_targets",
            rr.Points3D.from_fields(colors=[[255, 170, 0, 200]], radii=0.01),
            static=True,
        )
        rec.log(
            f"{PREFIX}/skeleton",
            rr.Points3D.from_fields(colors=[rgba8(skeleton.BODY_RGBA)], radii=skeleton.SPHERE_RADIUS_M),
            rr.LineStrips3D.from_fields(colors=[rgba8(skeleton.LINK_RGBA)], radii=skeleton.LINK_RADIUS_M),
            static=True,
        )

    def layout_columns(
        self,
        d: Dict[str, Any],
        steps: npt.NDArray[np.int64],
        idx: List[Any],
        fidx: List[Any],
        stale: Any,
        bodies: Dict[str, Any],
    ) -> List[Send]:
        """One (entity path, timelines, columns) per field for a chunk: every env in each row."""
        log = self.log
        out: List[Send] = []
        # (steps, envs, ...) as stored: row s holds every env, the envs its instances
        ee_pos = np.asarray(d["ee_pos"], np.float32)
        ee_quat = np.asarray(d["ee_quat_xyzw"], np.float32)
        target_pos = np.asarray(d["target_pos"], np.float32)
        target_quat = np.asarray(d["target_quat_xyzw"], np.float32)
        errors: Dict[str, npt.NDArray[Any]] = {
            "error/ee_pos_m": pos_error(ee_pos, target_pos),
            "error/ee_rot_rad": rot_error(ee_quat, target_quat),
        }
        if stale is not None and self.stale_ee and stale.any():  # NaN: not drawn, a gap in the series
            self.ee_left_out += int(stale.sum())
            ee_pos = np.where(stale[..., None], np.float32(np.nan), ee_pos)
            ee_quat = np.where(stale[..., None], np.float32(np.nan), ee_quat)
            for k in errors:
                errors[k] = np.where(stale, np.nan, errors[k])
        # one entity per series; each (steps, envs) array as it is read (no copy), the expert and
        # joint axes moved to the front (one copy each) so each series is a contiguous block
        single = {"gate_entropy": d["gate_entropy"], "reward/total": d["reward"]}
        single.update({f"reward/{t}": d["terms/" + t] for t in log.term_names})
        single.update({f"metrics/{m}": d["metrics/" + m] for m in self.scalar_metrics})
        single.update(errors)
        for names, field in ((log.expert_names, "gate"), (log.joint_names, "action")):
            cols = Columns.scalars(np.moveaxis(np.asarray(d[field]), -1, 0), batch=True)
            for i, name in enumerate(names):
                out.append((f"{PREFIX}/{field}/{name}", idx, [cols[i]]))
        for path, values in single.items():
            out.append((f"{PREFIX}/{path}", idx, [Columns.scalars(values[None], batch=True)[0]]))
        out.append((f"{PREFIX}/target", idx, self._pose(target_pos, target_quat)))
        out.append((f"{PREFIX}/ee", idx, self._pose(ee_pos, ee_quat)))
        ft = np.asarray(d["frames/target_future_pos"], np.float32)  # (rows, envs, 8, 3): 8 points per env
        fut = Columns.vectors("Points3D:positions", ft.reshape(1, ft.shape[0], -1, 3), batch=True)
        out.append((f"{PREFIX}/future_targets", fidx, [fut[0]]))
        out.append(
            (f"{PREFIX}/skeleton", fidx, self._skeleton(np.asarray(bodies["frames/body_pos"], np.float32)))
        )
        rows, cols_ = np.nonzero(np.asarray(d["done"], bool))  # row-major: by step, then env
        if len(rows):
            parts = [
                f"env {e} episode {p} ended{' (timeout)' if t else ''}"
                for e, p, t in zip(
                    np.asarray(self.envs)[cols_].tolist(),
                    d["episode"][rows, cols_].tolist(),
                    d["timeout"][rows, cols_].tolist(),
                )
            ]
            ended, first = np.unique(rows, return_index=True)
            bounds = first.tolist() + [len(parts)]
            texts = ["; ".join(parts[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
            sub = [
                rr.TimeColumn("step", sequence=steps[ended]),
                rr.TimeColumn("sim_time", duration=steps[ended] * log.policy_dt_s),
            ]
            out.append((f"{PREFIX}/episode/events", sub, rr.TextLog.columns(text=texts)))
        return out

    @staticmethod
    def _pose(pos: npt.NDArray[np.float32], quat: npt.NDArray[np.float32]) -> List[Any]:
        """Boxes3D centres and quaternions (one box per env) columns, rows = steps."""
        return [
            Columns.vectors("Boxes3D:centers", pos[None], batch=True)[0],
            Columns.vectors("Boxes3D:quaternions", quat[None], batch=True)[0],
        ]

    def _skeleton(self, bpos: npt.NDArray[np.float32]) -> List[Any]:
        """Every env's bodies (rows, envs, bodies, 3) as points, and their links as strips, per row."""
        if self.parents is None:
            self.parents = skeleton.infer_parents(self.log.body_names, bpos[0, 0])
        n_rows, n_envs, n_bodies = bpos.shape[:3]
        out = [
            Columns.vectors("Points3D:positions", bpos.reshape(1, n_rows, n_envs * n_bodies, 3), batch=True)[
                0
            ]
        ]
        links = [(par, i) for i, par in enumerate(self.parents) if par >= 0]
        if links:  # (rows, envs * links, 2, 3)
            seg = bpos[:, :, [b for link in links for b in link]]  # one copy: parent, child, parent, ...
            out.append(Columns.strips(seg.reshape(1, n_rows, n_envs * len(links), 2, 3))[0])
        return out
