"""What each legacy output holds, and where in the event log each of its values comes from.

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

A selection (``moetape export ... --steps A:B --env I``) exports policy steps [A, B) of env I only:
every key above holds those steps (and their frame rows, the same rows a full export holds), E = 1,
and env I stands where env 0 was (base/arm weights, state_logs of moe_results.pkl, the targets); the
weight entropy is then env I's own. logs.zarr records the selection as the attributes ``steps``
([A, B]) and ``env`` (I; null: every env), present only when a selection was asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from moetape.schema.errors import InputError, LogFormatError
from moetape.schema.reader import Chunk, Log

ROWS_MODES = ("auto", "substep", "policy", "video")
VIDEO_FPS = 24
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
STATE0_FIELDS = ["frames/root_pos", "frames/root_quat_xyzw", "frames/dof_pos"]
_ROW_FIELDS = sorted(set(FRAME_COPIES.values())) + ["frames/step", "action", "obs", "timeout", "reward"]
NEEDS: Dict[str, List[str]] = {
    "weight_stats": _WEIGHT_FIELDS,
    "results": _WEIGHT_FIELDS + ["action"] + STATE0_FIELDS,
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


def plan_rows(log: Log, rows: str = "auto", *, start: int = 0, stop: Optional[int] = None) -> RowPlan:
    """Resolve a rows mode (see the module docstring) against the log's frame rate, for steps [start, stop).

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
    stop = log.n_steps if stop is None else stop
    # Rows are the frames whose global index is a multiple of the stride, whatever the selection.
    n_rows = -(-stop * fps // stride) - -(-start * fps // stride)
    return RowPlan(rows, stride, n_rows, log.frame_rate_hz / stride)


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


class ChunkView:
    """One chunk of the log plus the legacy values computed from it (each computed once, shared by outputs)."""

    def __init__(self, log: Log, chunk: Chunk, plan: Optional[RowPlan], *, env: int = 0) -> None:
        """``chunk`` holds all envs, or only env ``env`` (a one-env selection); ENV0_FIELDS are read for ``env``."""
        self.log, self.c, self.plan, self.env = log, chunk, plan, env
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
            pos = self.log.read(ENV0_FIELDS[0], self.c.start, self.c.stop, env=self.env)[sel]
            quat = self.log.read(ENV0_FIELDS[1], self.c.start, self.c.stop, env=self.env)[sel]
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
