"""The small protocol every simulator backend implements; the recorder never knows which one ran.

Timing contract (shared by every backend and by the log, see moetape.schema.layout):
- ``reset()`` returns the first observation.
- ``step(action)`` first captures the *pre-step* fields (the state at the same instant as the
  observation that produced ``action``), then applies the action for ``decimation`` physics
  substeps, resets the envs that ended, and returns the next observation.
- Frame rows are the simulator state *before* each physics substep (``substep_frames=True``:
  ``decimation`` rows per step) or before the policy step only (``substep_frames=False``: one row,
  identical to substep row 0). Row time is ``(step * decimation + substep) * sim_dt_s``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

try:  # Protocol is 3.8+, fine for the recorder's floor.
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore

N_FUTURE_TARGETS = 8
"""Future target poses stored per frame row, at episode_time + linspace(0.05, 1.0, 8) s (legacy)."""

FUTURE_TARGET_OFFSETS_S = np.linspace(0.05, 1.0, N_FUTURE_TARGETS)

PRE_FIELDS: Dict[str, Tuple[Tuple[int, ...], str]] = {
    "ee_pos": ((3,), "float32"),  # world frame, m
    "ee_quat_xyzw": ((4,), "float32"),  # world frame
    "target_pos": ((3,), "float32"),  # world frame, m
    "target_quat_xyzw": ((4,), "float32"),  # world frame
    "episode": ((), "int32"),  # per-env episode counter, 0-based
    "step_in_episode": ((), "int32"),  # 0 on the first step of an episode
}
"""Per-env fields captured before each policy step: name -> (shape after (E,), dtype)."""


def frame_fields(n_joints: int, n_bodies: int) -> Dict[str, Tuple[Tuple[int, ...], str]]:
    """Return the simulator-state fields of one frame row: name -> (shape after (E,), dtype)."""
    j, b = n_joints, n_bodies
    return {
        "root_pos": ((3,), "float32"),  # world, m
        "root_quat_xyzw": ((4,), "float32"),  # world
        "root_lin_vel": ((3,), "float32"),  # world, m/s
        "root_ang_vel": ((3,), "float32"),  # world, rad/s
        "dof_pos": ((j,), "float32"),  # rad
        "dof_vel": ((j,), "float32"),  # rad/s
        "torque": ((j,), "float32"),  # N m, applied over the substep starting at this row
        "body_pos": ((b, 3), "float32"),  # world, m
        "body_quat_xyzw": ((b, 4), "float32"),  # world
        "contact_force": ((b, 3), "float32"),  # world, N, net external contact force per body
        "episode_time_s": ((), "float32"),
        "target_future_pos": ((N_FUTURE_TARGETS, 3), "float32"),  # world, m
        "target_future_quat_xyzw": ((N_FUTURE_TARGETS, 4), "float32"),  # world
    }


@dataclass(frozen=True)
class BackendInfo:
    """What a backend tells the recorder before the run; all of it goes into the log."""

    name: str  # "mujoco" | "isaacgym"
    n_envs: int
    obs_dim: int
    action_dim: int
    joint_names: List[str]
    body_names: List[str]
    term_names: List[str]  # per-env float terms returned by every step (errors, reward parts)
    sim_dt_s: float
    decimation: int
    episode_length_s: float
    versions: Dict[str, str] = field(default_factory=dict)  # backend library versions
    model_xml: Optional[str] = None  # MJCF of the robot when the backend has one (replay renders it)
    model_sha256: Optional[str] = None
    device: str = "cpu"
    # Fields stale on the first step of every episode after an env's first (the log's optional
    # stale_after_reset attribute, see moetape.schema.layout): steps/ and frames/ paths; none by default.
    stale_after_reset: List[str] = field(default_factory=list)


@dataclass
class StepResult:
    """Outcome of one policy step for all E envs."""

    obs: np.ndarray  # float32 (E, O): next observation (after resets of ended envs)
    reward: np.ndarray  # float32 (E,)
    done: np.ndarray  # bool (E,): episode ended at this step (termination or timeout)
    timeout: np.ndarray  # bool (E,): ended by the time limit
    terms: Dict[str, np.ndarray]  # name -> float32 (E,), names = BackendInfo.term_names
    pre: Dict[str, np.ndarray]  # PRE_FIELDS, each (E, *shape)
    frames: Dict[str, np.ndarray]  # frame_fields(...), each (F, E, *shape), F = decimation or 1
    kept: Dict[str, np.ndarray] = field(default_factory=dict)  # DeviceBackend: host copies of ``keep``


class Backend(Protocol):
    """A vectorised simulator of E envs running the EE-tracking task."""

    info: BackendInfo

    def reset(self) -> np.ndarray:
        """Reset every env and return the observation, float32 (E, O)."""
        ...

    def step(
        self,
        action: np.ndarray,
        *,
        substep_frames: bool,
        frames_out: Optional[Dict[str, np.ndarray]] = None,
    ) -> StepResult:
        """Apply ``action`` float32 (E, A) for one policy step and return what happened.

        ``frames_out``: when given, arrays (F, E, *shape) with every frame field, to write the
        frame rows into (the log's own batch rows: LogWriter.frame_rows()); StepResult.frames is
        then that dict.
        """
        ...

    def close(self) -> None:
        """Release the simulator."""
        ...


class PendingStep(Protocol):
    """A policy step queued on the device whose log fields are on their way to the host."""

    def wait(self, frames_out: Optional[Dict[str, np.ndarray]] = None) -> StepResult:
        """Wait for the host copy (the step's one synchronisation point) and return the step.

        Frame rows go into ``frames_out`` when given (as for Backend.step). Idempotent. The arrays
        are views of the backend's host copy, valid until two more steps are launched, except
        ``obs``, a copy.
        """
        ...


class DeviceBackend(Backend, Protocol):
    """A backend whose state lives on the policy's torch device (MuJoCo Warp).

    The recorder feeds the policy ``obs_tensor`` and passes the action tensor back, with no host
    round trip, and launches step t + 1 before it waits for step t's copy to the host, so that copy
    overlaps the next step's compute (record/loop.py ``_device_loop``).
    """

    @property
    def obs_tensor(self) -> Any:
        """float32 (E, O) torch tensor on the device: the last reset's or launched step's observation."""
        ...

    def launch_step(
        self, action: Any, *, substep_frames: bool, keep: Optional[Dict[str, Any]] = None
    ) -> PendingStep:
        """Queue one policy step of ``action`` (E, A) on the device and the copy of its log fields, and
        of the ``keep`` tensors (StepResult.kept), to the host; return without waiting. At most two
        steps may be launched and not waited."""
        ...
