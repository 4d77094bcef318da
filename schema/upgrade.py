"""Write an older (or crashed) log as a new file at the current format_version; never touch the old one."""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional, Tuple

from moetape.schema import layout
from moetape.schema.errors import LogFormatError
from moetape.schema.io import atomic_output, check_output, resolve_output
from moetape.schema.reader import Log, open_log
from moetape.schema.version import FORMAT_VERSION
from moetape.schema.writer import LogSpec, LogWriter


def upgrade(
    old: str,
    new: str,
    *,
    dry_run: bool = False,
    force: bool = False,
    progress: Optional[Callable[[int], None]] = None,
) -> Dict[str, Any]:
    """Copy the committed steps of ``old`` into a new log ``new`` at FORMAT_VERSION.

    The new file keeps the source's log_id, start time, provenance and end status, and records
    the source version in its provenance. With ``dry_run`` nothing is written. A log already at
    FORMAT_VERSION is not copied (the plan says ``"current": True``): it needs no upgrade. ``new``
    naming a folder (or ending in "/") means that folder, under the old file's name.

    Returns:
        A JSON-ready plan/result: versions, steps, envs, paths, "current", "written".
    """
    new = resolve_output(new, os.path.basename(os.fspath(old)))
    if os.path.abspath(old) == os.path.abspath(new):
        raise LogFormatError(f"{new}: the output must be a new file; old logs are never rewritten in place.")
    with open_log(old) as log:
        current = log.format_version == FORMAT_VERSION
        plan = {
            "source": old,
            "output": new,
            "from_version": log.format_version,
            "to_version": FORMAT_VERSION,
            "n_steps": log.n_steps,
            "n_envs": log.n_envs,
            "run_status": log.run_status,
            "dry_run": dry_run,
            "current": current,
            "written": False,
        }
        if current:
            return plan
        if dry_run:
            check_output(new, force=force)
            return plan
        spec = spec_of(log)
        provenance = dict(
            log.provenance, upgraded_from_version=log.format_version, upgraded_from=os.path.abspath(old)
        )
        meta = {
            "command_line": log.meta.get("command_line", ""),
            "config": log.config,
            "provenance": provenance,
            "keep_attrs": {
                k: log.meta[k]
                for k in ("log_id", "created_utc", "moetape_version") + layout.OPTIONAL_ATTRS
                if k in log.meta
            },
        }
        traj = log.trajectory()
        step_fields = [f for f in log.fields() if not f.startswith("frames/")]
        frame_fields = [f for f in log.fields() if f.startswith("frames/")]
        status = log.run_status
        with atomic_output(new, force=force, suffix=".h5") as tmp:
            writer = LogWriter(
                tmp,
                spec,
                meta=meta,
                model_xml=log.model_xml,
                trajectory=None if traj is None else (traj["ee_pos"], traj["ee_axis_angle"], traj["dt_s"]),
            )
            try:
                for chunk in log.iter_chunks(step_fields + frame_fields):
                    fps = log.frames_per_step
                    for i in range(chunk.stop - chunk.start):
                        writer.append(
                            {k: chunk.data[k][i] for k in step_fields},
                            {
                                k.split("/", 1)[1]: chunk.data[k][i * fps : (i + 1) * fps]
                                for k in frame_fields
                            },
                        )
                    if progress is not None:
                        progress(chunk.stop)
            except BaseException:
                writer.close(layout.STATUS_FAILED)
                raise
            writer.close(status)
        plan["written"] = True
        return plan


def spec_of(log: Log, metrics: Optional[Dict[str, Tuple[Tuple[int, ...], str]]] = None) -> LogSpec:
    """Return the LogSpec that writes a new log shaped like ``log`` (upgrade, salvage).

    Args:
        metrics: name -> (shape per env, dtype) of its custom metrics; read from ``log`` when None.
    """
    if metrics is None:
        metrics = {
            m: (tuple(log.dataset("metrics/" + m).shape[2:]), str(log.dataset("metrics/" + m).dtype))
            for m in log.metric_names
        }
    return LogSpec(
        n_envs=log.n_envs,
        obs_dim=int(log.meta["obs_dim"]),
        action_dim=int(log.meta["action_dim"]),
        joint_names=log.joint_names,
        body_names=log.body_names,
        expert_names=log.expert_names,
        term_names=log.term_names,
        metrics=metrics,
        sim_dt_s=log.sim_dt_s,
        decimation=log.decimation,
        frames_per_step=log.frames_per_step,
        backend=str(log.meta["backend"]),
    )
