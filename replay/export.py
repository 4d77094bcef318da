"""Derive the legacy files from an event log, streaming: weight_stats.pkl, moe_results.pkl, logs.zarr, logs.pkl.

The log is read once, in chunks of about 32 MB of policy steps, and every requested output is fed
from the same pass (``export_many``). logs.zarr is written chunk by chunk (memory stays bounded);
the pickles are in-memory lists by nature (the legacy format), kept as blocks of rows until written.
Every output goes to a temporary name and is renamed into place when complete.

Legacy meaning of each output (DESIGN §4), S = policy steps, E = envs, N = exported frame rows:

weight_stats.pkl  {"base_weights", "arm_weights", "weight_entropy"}: lists of S Python floats.
    base/arm = steps/gate[:, 0, 0] / [:, 0, 1] (env 0, columns 0 and 1); weight_entropy = mean over
    envs of steps/gate_entropy, computed in float32 as the legacy torch code did.

moe_results.pkl   {"config": json.loads(config_json), "weight_stats": {as above},
    "action_logs": {"actions": S x float32 (E,A) <- steps/action,
                    "moe_weights": S x float32 (E,K) <- steps/gate},
    "state_logs": {"root_pos": S x float32 (3,), "root_quat": S x float32 (4,) xyzw, "dof_pos":
                   S x float32 (J,)}}: env 0 before each step = frames rows with substep 0.

logs.zarr / logs.pkl  The rows (``rows=``):
    substep  every frame row (4 per policy step, the legacy headless rate); needs a log recorded
             with ``--frames substep`` (frames_per_step == decimation)
    policy   one row per policy step (the substep-0 rows)
    video    every round(frame_rate_hz / 24)-th frame row, about 24 rows per simulated second like
             the legacy visualised runs (25 Hz from 200 Hz or 50 Hz frames)
    auto     substep when the log has substep frames, policy otherwise (the default)
  logs.pkl key        logs.zarr array         from the log
  state_logs/
    root_state        root_state (N,E,13)     [frames/root_pos, root_quat_xyzw, root_lin_vel, root_ang_vel]
    root_pos          root_pos (N,E,3)        frames/root_pos
    root_xyzw_quat    root_xyzw_quat (N,E,4)  frames/root_quat_xyzw
    root_lin_vel      root_lin_vel (N,E,3)    frames/root_lin_vel
    root_ang_vel      root_ang_vel (N,E,3)    frames/root_ang_vel
    rigid_body_pos    rigid_body_pos (N,E,B,3)        frames/body_pos
    rigid_body_xyzw_quat rigid_body_xyzw_quat (N,E,B,4) frames/body_quat_xyzw
    dof_pos, dof_vel  dof_pos, dof_vel (N,E,J)        frames/dof_pos, frames/dof_vel
    contact_forces    contact_forces (N,E,B,3)        frames/contact_force
    episode_time      episode_time (N,E)      frames/episode_time_s
  action_logs/
    torque            torque (N,E,J)          frames/torque
    action            action (N,E,A)          steps/action of the row's step (frames/step)
    obs               obs (N,E,O)             steps/obs of the row's step
  episode_logs/       (one entry per policy step)
    <term name>       <name, "/" -> "_"> (S,E) float32   steps/terms/<term name>
    reward_total      reward_total (S,E)      steps/reward, unless a term is already named so
    time_outs         time_outs (S,E) bool    steps/timeout
  task_logs/
    target_positions  target_positions (N,8,3)  env 0's frames/target_future_pos
    target_quats_wxyz target_quats_wxyz (N,8,4) env 0's frames/target_future_quat_xyzw as w,x,y,z
                                              with w >= 0 (transforms3d's mat2quat convention)
  weight_stats/       base_weights, arm_weights, weight_entropy: S floats (pkl) / (S,) float64 (zarr)
  config              (pkl only) json.loads(config_json)
  Per-row values are float32 numpy arrays (time_outs bool); zarr 2-D arrays are chunked (1, E) and the
  others use zarr 2.16's default chunks; the zarr group's only attributes are sim_dt_s, decimation,
  policy_dt_s, frame_rate_hz (of the exported rows), rows and source_log_id. With ``weights=False``
  the weight lists (and moe_weights) stay empty, as the legacy scripts left them without --show_weights.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from moetape.replay.legacy_pickle import RowList, write_pickle
from moetape.replay.legacy_zarr import ZarrV2Writer
from moetape.schema.errors import InputError, LogFormatError
from moetape.schema.io import atomic_output, check_output
from moetape.schema.reader import Chunk, Log, open_log

Progress = Callable[[int], None]
LogArg = Union[Log, str, "os.PathLike[str]"]

KINDS = ("weight_stats", "results", "zarr", "pkl")
ROWS_MODES = ("auto", "substep", "policy", "video")
VIDEO_FPS = 24
CHUNK_BYTES = 8 << 20  # log bytes read per pass step: bounds memory, large enough for fast reads
WEIGHT_KEYS = ("base_weights", "arm_weights", "weight_entropy")

# legacy key -> frames/ field, for the keys that are a plain copy of one field.
FRAME_COPIES: Dict[str, str] = {
    "root_pos": "frames/root_pos",
    "root_xyzw_quat": "frames/root_quat_xyzw",
    "root_lin_vel": "frames/root_lin_vel",
    "root_ang_vel": "frames/root_ang_vel",
    "rigid_body_pos": "frames/body_pos",
    "rigid_body_xyzw_quat": "frames/body_quat_xyzw",
    "dof_pos": "frames/dof_pos",
    "dof_vel": "frames/dof_vel",
    "contact_forces": "frames/contact_force",
    "episode_time": "frames/episode_time_s",
    "torque": "frames/torque",
}
STATE_KEYS = (
    "root_state",
    "root_pos",
    "root_xyzw_quat",
    "root_lin_vel",
    "root_ang_vel",
    "rigid_body_pos",
    "rigid_body_xyzw_quat",
    "dof_pos",
    "dof_vel",
    "contact_forces",
    "episode_time",
)
ACTION_KEYS = ("torque", "action", "obs")
TASK_KEYS = ("target_positions", "target_quats_wxyz")
ENV0_FIELDS = ("frames/target_future_pos", "frames/target_future_quat_xyzw")

_WEIGHT_FIELDS = ["gate", "gate_entropy"]
_STATE_FIELDS = ["frames/root_pos", "frames/root_quat_xyzw", "frames/dof_pos"]
_ROW_FIELDS = sorted(set(FRAME_COPIES.values())) + ["frames/step", "action", "obs", "timeout", "reward"]
NEEDS: Dict[str, List[str]] = {
    "weight_stats": _WEIGHT_FIELDS,
    "results": _WEIGHT_FIELDS + ["action"] + _STATE_FIELDS,
    "zarr": _WEIGHT_FIELDS + _ROW_FIELDS + list(ENV0_FIELDS),
    "pkl": _WEIGHT_FIELDS + _ROW_FIELDS + list(ENV0_FIELDS),
}


@dataclass(frozen=True)
class RowPlan:
    """Which frame rows logs.zarr / logs.pkl hold: every ``stride``-th frame row, ``n_rows`` of them."""

    mode: str
    stride: int
    n_rows: int
    frame_rate_hz: float


def plan_rows(log: Log, rows: str = "auto") -> RowPlan:
    """Resolve a rows mode (see the module docstring) against the log's frame rate.

    Raises:
        InputError: unknown mode, or "substep" on a log recorded with --frames policy.
    """
    if rows not in ROWS_MODES:
        raise InputError("--rows {!r}: expected one of {}.".format(rows, ", ".join(ROWS_MODES)))
    fps, dec = log.frames_per_step, log.decimation
    has_substeps = fps == dec
    if rows == "auto":
        rows = "substep" if has_substeps else "policy"
    if rows == "substep":
        if not has_substeps:
            raise InputError(
                f"{log.path}: --rows substep needs a frame row per physics substep, but the log was recorded with "
                f"--frames policy ({fps} frame row per step, decimation {dec}). Use --rows policy or video, or "
                "re-record with --frames substep."
            )
        stride = 1
    elif rows == "policy":
        stride = fps
    else:
        stride = max(1, int(round(log.frame_rate_hz / VIDEO_FPS)))
    n_frames = log.n_steps * fps
    return RowPlan(rows, stride, (n_frames + stride - 1) // stride, log.frame_rate_hz / stride)


def zarr_name(key: str) -> str:
    """Return the logs.zarr name of a legacy key: "/" -> "_" (as the legacy script did)."""
    return key.replace("/", "_")


def xyzw_to_wxyz(q: np.ndarray) -> np.ndarray:
    """Reorder quaternions (..., 4) x,y,z,w -> w,x,y,z with w >= 0 (mat2quat's sign); float32."""
    out = np.asarray(q, dtype=np.float32)[..., [3, 0, 1, 2]]
    return np.where(out[..., :1] < 0, -out, out).astype(np.float32)


def episode_keys(log: Log) -> List[Tuple[str, str]]:
    """Return the per-step (logs.pkl key, field) pairs of episode_logs, in order.

    Raises:
        LogFormatError: two keys map to the same logs.zarr name after "/" -> "_".
    """
    pairs = [(name, "terms/" + name) for name in log.term_names]
    reserved = set(STATE_KEYS) | set(ACTION_KEYS) | set(TASK_KEYS) | set(WEIGHT_KEYS) | {"time_outs"}
    seen: Dict[str, str] = {}
    for key, _ in pairs:
        z = zarr_name(key)
        if z in seen or z in reserved:
            raise LogFormatError(
                "{}: term {!r} becomes {!r} in logs.zarr, {}; rename the term.".format(
                    log.path, key, z, f"as term {seen[z]!r} does" if z in seen else "a legacy array's name"
                )
            )
        seen[z] = key
    if "reward_total" not in seen:
        pairs.append(("reward_total", "reward"))
    pairs.append(("time_outs", "timeout"))
    return pairs


# ------------------------------------------------------------------------------------ per chunk


class _View:
    """One chunk of the log plus the legacy values computed from it (each computed once, shared by outputs)."""

    def __init__(self, log: Log, chunk: Chunk, plan: Optional[RowPlan]) -> None:
        self.log, self.c, self.plan = log, chunk, plan
        self._cache: Dict[str, Any] = {}

    def step(self, field: str) -> np.ndarray:
        return self.c.data[field]

    def _sel(self) -> slice:
        assert self.plan is not None
        g0 = self.c.start * self.log.frames_per_step
        k = self.plan.stride
        return slice(-(-g0 // k) * k - g0, None, k)

    def frames(self, field: str) -> np.ndarray:
        """Selected frame rows of ``field`` (all envs)."""
        return np.ascontiguousarray(self.c.data[field][self._sel()])

    def rows(self) -> Dict[str, np.ndarray]:
        """The per-frame-row legacy arrays of this chunk (state, action and task keys)."""
        if "rows" not in self._cache:
            out = {key: self.frames(field) for key, field in FRAME_COPIES.items()}
            out["root_state"] = np.concatenate(
                [out["root_pos"], out["root_xyzw_quat"], out["root_lin_vel"], out["root_ang_vel"]], axis=-1
            )
            idx = self.frames("frames/step") - self.c.start
            n = self.c.stop - self.c.start
            same = idx.shape[0] == n and np.array_equal(idx, np.arange(n))  # one row per step: no copy
            out["action"] = self.step("action") if same else self.step("action")[idx]
            out["obs"] = self.step("obs") if same else self.step("obs")[idx]
            sel = self._sel()
            pos = self.log.read(ENV0_FIELDS[0], self.c.start, self.c.stop, env=0)[sel]
            quat = self.log.read(ENV0_FIELDS[1], self.c.start, self.c.stop, env=0)[sel]
            out["target_positions"] = np.ascontiguousarray(pos, dtype=np.float32)
            out["target_quats_wxyz"] = xyzw_to_wxyz(quat)
            self._cache["rows"] = out
        rows: Dict[str, np.ndarray] = self._cache["rows"]
        return rows

    def weights(self) -> Dict[str, np.ndarray]:
        """base/arm weights of env 0 and the env-mean entropy of each step, float64 (n,)."""
        if "weights" not in self._cache:
            gate, ent = self.step("gate"), self.step("gate_entropy")
            self._cache["weights"] = {
                "base_weights": gate[:, 0, 0].astype(np.float64),
                "arm_weights": gate[:, 0, 1].astype(np.float64),
                "weight_entropy": ent.mean(axis=1, dtype=np.float32).astype(np.float64),
            }
        w: Dict[str, np.ndarray] = self._cache["weights"]
        return w

    def state0(self, field: str) -> np.ndarray:
        """Env 0 before each step: the substep-0 frame row of each step."""
        return np.ascontiguousarray(self.c.data[field][:: self.log.frames_per_step, 0])


# ------------------------------------------------------------------------------------ outputs


def _weight_lists(enabled: bool) -> Dict[str, RowList]:
    return (
        {k: RowList(as_float=True) for k in WEIGHT_KEYS} if enabled else {k: RowList() for k in WEIGHT_KEYS}
    )


class _WeightStats:
    def __init__(self, log: Log, tmp: str, *, weights: bool = True) -> None:
        self.tmp, self.enabled = tmp, weights
        self.lists = _weight_lists(weights)

    def feed(self, v: _View) -> None:
        if self.enabled:
            for key, values in v.weights().items():
                self.lists[key].append_block(values)

    def close(self) -> Dict[str, Any]:
        return write_pickle(self.lists, self.tmp)

    def abort(self) -> None:
        """Drop what was gathered (the temporary output is removed by atomic_output)."""


class _Results(_WeightStats):
    def __init__(self, log: Log, tmp: str, *, weights: bool = True) -> None:
        super().__init__(log, tmp, weights=weights)
        self.config = log.config
        self.actions, self.moe_weights = RowList(), RowList()
        self.state = {"root_pos": RowList(), "root_quat": RowList(), "dof_pos": RowList()}

    def feed(self, v: _View) -> None:
        super().feed(v)
        self.actions.append_block(v.step("action"))
        if self.enabled:
            self.moe_weights.append_block(v.step("gate"))
        for key, field in zip(self.state, _STATE_FIELDS):
            self.state[key].append_block(v.state0(field))

    def close(self) -> Dict[str, Any]:
        return write_pickle(
            {
                "config": self.config,
                "weight_stats": self.lists,
                "action_logs": {"actions": self.actions, "moe_weights": self.moe_weights},
                "state_logs": self.state,
            },
            self.tmp,
        )


class _Pkl(_WeightStats):
    def __init__(self, log: Log, tmp: str, *, weights: bool = True) -> None:
        super().__init__(log, tmp, weights=weights)
        self.config = log.config
        self.episode_keys = episode_keys(log)
        self.groups: Dict[str, Dict[str, RowList]] = {
            "state_logs": {k: RowList() for k in STATE_KEYS},
            "action_logs": {k: RowList() for k in ACTION_KEYS},
            "episode_logs": {k: RowList() for k, _ in self.episode_keys},
            "task_logs": {k: RowList() for k in TASK_KEYS},
        }

    def feed(self, v: _View) -> None:
        super().feed(v)
        rows = v.rows()
        for group in ("state_logs", "action_logs", "task_logs"):
            for key, lst in self.groups[group].items():
                lst.append_block(rows[key])
        for key, field in self.episode_keys:
            self.groups["episode_logs"][key].append_block(v.step(field))

    def close(self) -> Dict[str, Any]:
        return write_pickle(dict({"config": self.config}, **self.groups, weight_stats=self.lists), self.tmp)


class _Zarr:
    def __init__(self, log: Log, tmp: str, plan: RowPlan, *, weights: bool = True) -> None:
        self.enabled = weights
        self.episode_keys = episode_keys(log)
        self.attrs = {
            "sim_dt_s": log.sim_dt_s,
            "decimation": log.decimation,
            "policy_dt_s": log.policy_dt_s,
            "frame_rate_hz": plan.frame_rate_hz,
            "rows": plan.mode,
            "source_log_id": log.log_id,
        }
        e, s, n = log.n_envs, log.n_steps, plan.n_rows
        j, b = len(log.joint_names), len(log.body_names)
        a, o = int(log.meta["action_dim"]), int(log.meta["obs_dim"])
        shapes = {
            "root_state": (n, e, 13),
            "root_pos": (n, e, 3),
            "root_xyzw_quat": (n, e, 4),
            "root_lin_vel": (n, e, 3),
            "root_ang_vel": (n, e, 3),
            "rigid_body_pos": (n, e, b, 3),
            "rigid_body_xyzw_quat": (n, e, b, 4),
            "dof_pos": (n, e, j),
            "dof_vel": (n, e, j),
            "contact_forces": (n, e, b, 3),
            "episode_time": (n, e),
            "torque": (n, e, j),
            "action": (n, e, a),
            "obs": (n, e, o),
            "target_positions": (n, 8, 3),
            "target_quats_wxyz": (n, 8, 4),
        }
        self.w = ZarrV2Writer(tmp)
        for key, shape in shapes.items():
            self.w.create(key, shape, "float32")
        for key, field in self.episode_keys:
            self.w.create(zarr_name(key), (s, e), "bool" if field == "timeout" else "float32")
        for key in WEIGHT_KEYS:
            self.w.create(key, (s if weights else 0,), "float64")
        self.frame_keys = list(shapes)

    def feed(self, v: _View) -> None:
        rows = v.rows()
        for key in self.frame_keys:
            self.w.append(key, rows[key])
        for key, field in self.episode_keys:
            self.w.append(zarr_name(key), v.step(field))
        if self.enabled:
            for key, values in v.weights().items():
                self.w.append(key, values)

    def close(self) -> Dict[str, Any]:
        self.w.close(attrs=self.attrs)
        return self.w.tree_digest()

    def abort(self) -> None:
        self.w.abort()


# ------------------------------------------------------------------------------------ entry points


def _open(log: LogArg) -> Tuple[Log, bool]:
    if isinstance(log, Log):
        return log, False
    return open_log(os.fspath(log)), True


def check_fields(log: Log, kinds: Sequence[str], *, weights: bool = True) -> None:
    """Raise LogFormatError naming every field the requested exports need and the log lacks."""
    for kind in kinds:
        missing = [f for f in NEEDS[kind] if not log.has_field(f)]
        if missing:
            raise LogFormatError(
                "{}: cannot export {}: the log has no {}.".format(log.path, kind, ", ".join(missing))
            )
    if weights and len(log.expert_names) < 2:
        raise LogFormatError(
            "{}: the legacy weight stats need 2 experts (base, arm); the log has {} ({}).".format(
                log.path, len(log.expert_names), ", ".join(log.expert_names)
            )
        )


def export_many(
    log: LogArg,
    outputs: Mapping[str, str],
    *,
    rows: str = "auto",
    weights: bool = True,
    force: bool = False,
    progress: Optional[Progress] = None,
    chunk_steps: Optional[int] = None,
) -> Dict[str, Dict[str, Any]]:
    """Write several legacy files in one pass over the log.

    Args:
        outputs: kind ("weight_stats", "results", "zarr", "pkl") -> output path.
        rows: frame rows of zarr/pkl: "auto", "substep", "policy" or "video" (module docstring).
        weights: fill the weight-stats lists (the legacy --show_weights); False leaves them empty.
        progress: called with the number of policy steps done so far.
    Returns:
        kind -> {"path", "n_steps", "n_rows", "rows", "frame_rate_hz", "run_status", "sha256", "bytes"}
        (a folder's sha256 as ``legacy_zarr.tree_sha256``; computed while writing).
    Raises:
        InputError: unknown kind or rows mode. LogFormatError: the log lacks a needed field.
        OutputExistsError: an output exists and force is False (checked before anything is written).
    """
    bad = [k for k in outputs if k not in KINDS]
    if bad:
        raise InputError("unknown export {}; expected {}.".format(", ".join(bad), ", ".join(KINDS)))
    for path in outputs.values():
        check_output(path, force=force)
    lg, owned = _open(log)
    try:
        check_fields(lg, list(outputs), weights=weights)
        plan = plan_rows(lg, rows) if ("zarr" in outputs or "pkl" in outputs) else None
        fields = {f for k in outputs for f in NEEDS[k]} - set(ENV0_FIELDS) - {"reward", "timeout"}
        if plan is not None:
            fields |= {f for _, f in episode_keys(lg)}
        digests: Dict[str, Dict[str, Any]] = {}
        with contextlib.ExitStack() as stack:
            sinks: Dict[str, Any] = {}
            try:
                for kind, path in outputs.items():
                    tmp = stack.enter_context(
                        atomic_output(path, force=force, suffix=".zarr" if kind == "zarr" else "")
                    )
                    if kind == "zarr":
                        assert plan is not None
                        sinks[kind] = _Zarr(lg, tmp, plan, weights=weights)
                    else:
                        cls = {"weight_stats": _WeightStats, "results": _Results, "pkl": _Pkl}[kind]
                        sinks[kind] = cls(lg, tmp, weights=weights)
                per = chunk_steps or max(1, CHUNK_BYTES // lg.step_bytes(sorted(fields)))
                for chunk in lg.iter_chunks(sorted(fields), chunk_steps=per):
                    view = _View(lg, chunk, plan)
                    for sink in sinks.values():
                        sink.feed(view)
                    if progress is not None:
                        progress(chunk.stop)
                # The pickles first: the zarr writer threads keep writing chunks meanwhile.
                for kind in sorted(sinks, key=lambda k: k == "zarr"):
                    digests[kind] = sinks[kind].close()
            except BaseException:
                for sink in sinks.values():
                    sink.abort()
                raise
        info = {
            "n_steps": lg.n_steps,
            "run_status": lg.run_status,
            "rows": plan.mode if plan else None,
            "n_rows": plan.n_rows if plan else None,
            "frame_rate_hz": plan.frame_rate_hz if plan else None,
        }
        return {kind: dict(info, path=path, **digests[kind]) for kind, path in outputs.items()}
    finally:
        if owned:
            lg.close()


def export_weight_stats(
    log: LogArg, out: str, *, force: bool = False, progress: Optional[Progress] = None
) -> Dict[str, Any]:
    """Write weight_stats.pkl (legacy full script with --show_weights); see the module docstring."""
    return export_many(log, {"weight_stats": out}, force=force, progress=progress)["weight_stats"]


def export_results(
    log: LogArg, out: str, *, weights: bool = True, force: bool = False, progress: Optional[Progress] = None
) -> Dict[str, Any]:
    """Write moe_results.pkl (legacy simple script); ``weights=False`` is the run without --show_weights."""
    return export_many(log, {"results": out}, weights=weights, force=force, progress=progress)["results"]


def export_zarr(
    log: LogArg,
    out: str,
    *,
    rows: str = "auto",
    weights: bool = True,
    force: bool = False,
    progress: Optional[Progress] = None,
) -> Dict[str, Any]:
    """Write logs.zarr (zarr v2, legacy full script), streaming with bounded memory."""
    return export_many(log, {"zarr": out}, rows=rows, weights=weights, force=force, progress=progress)["zarr"]


def export_pkl(
    log: LogArg,
    out: str,
    *,
    rows: str = "auto",
    weights: bool = True,
    force: bool = False,
    progress: Optional[Progress] = None,
) -> Dict[str, Any]:
    """Write logs.pkl (legacy full script): the logs.zarr data as per-row lists with the original keys."""
    return export_many(log, {"pkl": out}, rows=rows, weights=weights, force=force, progress=progress)["pkl"]
