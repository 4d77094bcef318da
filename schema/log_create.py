"""A new log's header, written before SWMR: root attributes, counters, the empty datasets, the model, the trajectory.

Used by ``moetape.schema.writer.LogWriter`` when it creates a log.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import h5py
import numpy as np

from moetape.schema import layout
from moetape.schema.commit import utc_now
from moetape.schema.spec import LogSpec
from moetape.schema.version import FORMAT_VERSION


def write_header(
    f: h5py.File,
    spec: LogSpec,
    specs: Mapping[str, Tuple[Tuple[int, ...], str]],
    *,
    meta: Mapping[str, Any],
    model_xml: Optional[str],
    model_source: str,
    trajectory: Optional[Tuple[np.ndarray, np.ndarray, float]],
    stale: List[str],
    chunks: Callable[[str, Tuple[int, ...], str], Tuple[int, ...]],
) -> None:
    """Write a new log's root attributes, counters and empty datasets (chunked by ``chunks``), and
    the model and trajectory if given; ``stale``: the fields declared stale after a reset (or none)."""
    from moetape import __version__

    attrs: Dict[str, Any] = {
        layout.FORMAT_VERSION_ATTR: FORMAT_VERSION,
        "moetape_version": __version__,
        "log_id": uuid.uuid4().hex,
        "created_utc": utc_now(),
        "command_line": str(meta.get("command_line", "")),
        "config_json": json.dumps(meta.get("config", {}), sort_keys=True, default=str),
        "provenance_json": json.dumps(meta.get("provenance", {}), sort_keys=True, default=str),
        "expert_names": list(spec.expert_names),
        "joint_names": list(spec.joint_names),
        "body_names": list(spec.body_names),
        "term_names": list(spec.term_names),
        "metric_names": list(spec.metrics),
        "n_envs": spec.n_envs,
        "obs_dim": spec.obs_dim,
        "action_dim": spec.action_dim,
        "sim_dt_s": float(spec.sim_dt_s),
        "decimation": spec.decimation,
        "policy_dt_s": float(spec.sim_dt_s * spec.decimation),
        "frames_per_step": spec.frames_per_step,
        "frame_rate_hz": float(spec.frames_per_step / (spec.sim_dt_s * spec.decimation)),
        "backend": spec.backend,
    }
    if stale:  # optional: absent means no stale rows (layout.STALE_AFTER_RESET_ATTR)
        attrs[layout.STALE_AFTER_RESET_ATTR] = json.dumps(stale)
    attrs.update(meta.get("keep_attrs", {}))  # upgrade keeps the source's identity
    for key, value in attrs.items():
        if isinstance(value, list):
            f.attrs.create(key, value, dtype=h5py.string_dtype())
        else:
            f.attrs[key] = value
    f.create_dataset(layout.N_COMMITTED, data=np.zeros(2, dtype=np.int64))
    f[layout.N_COMMITTED].attrs["columns"] = ["steps", "frames"]
    f.create_dataset(layout.RUN_STATUS, data=np.bytes_(layout.STATUS_RUNNING), dtype="S16")
    f.create_dataset(layout.END_TIME, data=np.bytes_(b""), dtype="S32")
    for path, (shape, dtype) in specs.items():
        ds = f.create_dataset(
            path,
            shape=(0,) + shape,
            maxshape=(None,) + shape,
            dtype=dtype,
            chunks=chunks(path, shape, dtype),
            fletcher32=True,
        )
        name = path.rsplit("/", 1)[-1]
        if name in layout.UNITS:
            ds.attrs["unit"] = layout.UNITS[name]
        if name in layout.FRAMES_WORLD:
            ds.attrs["frame"] = "world"
    if model_xml is not None:
        import hashlib

        raw = model_xml.encode("utf-8")
        ds = f.create_dataset(layout.MODEL_MJCF, data=np.frombuffer(raw, dtype=np.uint8))
        ds.attrs["sha256"] = hashlib.sha256(raw).hexdigest()
        ds.attrs["source"] = model_source
    if trajectory is not None:
        ee_pos, ee_aa, dt_s = trajectory
        f.create_dataset(layout.TRAJ_EE_POS, data=np.asarray(ee_pos, np.float32), fletcher32=True)
        f.create_dataset(layout.TRAJ_EE_AXIS_ANGLE, data=np.asarray(ee_aa, np.float32), fletcher32=True)
        f[layout.TRAJ_EE_POS].attrs["dt_s"] = float(dt_s)
    f.flush()
