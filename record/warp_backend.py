"""The MuJoCo Warp backend: E envs of the EE-tracking task as worlds of one ``mujoco_warp`` model.

The robot, the task and the log fields are the MuJoCo backend's (moetape.record.mujoco_backend,
moetape.record.mujoco_task): 200 Hz physics, decimation 4, PD targets ``default + 0.25 * action``,
7 s episodes, the 109-dim observation, the reward terms, the terminations, per-env resets to the
spawn pose, and on every reset the trajectory episode drawn from (seed, env, episode)
(moetape.record.targets.episode_trajectory). The same seed, robot and trajectories give the same
initial states and targets on both backends; the physics differ in precision (MuJoCo Warp computes in
float32, MuJoCo in float64), see tests/record/test_warp_backend.py for the measured agreement.

Everything per step stays on the device: the simulator's arrays are torch tensors without a copy
(``wp.to_torch``), and the observation, targets, rewards, terminations and resets are torch
operations on them (moetape.record.warp_task). The policy reads ``obs_tensor`` and its action tensor
comes back to ``launch_step`` without a copy. Only what the log keeps (and the ``keep`` tensors: the
policy's action and gate) leaves the device, once per step (:class:`HostCopy`): on CUDA, one
asynchronous copy per field into pinned host memory on a copy stream, queued by ``launch_step``,
then one event wait in ``PendingStep.wait`` (the step's one synchronisation point). Two host copies
form a ring, so the recorder launches step t + 1 before it waits for step t: step t's copy and its
append to the log overlap step t + 1's compute. On warp's CPU device the fields are already host
memory (the same calls, nothing to wait for); the frame rows are then copied into the log's batch rows.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Dict, Optional, Tuple

import mujoco
import numpy as np
import torch
import warp as wp

from moetape.record import warp_task as wt
from moetape.record.backend import FUTURE_TARGET_OFFSETS_S, PRE_FIELDS, BackendInfo, StepResult, frame_fields
from moetape.record.mujoco_model import BUNDLED_XML, JOINT_NAMES, ModelIndices, load_model
from moetape.record.mujoco_task import (
    ACTION_SCALE,
    DECIMATION,
    OBS_DIM,
    POLICY_DT_S,
    SIM_DT_S,
    TARGET_TIMES_S,
    TERM_NAMES,
)
from moetape.record.targets import TargetTable, episode_trajectory
from moetape.record.trajectory import Trajectories
from moetape.record.warp_copy import HostCopy, PendingStep
from moetape.record.warp_errors import _put, warp_device
from moetape.schema.errors import InputError

wp.config.log_level = wp.LOG_WARNING  # warp prints every module it compiles or loads otherwise
import mujoco_warp as mjw  # noqa: E402  (after warp's configuration)

_TORCH_DTYPES = {"float32": torch.float32, "int32": torch.int32, "bool": torch.bool}
_STEP_FIELDS = {"obs": ((OBS_DIM,), "float32"), "done": ((), "bool"), "timeout": ((), "bool")}


def log_size_line(spec: Any, num_steps: int) -> str:
    """One line: the bytes the log gets per policy step and in total for ``num_steps`` (uncompressed)."""
    from moetape.schema import layout

    fps = spec.frames_per_step
    per_step = sum(
        int(np.prod(shape, dtype=np.int64))
        * np.dtype(dtype).itemsize
        * (fps if layout.stream_of(path) else 1)
        for path, (shape, dtype) in spec.datasets().items()
    )
    return f"log size: {_human(per_step)} per policy step ({spec.n_envs} envs, {fps} frame row(s) per step), {_human(per_step * num_steps)} for {num_steps} steps"


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"


class WarpBackend:
    """E envs of the EE-tracking task in MuJoCo Warp; implements moetape.record.backend.Backend.

    Args:
        trajectories: EE targets, N episodes of T samples at 200 Hz (world frame).
        n_envs: E, number of worlds.
        robot_xml: a self-contained MJCF as for MujocoBackend (default: the bundled model).
        seed: the run's seed; with (env, episode) it picks each episode's trajectory.
        episode_length_s: time limit of an episode.
        device: ``cpu`` (warp's CPU device, for tests) or ``cuda``/``cuda:N``.
        notice: called with one line for the user (the CPU device is for testing, first compile).
    """

    def __init__(
        self,
        trajectories: Trajectories,
        *,
        n_envs: int = 1,
        robot_xml: Optional[str] = None,
        seed: int = 0,
        episode_length_s: float = 7.0,
        device: str = "cpu",
        notice: Callable[[str], None] = lambda msg: None,
    ) -> None:
        if n_envs < 1:
            raise InputError(f"n_envs must be >= 1, got {n_envs}")
        path = robot_xml or BUNDLED_XML
        self.model, xml = load_model(path)
        self.model.opt.timestep = SIM_DT_S
        self.ix = ix = ModelIndices(self.model, path)
        self.n_envs = E = int(n_envs)
        self.seed = int(seed)
        self.max_steps = int(round(episode_length_s / POLICY_DT_S))
        self.wp_device = warp_device(device)
        if self.wp_device == "cpu":
            notice("--backend warp --device cpu: MuJoCo Warp on warp's CPU device is for testing; it is slow")
        self.torch_device = torch.device(self.wp_device)
        self._traj = TargetTable(trajectories)
        self._closed = False
        with wp.ScopedDevice(self.wp_device):
            self.m, self.d = _put(self.model, E, path, self.wp_device)
        self.info = BackendInfo(
            name="warp",
            n_envs=E,
            obs_dim=OBS_DIM,
            action_dim=18,
            joint_names=list(JOINT_NAMES),
            body_names=list(ix.body_names),
            term_names=list(TERM_NAMES),
            sim_dt_s=SIM_DT_S,
            decimation=DECIMATION,
            episode_length_s=float(episode_length_s),
            versions={
                "mujoco": mujoco.__version__,
                "mujoco_warp": _version("mujoco-warp"),
                "warp": wp.__version__,
            },
            model_xml=xml,
            model_sha256=hashlib.sha256(xml.encode("utf-8")).hexdigest(),
            device=self.wp_device,
        )
        dev, f64 = self.torch_device, torch.float64
        d = self.d
        # The simulator's arrays as torch tensors (no copy): written and read in place.
        self.s = wt.SimViews(
            qpos=wp.to_torch(d.qpos),
            qvel=wp.to_torch(d.qvel),
            ctrl=wp.to_torch(d.ctrl),
            xpos=wp.to_torch(d.xpos),
            xquat=wp.to_torch(d.xquat),
            site_xpos=wp.to_torch(d.site_xpos),
            cfrc_ext=wp.to_torch(d.cfrc_ext),
            actuator_force=wp.to_torch(d.actuator_force),
        )
        self.c = wt.TaskConstants.build(ix, self.model, dev)
        self._rows = torch.as_tensor(self._traj._rows, dtype=f64, device=dev)
        self._n_samples = int(self._traj._n_samples)
        self._done = torch.zeros(E, dtype=torch.bool, device=dev)
        self._done_wp = wp.from_torch(self._done, dtype=wp.bool)
        self.episode = torch.zeros(E, dtype=torch.int32, device=dev)
        self.step_in_episode = torch.zeros(E, dtype=torch.int32, device=dev)
        self.last_action = torch.zeros((E, 18), dtype=torch.float32, device=dev)
        self.target_pos = torch.zeros((E, len(TARGET_TIMES_S), 3), dtype=f64, device=dev)
        self.target_quat = torch.zeros((E, len(TARGET_TIMES_S), 4), dtype=f64, device=dev)
        self._envs = torch.arange(E, device=dev)
        self._traj_index = torch.zeros(E, dtype=torch.int64, device=dev)  # drawn on reset
        self._draws = torch.zeros((E, 0), dtype=torch.int64, device=dev)  # trajectory per (env, episode)
        self._draws_np = np.zeros((E, 0), np.int64)
        self._ensure_draws(0)
        self._offsets = {
            n: torch.as_tensor(
                np.concatenate(
                    [
                        (np.arange(n)[:, None] * SIM_DT_S + FUTURE_TARGET_OFFSETS_S).ravel(),
                        POLICY_DT_S + TARGET_TIMES_S,
                    ]
                ),
                dtype=f64,
                device=dev,
            )
            for n in (1, DECIMATION)
        }
        self._target_times = torch.as_tensor(TARGET_TIMES_S, dtype=f64, device=dev)
        self._frame_fields = frame_fields(18, len(ix.bodies))
        fields: Dict[str, Tuple[Tuple[int, ...], torch.dtype]] = {}
        for k, (shape, dt) in self._frame_fields.items():
            fields["frames/" + k] = ((DECIMATION, E) + shape, _TORCH_DTYPES[dt])
        for k, (shape, dt) in dict(PRE_FIELDS, **_STEP_FIELDS).items():
            fields[k] = ((E,) + shape, _TORCH_DTYPES[dt])
        fields["terms"] = ((len(TERM_NAMES), E), torch.float32)
        fields["overflow"] = ((E,), torch.int32)
        # Two host copies, a ring: step t's copy to the host overlaps step t + 1's compute.
        self._copies = [HostCopy(dev, fields) for _ in range(2)]
        self._next = 0  # the copy the next reset() or launch_step() fills
        self._obs = self._copies[0].dev["obs"]
        self._names = [k for k in fields if not k.startswith("frames/")] + [
            "frames/" + k for k in self._frame_fields
        ]
        self._stream = _warp_stream(dev)
        self.reset()

    # ---- protocol ------------------------------------------------------------------------------

    def reset(self) -> np.ndarray:
        """Reset every env to the spawn pose and return the observation, float32 (E, 109)."""
        self._check_open()
        out = self._take_copy()
        with self._scope():
            out.claim()
            self.episode.zero_()
            self._done.fill_(True)
            self._reset_done(full=True)
            self._observe_into(out.dev["obs"])
            out.start(["obs"])
        return out.wait()[0]["obs"].copy()

    @property
    def trajectory_index(self) -> np.ndarray:
        """int64 (E,): the trajectory episode each env plays in its current episode (a copy)."""
        return self._traj_index.cpu().numpy().copy()

    @property
    def obs_tensor(self) -> torch.Tensor:
        """float32 (E, 109) on the device: the observation of the last reset() or launched step.

        For a policy on the same device (no host round trip); valid until two more steps are launched."""
        return self._obs

    def step(
        self,
        action: Any,
        *,
        substep_frames: bool,
        frames_out: Optional[Dict[str, np.ndarray]] = None,
    ) -> StepResult:
        """Apply ``action`` float32 (E, 18), numpy or a torch tensor (on the device: no copy), for one
        policy step and return what happened (numpy copies; frame rows in ``frames_out`` when given).

        launch_step() then wait() at once: no overlap (the recorder's loop overlaps them)."""
        r = self.launch_step(action, substep_frames=substep_frames).wait(frames_out)
        terms = {k: v.copy() for k, v in r.terms.items()}
        return StepResult(
            obs=r.obs,
            reward=terms["reward_total"],
            done=r.done.copy(),
            timeout=r.timeout.copy(),
            terms=terms,
            pre={k: v.copy() for k, v in r.pre.items()},
            frames=r.frames,
        )

    def launch_step(
        self, action: Any, *, substep_frames: bool, keep: Optional[Dict[str, torch.Tensor]] = None
    ) -> PendingStep:
        """Queue one policy step of ``action`` float32 (E, 18) on the device and the copy of its log
        fields (and of the ``keep`` tensors, e.g. the policy's action and gate) to the host; return at
        once. ``PendingStep.wait()`` gives the StepResult (``kept``: the host copies of ``keep``).

        At most two steps may be launched and not waited: the third launch raises RuntimeError.
        """
        self._check_open()
        a = torch.as_tensor(action, dtype=torch.float32, device=self.torch_device)
        if tuple(a.shape) != (self.n_envs, 18):
            raise ValueError(f"action: shape {tuple(a.shape)}, expected ({self.n_envs}, 18)")
        n_rows = DECIMATION if substep_frames else 1
        keep = dict(keep or {})
        out = self._take_copy()
        with self._scope():
            out.claim()
            self._device_step(a, n_rows, out.dev)
            out.start(self._names, keep, frame_rows=n_rows)
        out.pending = PendingStep(self, out, n_rows, keep)
        return out.pending

    def close(self) -> None:
        """Release the device arrays; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.s = None  # type: ignore[assignment]
        self._copies = []
        self._obs = None  # type: ignore[assignment]
        self.m = self.d = None
        self._done_wp = None  # type: ignore[assignment]

    def _take_copy(self) -> HostCopy:
        """The next host copy of the ring, for a reset or step about to be queued."""
        out = self._copies[self._next]
        if out.pending is not None:
            raise RuntimeError(
                "WarpBackend: two steps are launched and not waited; wait() the older one before launching another"
            )
        self._next ^= 1
        self._obs = out.dev["obs"]
        return out

    def _finish(
        self,
        host: Dict[str, np.ndarray],
        kept: Dict[str, np.ndarray],
        n_rows: int,
        frames_out: Optional[Dict[str, np.ndarray]],
    ) -> StepResult:
        """The StepResult of a step whose fields reached the host (PendingStep.wait)."""
        if int(host["overflow"].max()) != 0:
            raise InputError(
                "MuJoCo Warp: contact or constraint buffers overflowed (overflow flags {}) in env(s) {}; "
                "the robot model makes more contacts than MuJoCo Warp allocated for it".format(
                    int(host["overflow"].max()), np.flatnonzero(host["overflow"])[:8].tolist()
                )
            )
        frames = frames_out if frames_out is not None else self._new_frames(n_rows)
        for k in self._frame_fields:
            np.copyto(frames[k], host["frames/" + k][:n_rows])
        episode_after = host["episode"].astype(np.int64) + host["done"]
        # +2: the step after this one may already be launched, and each step starts at most one episode
        self._ensure_draws(int(episode_after.max()) + 2)
        terms = host["terms"]
        return StepResult(
            obs=host["obs"].copy(),
            reward=terms[TERM_NAMES.index("reward_total")],
            done=host["done"],
            timeout=host["timeout"],
            terms=dict(zip(TERM_NAMES, terms)),
            pre={k: host[k] for k in PRE_FIELDS},
            frames=frames,
            kept=kept,
        )

    # ---- device work ---------------------------------------------------------------------------

    def _device_step(self, a: torch.Tensor, n_rows: int, out: Dict[str, torch.Tensor]) -> None:
        """Everything of one policy step on the device, into ``out`` (a HostCopy's ``dev``)."""
        s, c = self.s, self.c
        wt.pre_fields(
            self._pose(), self.target_pos, self.target_quat, self.episode, self.step_in_episode, out
        )
        s.ctrl[:, c.act] = (c.default_pos + ACTION_SCALE * a.double()).float()
        t = self.step_in_episode.double() * POLICY_DT_S
        pos, quat = wt.interpolate(
            self._rows, self._n_samples, self._traj.dt_s, self._traj_index, t[:, None] + self._offsets[n_rows]
        )
        n = n_rows * len(FUTURE_TARGET_OFFSETS_S)
        wt.frame_targets(
            pos[:, :n], quat[:, :n], out["frames/target_future_pos"], out["frames/target_future_quat_xyzw"]
        )
        for k in range(n_rows):
            state = (s.qpos.clone(), s.qvel.clone())  # before row k's substep
            mjw.step(self.m, self.d)
            mjw.rne_postconstraint(self.m, self.d)  # cfrc_ext: net contact force per body
            wt.frame_row(s, c, state, t + k * SIM_DT_S, out, k)
        rest = DECIMATION - n_rows
        for _ in range(rest):
            mjw.step(self.m, self.d)
        if rest:
            mjw.rne_postconstraint(self.m, self.d)
        mjw.kinematics(self.m, self.d)  # poses of the new state
        ee_pos, ee_quat, base_mat = self._pose()
        trunk_force = s.cfrc_ext[:, c.root_body, 3:6].double()
        self.step_in_episode += 1
        self.target_pos.copy_(pos[:, n:])
        self.target_quat.copy_(quat[:, n:])
        terminated = wt.evaluate(
            s.qpos.double(), ee_pos, ee_quat, base_mat, self.target_pos, self.target_quat,
            trunk_force, a, self.last_action, c, out["terms"],
        )  # fmt: skip
        torch.ge(self.step_in_episode, self.max_steps, out=out["timeout"])
        torch.logical_or(terminated, out["timeout"], out=self._done)
        out["done"].copy_(self._done)
        self.last_action.copy_(a)
        self.episode += self._done.int()
        overflow = wp.to_torch(self.d.overflow)
        out["overflow"].copy_(overflow)  # of this step's substeps, before any reset
        self._reset_done()
        self._observe_into(out["obs"])

    def _reset_done(self, full: bool = False) -> None:
        """Start the current episode of the envs in ``self._done``: spawn pose, zero velocity, its
        trajectory episode (from the draw table), step_in_episode 0, targets looked up at time 0.

        ``full`` (every env, at reset()): MuJoCo Warp's own reset_data and kinematics, then a snapshot
        of the spawn state. Otherwise (ended envs, every step, with nothing known on the host) the
        same by masked writes from that snapshot: the state MuJoCo Warp carries from one step to the
        next (qpos, qvel, ctrl, act, the solver's warm start, time) and the spawn pose's kinematics."""
        s, c, done = self.s, self.c, self._done
        col = done[:, None]
        if full:
            mjw.reset_data(self.m, self.d, reset=self._done_wp)
            spawn = torch.where(col, c.spawn_qpos, s.qpos)
            s.qpos.copy_(spawn)
            ctrl = s.ctrl.clone()
            ctrl[:, c.act] = torch.where(col, c.default_pos32, ctrl[:, c.act])
            s.ctrl.copy_(ctrl)
            mjw.kinematics(self.m, self.d)
            carried = (self.d.qvel, self.d.act, self.d.qacc_warmstart, self.d.time, self.d.overflow)
            self._carried = [wp.to_torch(a) for a in carried]
            self._spawn = [(t, t[0].clone()) for t in (s.qpos, s.ctrl, s.xpos, s.xquat, s.site_xpos)]
        else:
            for t in self._carried:
                if t.numel():
                    t.masked_fill_(done.view((-1,) + (1,) * (t.dim() - 1)), 0)
            for t, value in self._spawn:
                t.copy_(torch.where(done.view((-1,) + (1,) * (t.dim() - 1)), value, t))
        self.step_in_episode.masked_fill_(done, 0)
        self.last_action.masked_fill_(col, 0.0)
        drawn = self._draws[self._envs, self.episode.long()]
        self._traj_index = torch.where(done, drawn, self._traj_index)
        pos, quat = wt.interpolate(
            self._rows,
            self._n_samples,
            self._traj.dt_s,
            self._traj_index,
            (self.step_in_episode.double() * POLICY_DT_S)[:, None] + self._target_times,
        )
        self.target_pos.copy_(torch.where(col[:, :, None], pos, self.target_pos))
        self.target_quat.copy_(torch.where(col[:, :, None], quat, self.target_quat))

    def _pose(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """EE position, EE quaternion (wxyz) and base rotation matrix of the current kinematics, float64."""
        return wt.poses(self.s, self.c)

    def _observe_into(self, obs: torch.Tensor) -> None:
        ee_pos, ee_quat, base_mat = self._pose()
        wt.observe(
            self.s.qpos.double(), self.s.qvel.double(), ee_pos, ee_quat, base_mat,
            self.target_pos, self.target_quat, self.last_action, self.c, obs,
        )  # fmt: skip

    def _ensure_draws(self, n_episodes: int) -> None:
        """Have the trajectory draws of every env's episodes 0..n_episodes (at least) on the device."""
        have = self._draws_np.shape[1]
        if n_episodes < have:
            return
        want = max(16, 2 * have, n_episodes + 1)
        n = self._traj.n_episodes
        new = np.array(
            [[episode_trajectory(self.seed, e, k, n) for k in range(have, want)] for e in range(self.n_envs)],
            np.int64,
        ).reshape(self.n_envs, want - have)
        self._draws_np = np.concatenate([self._draws_np, new], axis=1)
        self._draws = torch.as_tensor(self._draws_np, device=self.torch_device)

    def _new_frames(self, n_rows: int) -> Dict[str, np.ndarray]:
        return {
            k: np.empty((n_rows, self.n_envs) + shape, np.float32)
            for k, (shape, _) in self._frame_fields.items()
        }

    def _scope(self) -> Any:
        return wt.Scope(self.wp_device, self._stream)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("WarpBackend used after close()")


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


def _warp_stream(dev: torch.device) -> Any:
    """On CUDA, warp launches on torch's current stream, so both queue in one order."""
    if dev.type != "cuda":
        return None
    return wp.stream_from_torch(torch.cuda.current_stream(dev))
