"""The metadata views of an open log: root attributes (names, rates, config, provenance, the
stale_after_reset declaration), the stored robot model and trajectory. ``reader.Log`` inherits them."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import numpy as np

from moetape.schema import layout
from moetape.schema.errors import LogFormatError, LogReadError
from moetape.schema.io import H5_ERRORS, read_dataset


class LogMetadata:
    """Root-attribute properties of ``reader.Log``; the attributes below are set by Log when it opens."""

    path: str
    meta: Dict[str, Any]
    run_status: str
    _f: Any

    def _attr(self, name: str) -> Any:
        return self.meta[name]

    @property
    def n_envs(self) -> int:
        return int(self._attr("n_envs"))

    @property
    def expert_names(self) -> List[str]:
        return list(self._attr("expert_names"))

    @property
    def joint_names(self) -> List[str]:
        return list(self._attr("joint_names"))

    @property
    def body_names(self) -> List[str]:
        return list(self._attr("body_names"))

    @property
    def term_names(self) -> List[str]:
        return list(self._attr("term_names"))

    @property
    def metric_names(self) -> List[str]:
        return list(self._attr("metric_names"))

    @property
    def sim_dt_s(self) -> float:
        return float(self._attr("sim_dt_s"))

    @property
    def decimation(self) -> int:
        return int(self._attr("decimation"))

    @property
    def policy_dt_s(self) -> float:
        return float(self._attr("policy_dt_s"))

    @property
    def frames_per_step(self) -> int:
        return int(self._attr("frames_per_step"))

    @property
    def frame_rate_hz(self) -> float:
        return float(self._attr("frame_rate_hz"))

    @property
    def log_id(self) -> str:
        return str(self._attr("log_id"))

    @property
    def config(self) -> Dict[str, Any]:
        return dict(json.loads(self._attr("config_json") or "{}"))

    @property
    def provenance(self) -> Dict[str, Any]:
        return dict(json.loads(self._attr("provenance_json") or "{}"))

    @property
    def stale_after_reset(self) -> List[str]:
        """The fields stale on a new episode's first step (optional attribute; [] when absent).

        See layout's ``stale_after_reset`` and :func:`stale_mask` for the rows.
        """
        raw = self.meta.get(layout.STALE_AFTER_RESET_ATTR)
        if raw is None:
            return []
        try:
            value = json.loads(raw)
        except (TypeError, ValueError):
            value = None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise LogFormatError(
                f"{self.path}: root attribute '{layout.STALE_AFTER_RESET_ATTR}' is {str(raw)[:60]!r}; "
                'expected a JSON list of field paths such as ["steps/ee_pos"]. Run `moetape verify`.'
            )
        return list(value)

    @property
    def ended_cleanly(self) -> bool:
        return self.run_status == layout.STATUS_CLEAN

    @property
    def model_xml(self) -> Optional[str]:
        """Return the robot MJCF stored in the log, or None (e.g. Isaac Gym runs)."""
        try:
            if layout.MODEL_MJCF not in self._f:
                return None
            raw = read_dataset(self._f[layout.MODEL_MJCF], (), self.path)
            return bytes(np.asarray(raw, dtype=np.uint8)).decode("utf-8")
        except H5_ERRORS + (UnicodeDecodeError,) as e:
            raise self._damaged(layout.MODEL_MJCF, e) from e

    @property
    def has_model(self) -> bool:
        """Return True if the log stores its robot model (False if that part is unreadable)."""
        try:
            return layout.MODEL_MJCF in self._f
        except H5_ERRORS:
            return False

    def trajectory(self) -> Optional[Dict[str, Any]]:
        """Return {"ee_pos", "ee_axis_angle" float32 (n,T,3), "dt_s"} if stored, else None."""
        try:
            if layout.TRAJ_EE_POS not in self._f:
                return None
            ds = self._f[layout.TRAJ_EE_POS]
            return {
                "ee_pos": read_dataset(ds, (), self.path),
                "ee_axis_angle": read_dataset(self._f[layout.TRAJ_EE_AXIS_ANGLE], (), self.path),
                "dt_s": float(ds.attrs["dt_s"]),
            }
        except H5_ERRORS as e:
            raise self._damaged("trajectory", e) from e

    def _damaged(self, where: str, e: BaseException) -> LogReadError:
        if isinstance(e, LogReadError):
            return e
        return LogReadError(
            f"{self.path}: {where}: cannot be read ({_first_line(e)}); that part of the file is damaged. "
            "Restore a copy; `moetape salvage` keeps what is still readable."
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip().strip("'\"").splitlines()
    return text[0] if text else type(e).__name__
