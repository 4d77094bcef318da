"""The moetape event log, format_version 1: this docstring is the format specification.

A log is one HDF5 file. It is written by one process, appended once per batch of policy steps,
and readable at any time by other processes (HDF5 SWMR). Everything is a plain dataset or
attribute, so h5dump and HDFView read it too. Symbols: S = committed policy steps, E = envs,
O = observation size, A = action size, K = experts, J = joints, B = rigid bodies,
N = committed frame rows (= S * frames_per_step), M = 8 future target poses.

Root attributes (written at creation, never changed; introduced in version 1)
    format_version      int     1. Readers refuse newer files and upcast older ones in memory.
    moetape_version     str     version of the moetape that wrote the file
    log_id              str     random hex id of this recording (derived files name their source)
    created_utc         str     ISO 8601 start time
    command_line        str     the command that recorded the run (shell-quoted)
    config_json         str     the full run configuration as JSON (flags after defaults)
    provenance_json     str     JSON: host, device, backend and its versions, python, numpy,
                                h5py, torch versions, seed, sha256 of checkpoints, trajectory
                                and robot model files
    expert_names        str[K]  gate column names, ["base", "arm"] by default
    joint_names         str[J]  actuated joints, in action order
    body_names          str[B]  rigid bodies of frames/body_* rows
    term_names          str[T]  per-step env terms stored under steps/terms/
    metric_names        str[C]  custom metrics stored under steps/metrics/
    n_envs              int     E
    obs_dim, action_dim int     O, A
    sim_dt_s            float   physics step, s (0.005 = 200 Hz)
    decimation          int     physics steps per policy step (4)
    policy_dt_s         float   sim_dt_s * decimation (0.02 = 50 Hz)
    frames_per_step     int     rows of frames/ per policy step: decimation ("substep") or 1 ("policy")
    frame_rate_hz       float   1 / (policy_dt_s / frames_per_step)
    backend             str     "mujoco" | "isaacgym" | a test backend's name

Optional root attributes (absent means what every older log means; added without a version bump,
since readers that do not know one ignore it)
    stale_after_reset   str     JSON list of the fields whose rows are stale on the first step of
                                every episode after an env's first (step_in_episode == 0 and
                                episode > 0): they hold the previous episode's last values while
                                root and dof state show the reset. steps/ paths name the step's row;
                                frames/ paths name row 0 of that step (substep 0) only, later rows
                                are fresh. Written from the backend's BackendInfo.stale_after_reset:
                                Isaac Gym writes ["steps/ee_pos", "steps/ee_quat_xyzw",
                                "frames/body_pos", "frames/body_quat_xyzw", "frames/contact_force"]
                                (reset_idx writes root and dof state in place; rigid-body poses and
                                contact forces refresh only at the next gym.simulate). Absent: no
                                stale rows (every MuJoCo and warp log, every golden v1 file). Readers
                                get the mask from moetape.schema.reader.stale_mask; the values are
                                stored as the simulator gave them (the legacy scripts read the same).

Commit state (datasets, rewritten in place while recording; version 1)
    n_committed         int64 (2,)  [S, N]: rows of steps/ and frames/ that are complete.
                                    Raised after the rows are written, then the file is flushed.
                                    Readers trust it, not the dataset lengths, which may be longer.
    run_status          bytes S16 ()  "running", "clean", "interrupted" (Ctrl-C) or "failed".
                                    A file still "running" that no process writes has crashed.
    end_time_utc        bytes S32 ()  ISO 8601 end time, empty while running.

steps/  one row per policy step; every dataset chunked, growable along axis 0, fletcher32
    t_wall_s            float64 (S,)        wall-clock seconds since the start when the row was taken
    obs                 float32 (S,E,O)     observation the policy saw
    action              float32 (S,E,A)     raw policy output (before scaling to PD targets)
    gate                float32 (S,E,K)     gate weights (softmax), columns = expert_names
    gate_entropy        float32 (S,E)       -sum_k w_k ln(w_k + 1e-8), natural log
    reward              float32 (S,E)       total reward of the step
    done                bool    (S,E)       the episode ended at this step (termination or timeout)
    timeout             bool    (S,E)       the episode ended by the time limit
    episode             int32   (S,E)       per-env episode counter, 0-based
    step_in_episode     int32   (S,E)       0 on the first step of an episode
    ee_pos              float32 (S,E,3)     end-effector position, world frame, m
    ee_quat_xyzw        float32 (S,E,4)     end-effector orientation, world frame
    target_pos          float32 (S,E,3)     EE target position, world frame, m
    target_quat_xyzw    float32 (S,E,4)     EE target orientation, world frame
    terms/<name>        float32 (S,E)       env terms (errors in m / rad, reward parts)
    metrics/<name>      <declared> (S,E,...) custom metrics declared before the run
  obs, action, gate, the pose fields, episode and step_in_episode are taken *before* the step
  (the gate and the action come from the same obs); reward, done, timeout and terms are the
  outcome of applying that action.

frames/  simulator state, frames_per_step rows per policy step, same chunking rules
    step                int64   (N,)        policy step of the row
    substep             int8    (N,)        physics substep within the step (0 in "policy" mode)
    root_pos            float32 (N,E,3)     world, m
    root_quat_xyzw      float32 (N,E,4)     world
    root_lin_vel        float32 (N,E,3)     world, m/s
    root_ang_vel        float32 (N,E,3)     world, rad/s
    dof_pos, dof_vel    float32 (N,E,J)     rad, rad/s
    torque              float32 (N,E,J)     N m, applied over the substep starting at this row
    body_pos            float32 (N,E,B,3)   world, m
    body_quat_xyzw      float32 (N,E,B,4)   world
    contact_force       float32 (N,E,B,3)   world, N
    episode_time_s      float32 (N,E)       s since the episode started
    target_future_pos   float32 (N,E,M,3)   target at episode_time_s + linspace(0.05, 1.0, 8) s
    target_future_quat_xyzw float32 (N,E,M,4)
  A row is the state *before* its physics substep: row time = (step*decimation + substep)*sim_dt_s.

model/  (optional) the robot model, so replay needs no other file
    mjcf                uint8 (bytes,)      the MJCF text, UTF-8; attrs: sha256, source
trajectory/  (optional) the EE target trajectories that were played
    ee_pos              float32 (n,T,3)     world, m, before centring; attrs: dt_s
    ee_axis_angle       float32 (n,T,3)     rotation vector, rad
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

# Root attribute names.
FORMAT_VERSION_ATTR = "format_version"
META_ATTRS = (
    "moetape_version",
    "log_id",
    "created_utc",
    "command_line",
    "config_json",
    "provenance_json",
    "expert_names",
    "joint_names",
    "body_names",
    "term_names",
    "metric_names",
    "n_envs",
    "obs_dim",
    "action_dim",
    "sim_dt_s",
    "decimation",
    "policy_dt_s",
    "frames_per_step",
    "frame_rate_hz",
    "backend",
)
LIST_ATTRS = ("expert_names", "joint_names", "body_names", "term_names", "metric_names")
STALE_AFTER_RESET_ATTR = "stale_after_reset"
OPTIONAL_ATTRS = (STALE_AFTER_RESET_ATTR,)
"""Root attributes a log may lack (see the module docstring); upgrade and salvage carry them over."""

# Commit state.
N_COMMITTED = "n_committed"
RUN_STATUS = "run_status"
END_TIME = "end_time_utc"
STATUS_RUNNING = "running"
STATUS_CLEAN = "clean"
STATUS_INTERRUPTED = "interrupted"
STATUS_FAILED = "failed"
STATUSES = (STATUS_RUNNING, STATUS_CLEAN, STATUS_INTERRUPTED, STATUS_FAILED)

# Groups.
STEPS = "steps"
FRAMES = "frames"
TERMS = "steps/terms"
METRICS = "steps/metrics"
MODEL_MJCF = "model/mjcf"
TRAJ_EE_POS = "trajectory/ee_pos"
TRAJ_EE_AXIS_ANGLE = "trajectory/ee_axis_angle"

N_FUTURE_TARGETS = 8

# A field spec: (shape after the leading row axis, with symbols; dtype). Symbols are resolved by
# `resolve_shape` against the log's sizes. "" is the per-row axis only (no env axis).
FieldSpec = Tuple[Tuple[str, ...], str]

STEP_FIELDS: Dict[str, FieldSpec] = {
    "t_wall_s": ((), "float64"),
    "obs": (("E", "O"), "float32"),
    "action": (("E", "A"), "float32"),
    "gate": (("E", "K"), "float32"),
    "gate_entropy": (("E",), "float32"),
    "reward": (("E",), "float32"),
    "done": (("E",), "bool"),
    "timeout": (("E",), "bool"),
    "episode": (("E",), "int32"),
    "step_in_episode": (("E",), "int32"),
    "ee_pos": (("E", "3"), "float32"),
    "ee_quat_xyzw": (("E", "4"), "float32"),
    "target_pos": (("E", "3"), "float32"),
    "target_quat_xyzw": (("E", "4"), "float32"),
}

FRAME_FIELDS: Dict[str, FieldSpec] = {
    "step": ((), "int64"),
    "substep": ((), "int8"),
    "root_pos": (("E", "3"), "float32"),
    "root_quat_xyzw": (("E", "4"), "float32"),
    "root_lin_vel": (("E", "3"), "float32"),
    "root_ang_vel": (("E", "3"), "float32"),
    "dof_pos": (("E", "J"), "float32"),
    "dof_vel": (("E", "J"), "float32"),
    "torque": (("E", "J"), "float32"),
    "body_pos": (("E", "B", "3"), "float32"),
    "body_quat_xyzw": (("E", "B", "4"), "float32"),
    "contact_force": (("E", "B", "3"), "float32"),
    "episode_time_s": (("E",), "float32"),
    "target_future_pos": (("E", "M", "3"), "float32"),
    "target_future_quat_xyzw": (("E", "M", "4"), "float32"),
}

UNITS: Dict[str, str] = {
    "t_wall_s": "s",
    "ee_pos": "m",
    "target_pos": "m",
    "root_pos": "m",
    "root_lin_vel": "m/s",
    "root_ang_vel": "rad/s",
    "dof_pos": "rad",
    "dof_vel": "rad/s",
    "torque": "N m",
    "body_pos": "m",
    "contact_force": "N",
    "episode_time_s": "s",
    "target_future_pos": "m",
}
FRAMES_WORLD = (
    "ee_pos",
    "ee_quat_xyzw",
    "target_pos",
    "target_quat_xyzw",
    "root_pos",
    "root_quat_xyzw",
    "root_lin_vel",
    "root_ang_vel",
    "body_pos",
    "body_quat_xyzw",
    "contact_force",
    "target_future_pos",
    "target_future_quat_xyzw",
)


def step_path(name: str) -> str:
    """Return the HDF5 path of a steps/ field ("obs", "terms/x", "metrics/y")."""
    return STEPS + "/" + name


def frame_path(name: str) -> str:
    """Return the HDF5 path of a frames/ field ("root_pos")."""
    return FRAMES + "/" + name


def resolve_shape(symbols: Tuple[str, ...], sizes: Dict[str, int]) -> Tuple[int, ...]:
    """Turn a symbolic shape such as ("E", "B", "3") into integers using ``sizes``."""
    return tuple(int(s) if s.isdigit() else int(sizes[s]) for s in symbols)


def field_specs(
    sizes: Dict[str, int], term_names: List[str], metrics: Dict[str, Tuple[Tuple[int, ...], str]]
) -> Dict[str, Tuple[Tuple[int, ...], str]]:
    """Return every dataset of a log as HDF5 path -> (row shape, dtype), for the given sizes.

    Args:
        sizes: E, O, A, K, J, B (M is fixed at 8).
        term_names: names under steps/terms/, each float32 (E,).
        metrics: custom metrics, name -> (shape after E, dtype).
    """
    full = dict(sizes, M=N_FUTURE_TARGETS)
    out: Dict[str, Tuple[Tuple[int, ...], str]] = {}
    for name, (shape, dtype) in STEP_FIELDS.items():
        out[step_path(name)] = (resolve_shape(shape, full), dtype)
    for name in term_names:
        out[TERMS + "/" + name] = ((full["E"],), "float32")
    for name, (mshape, mdtype) in metrics.items():
        out[METRICS + "/" + name] = ((full["E"],) + tuple(mshape), mdtype)
    for name, (shape, dtype) in FRAME_FIELDS.items():
        out[frame_path(name)] = (resolve_shape(shape, full), dtype)
    return out


def stream_of(path: str) -> int:
    """Return 0 for a steps/ dataset and 1 for a frames/ dataset (the n_committed column)."""
    return 1 if path.startswith(FRAMES + "/") else 0


def stale_rule(episode: Any, step_in_episode: Any) -> Any:
    """Return bool (...): the rows that are the first step of an episode after the env's first.

    The rows a log's ``stale_after_reset`` fields are stale on; episode and step_in_episode are the
    steps/ fields of the same rows (any matching shape). Use moetape.schema.reader.stale_mask,
    which also checks the attribute, rather than this alone.
    """
    import numpy as np

    return (np.asarray(step_in_episode) == 0) & (np.asarray(episode) > 0)
