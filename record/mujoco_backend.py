"""The embedded MuJoCo backend: E envs of the EE-tracking task on one MjModel and E MjData, on the CPU.

The task reproduces the MoE env of DESIGN.md §5: 200 Hz physics, decimation 4 (50 Hz policy), PD
targets ``default + 0.25 * action`` (C-side PD actuators, ctrl = target, torque-limited by
``forcerange``, so ``mj_step(m, d, n)`` runs n substeps in one call), 7 s episodes, and the 109-dim
observation laid out in ``OBS_LAYOUT``; those constants, the rewards and the termination thresholds
are defined in moetape.record.mujoco_task.

An episode ends by termination (trunk contact force > 1 N, base below 0.12 m or tilted > 60 deg) or
at the time limit; ``done`` is either, ``timeout`` is the time limit reached (legacy ``time_outs``, set
even when a termination happens on the same step). Ended envs reset at once to the default pose.
On every reset each env draws the trajectory episode it plays, uniformly from the N, and plays it
from its first sample, as the legacy sequence sampler does; the draw of env ``i``'s ``k``-th episode
is seeded by (seed, i, k) (moetape.record.targets.episode_trajectory). Targets are xy-centred on the
world origin; the robot spawns at (-0.5, 0, h) facing +x. Per env and step, Python makes only the
physics calls; every env's MjData fields are read and written by address, and the task's maths done,
by compiled loops over all envs (moetape.record.kernels, numba).

Timing (see moetape.record.backend): after ``mj_step`` MuJoCo's derived fields (body poses, contacts,
actuator forces) still describe the state *before* that substep, so a frame row is read right after
its substep: qpos/qvel are copied before it, the rest after it. The poses for the observation are then
computed by ``mj_step1``, the first half of the next substep (see ``MujocoBackend._finish``).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

import mujoco
import numpy as np

from moetape.record import kernels
from moetape.record import poses as mm
from moetape.record.backend import FUTURE_TARGET_OFFSETS_S, PRE_FIELDS, BackendInfo, StepResult, frame_fields
from moetape.record.mujoco_model import BUNDLED_XML, JOINT_NAMES, ModelIndices, load_model
from moetape.record.mujoco_task import (  # the task's definition
    ACTION_SCALE,
    COS_MAX_TILT,
    DECIMATION,
    MIN_BASE_HEIGHT_M,
    NEG_ERROR_SCALES,
    OBS,
    OBS_COMMANDS,
    OBS_DIM,
    OBS_SCALES,
    OBS_TARGETS,
    POLICY_DT_S,
    REWARD_WEIGHTS,
    SIM_DT_S,
    SPAWN_XY,
    TARGET_TIMES_S,
    TERM_NAMES,
    TRUNK_CONTACT_N,
)
from moetape.record.targets import TargetTable, episode_rng
from moetape.record.trajectory import Trajectories
from moetape.schema.errors import InputError

# The task's constants as the compiled kernels take them (moetape.record.kernels).
_OBS_STARTS = np.array(
    [OBS[n].start for n in ("dof_pos", "dof_vel", "projected_gravity", "base_ang_vel")]
    + [OBS_TARGETS.start, OBS_COMMANDS.start]
    + [OBS[n].start for n in ("root_pos", "base_lin_vel", "yaw", "last_action")]
)
_OBS_SCALES = np.array([OBS_SCALES[k] for k in ("dof_vel", "base_ang_vel", "target_pos", "target_rot6d")])
_LIMITS = np.array([TRUNK_CONTACT_N, MIN_BASE_HEIGHT_M, COS_MAX_TILT])
_WEIGHTS = np.array([REWARD_WEIGHTS[name] for name in TERM_NAMES[3:]])
_ROW_FIELDS = (  # the frame fields kernels.frame_rows fills, in its argument order
    "root_pos",
    "root_quat_xyzw",
    "root_lin_vel",
    "root_ang_vel",
    "dof_pos",
    "dof_vel",
    "torque",
    "body_pos",
    "body_quat_xyzw",
    "contact_force",
    "episode_time_s",
)


class _EnvFields:
    """Some float64 MjData fields of every env, by address, for kernels.gather: one compiled call
    copies them all into a (E, width) array, far cheaper than numpy copies from E views.

    The addresses are valid while the MjData objects live: the backend holds them (``datas``) until
    close(), which first calls :meth:`release`, leaving no env to read or write.
    """

    def __init__(self, per_env: List[Tuple[np.ndarray, ...]]) -> None:
        for fields in per_env:
            for a in fields:
                if a.dtype != np.float64 or not a.flags.c_contiguous:
                    raise ValueError(f"MjData field: {a.dtype}, contiguous {a.flags.c_contiguous}")
        self.addresses = np.array([[a.ctypes.data for a in fields] for fields in per_env], np.int64)
        self.sizes = np.array([a.size for a in per_env[0]], np.int64)
        self.width = int(self.sizes.sum())

    def __call__(self, out: np.ndarray) -> np.ndarray:
        """Copy the fields of every env into ``out`` float64 (E, width), end to end per env."""
        kernels.gather(self.addresses, self.sizes, out)
        return out

    def release(self) -> None:
        self.addresses = self.addresses[:0]


class MujocoBackend:
    """E envs of the EE-tracking task in MuJoCo; implements moetape.record.backend.Backend.

    Args:
        trajectories: EE targets, N episodes of T samples at 200 Hz (world frame).
        n_envs: E, number of envs.
        robot_xml: path to a self-contained MJCF with the 18 joints of :data:`JOINT_NAMES`, one joint
            actuator each whose ctrl is the PD target (``<position kp kv>`` or ``<general>`` affine), a
            free joint on the trunk and an ``end_effector`` site; optional keyframe "default" (default
            pose, spawn height). Default: the bundled model. Its timestep is set to 0.005 s.
        seed: the run's seed: with (env, episode) it seeds which trajectory episode each env plays on
            each episode and, when ``init_noise_rad > 0``, that episode's reset noise
            (moetape.record.targets.episode_rng).
        episode_length_s: time limit of an episode.
        init_noise_rad: uniform noise added to the default joint positions at every reset.
        n_threads: physics threads; envs are split into this many fixed chunks and stepped in
            parallel (MuJoCo releases the GIL). Results do not depend on it. Default: one thread
            per 16 envs, at most 4 and at most half the CPUs.
    """

    def __init__(
        self,
        trajectories: Trajectories,
        *,
        n_envs: int = 1,
        robot_xml: Optional[str] = None,
        seed: int = 0,
        episode_length_s: float = 7.0,
        init_noise_rad: float = 0.0,
        n_threads: Optional[int] = None,
    ) -> None:
        if n_envs < 1:
            raise InputError(f"n_envs must be >= 1, got {n_envs}")
        path = robot_xml or BUNDLED_XML
        self.model, xml = load_model(path)
        self.model.opt.timestep = SIM_DT_S
        self.ix = ModelIndices(self.model, path)
        self.n_envs = E = int(n_envs)
        self.max_steps = int(round(episode_length_s / POLICY_DT_S))
        self.seed = int(seed)
        self._noise = float(init_noise_rad)
        if n_threads is None:
            n_threads = min(4, (os.cpu_count() or 1) // 2, n_envs // 16)  # leave cores to policy/writer
        self.n_threads = max(1, min(int(n_threads), int(n_envs)))  # physics threads in use
        self._pool: Optional[ThreadPoolExecutor] = None
        self._split = self.model.opt.integrator != mujoco.mjtIntegrator.mjINT_RK4
        self._prepared = False  # every env's mj_step1 ran on its current state (see _finish)
        self._traj = TargetTable(trajectories)
        # Fixed for the backend's life: _cache_views keeps the addresses of their fields.
        self.datas = [mujoco.MjData(self.model) for _ in range(E)]
        self.info = BackendInfo(
            name="mujoco",
            n_envs=E,
            obs_dim=OBS_DIM,
            action_dim=18,
            joint_names=list(JOINT_NAMES),
            body_names=list(self.ix.body_names),
            term_names=list(TERM_NAMES),
            sim_dt_s=SIM_DT_S,
            decimation=DECIMATION,
            episode_length_s=float(episode_length_s),
            versions={"mujoco": mujoco.__version__},
            model_xml=xml,
            model_sha256=hashlib.sha256(xml.encode("utf-8")).hexdigest(),
            device="cpu",
        )
        self._fields = frame_fields(18, len(self.ix.bodies))
        self._cache_views()
        bounds = np.linspace(0, E, self.n_threads + 1).astype(int)
        self._chunks = [self.datas[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
        if self.n_threads > 1:
            self._pool = ThreadPoolExecutor(self.n_threads, thread_name_prefix="moetape-mujoco")
        self.episode = np.zeros(E, np.int32)
        self.step_in_episode = np.zeros(E, np.int32)
        self.last_action = np.zeros((E, 18), np.float32)
        self._state = np.zeros((E, self.model.nq + self.model.nv))  # gathered in one copy
        self.qpos, self.qvel = self._state[:, : self.model.nq], self._state[:, self.model.nq :]
        self.ee_pos = np.zeros((E, 3))
        self.ee_quat = np.zeros((E, 4))  # wxyz
        self.base_mat = np.zeros((E, 3, 3))
        self.target_pos = np.zeros((E, len(TARGET_TIMES_S), 3))  # at TARGET_TIMES_S after episode time
        self.target_quat = np.zeros((E, len(TARGET_TIMES_S), 4))
        self._traj_index = np.zeros(E, np.int64)  # trajectory episode each env plays (drawn on reset)
        self._ee_site_rmul = mm.right_mul_matrix(self.ix.ee_site_quat)
        # Per frame-row count: the times looked up each step, after the step's episode time: each row's
        # future targets (row r at r substeps), then the next observation's targets (one step later).
        self._lookup_offsets = {
            n: np.concatenate(
                [
                    (np.arange(n)[:, None] * SIM_DT_S + FUTURE_TARGET_OFFSETS_S).ravel(),
                    POLICY_DT_S + TARGET_TIMES_S,
                ]
            )
            for n in (1, DECIMATION)
        }
        self._row_states = np.empty((DECIMATION,) + self._state.shape)  # substep rows' states
        self.reset()  # a valid state even if the caller steps first

    # ---- per-env C calls and copies ------------------------------------------------------------

    def _cache_views(self) -> None:
        """Address the MjData fields read or written every step (valid for the data's lifetime).

        Read per env (each gathered for all envs in one compiled call): the state (qpos, qvel); the
        EE pose (site position, EE body quaternion) and the trunk's contact force; for a frame row, the
        actuator forces and the robot bodies' positions, quaternions and spatial forces (rows
        ``_body_rows`` of the span from the first robot body to the last).
        """
        ix, ds = self.ix, self.datas
        lo, hi = int(ix.bodies.min()), int(ix.bodies.max()) + 1
        self._body_rows = ix.bodies - lo
        self._read_state = _EnvFields([(d.qpos, d.qvel) for d in ds])
        self._read_pose = _EnvFields(
            [(d.site_xpos[ix.ee_site], d.xquat[ix.ee_body], d.cfrc_ext[ix.root_body, 3:]) for d in ds]
        )
        self._read_derived = _EnvFields(
            [(d.actuator_force, d.xpos[lo:hi], d.xquat[lo:hi], d.cfrc_ext[lo:hi]) for d in ds]
        )
        self._pose = np.empty((self.n_envs, self._read_pose.width))  # ee (7), trunk force (3)
        self._derived = np.empty((DECIMATION, self.n_envs, self._read_derived.width))  # per frame row
        self._ctrl = _EnvFields([(d.ctrl,) for d in ds])

    def _substeps(self, n: int, *, contacts: bool, finish: bool) -> None:
        """Run ``n`` (may be 0) physics substeps in every env, then the contact forces if asked, then,
        if ``finish``, the new state's position and velocity stages (see :meth:`_finish`)."""
        if self._pool is None:
            self._substeps_chunk(self.datas, n, contacts, finish)
        else:
            futures = [self._pool.submit(self._substeps_chunk, c, n, contacts, finish) for c in self._chunks]
            for f in futures:
                f.result()
        if n or finish:
            self._prepared = finish and self._split

    def _substeps_chunk(self, datas: List[mujoco.MjData], n: int, contacts: bool, finish: bool) -> None:
        m, step, rne = self.model, mujoco.mj_step, mujoco.mj_rnePostConstraint
        half = n and self._prepared  # mj_step1 already ran on this state: its substep needs mj_step2
        for d in datas:
            if half:
                mujoco.mj_step2(m, d)
                if n > 1:
                    step(m, d, n - 1)
            elif n:
                step(m, d, n)
            if contacts:
                rne(m, d)  # fills cfrc_ext: net contact force per body
            if finish:
                self._finish(d)

    def _finish(self, d: mujoco.MjData) -> None:
        """Compute the state's poses (for the observation). With MuJoCo's split step, ``mj_step1``:
        kinematics, collisions and velocities, the first half of the next substep, which then runs
        ``mj_step2`` only (same results as ``mj_step``, with the kinematics not computed twice).
        RK4 has no split step (``mj_step2`` would integrate with Euler): plain ``mj_kinematics``."""
        if self._split:
            mujoco.mj_step1(self.model, d)
        else:
            mujoco.mj_kinematics(self.model, d)

    def _refresh_state(self) -> None:
        """Copy qpos, qvel and the EE pose (needs fresh kinematics) of every env into the state cache,
        and the trunk's contact force into ``_pose[:, 7:]``."""
        self._read_state(self._state)
        self._read_pose(self._pose)
        kernels.refresh_poses(
            self._state,
            self._pose,
            self._ee_site_rmul,
            self.ix.root_qpos,
            self.ee_pos,
            self.ee_quat,
            self.base_mat,
        )

    def _refresh_targets(self, envs: np.ndarray) -> None:
        """Look up the targets of ``envs`` at their episode time and at the observation's future times."""
        t = self.step_in_episode[envs] * POLICY_DT_S
        self.target_pos[envs], self.target_quat[envs] = self._traj.lookup(
            self._traj_index[envs], t[:, None] + TARGET_TIMES_S
        )

    # ---- protocol ------------------------------------------------------------------------------

    def reset(self) -> np.ndarray:
        """Reset every env to the default pose and return the observation, float32 (E, 109)."""
        E = self.n_envs
        self.episode[:] = 0
        self._reset_envs(np.arange(E))
        self._prepared = self._split
        return self._observe()

    @property
    def trajectory_index(self) -> np.ndarray:
        """int64 (E,): the trajectory episode each env plays in its current episode (a copy)."""
        return self._traj_index.copy()

    def _reset_envs(self, envs: np.ndarray) -> None:
        """Start the current episode of ``envs`` int (n,): draw its trajectory episode (and reset noise),
        put the robot at the spawn pose with zero velocity, step_in_episode 0."""
        ix, m = self.ix, self.model
        for i in envs:
            rng = episode_rng(self.seed, i, self.episode[i])
            self._traj_index[i] = rng.integers(self._traj.n_episodes)  # = episode_trajectory(...)
            d = self.datas[i]
            mujoco.mj_resetData(m, d)
            q = self.ix.default_pos
            if self._noise > 0:
                q = q + rng.uniform(-self._noise, self._noise, 18)
            d.qpos[ix.root_qpos : ix.root_qpos + 7] = [SPAWN_XY[0], SPAWN_XY[1], ix.spawn_z, 1, 0, 0, 0]
            d.qpos[ix.qpos] = q
            d.ctrl[ix.act] = ix.default_pos
            self._finish(d)
        self.step_in_episode[envs] = 0
        self.last_action[envs] = 0.0
        self._refresh_state()
        self._refresh_targets(envs)

    def step(
        self,
        action: np.ndarray,
        *,
        substep_frames: bool,
        frames_out: Optional[Dict[str, np.ndarray]] = None,
    ) -> StepResult:
        """Apply ``action`` float32 (E, 18) for one policy step (4 substeps) and return what happened.

        ``frames_out``: arrays to write the frame rows into (LogWriter.frame_rows()), else new ones.
        """
        if not self.datas:
            raise RuntimeError("MujocoBackend.step() after close()")
        a = np.asarray(action, np.float32)
        if a.shape != (self.n_envs, 18):
            raise ValueError(f"action: shape {a.shape}, expected ({self.n_envs}, 18)")
        pre = self._pre_fields()
        kernels.set_ctrl(a, self.ix.default_pos, ACTION_SCALE, self._ctrl.addresses, self.ix.act)
        n_rows = DECIMATION if substep_frames else 1
        frames = frames_out if frames_out is not None else self._new_frames(n_rows)
        next_targets = self._look_up_targets(frames, n_rows)
        self._physics_step(frames, n_rows)
        self._refresh_state()
        trunk_force = self._pose[:, 7:]
        self.step_in_episode += 1
        self.target_pos[:], self.target_quat[:] = next_targets
        terms, terminated = self._evaluate(a, trunk_force)
        timeout = self.step_in_episode >= self.max_steps
        done = terminated | timeout
        self.last_action[:] = a
        if done.any():
            ended = np.flatnonzero(done)
            self.episode[ended] += 1
            self._reset_envs(ended)
        return StepResult(
            obs=self._observe(),
            reward=terms["reward_total"],
            done=done,
            timeout=timeout,
            terms=terms,
            pre=pre,
            frames=frames,
        )

    def _physics_step(self, frames: Dict[str, np.ndarray], n_rows: int) -> None:
        """Run the policy step's substeps, filling frame rows 0..n_rows-1 (one per substep from the
        first), and leave fresh poses and the last substep's contact forces for the observation."""
        states = self._state[None] if n_rows == 1 else self._row_states[:n_rows]  # (rows, E, nq + nv)
        for k in range(n_rows):
            if k:  # the state before row k's substep (row 0's: the cache)
                self._read_state(states[k])
            elif n_rows > 1:
                np.copyto(states[0], self._state)
            self._substeps(1, contacts=True, finish=False)
            self._read_derived(self._derived[k])  # before _finish: poses before the substep
        self._write_frame_rows(frames, states)
        rest = DECIMATION - n_rows  # with none left, the last row's substep gave the contact forces
        self._substeps(rest, contacts=rest > 0, finish=True)

    def _new_frames(self, n_rows: int) -> Dict[str, np.ndarray]:
        return {
            k: np.empty((n_rows, self.n_envs) + shape, np.float32) for k, (shape, _) in self._fields.items()
        }

    def close(self) -> None:
        """Release the MjData objects and the physics threads; idempotent."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._chunks = []
        for fields in (self._read_state, self._read_pose, self._read_derived, self._ctrl):
            fields.release()
        self.datas = []

    # ---- fields --------------------------------------------------------------------------------

    def _pre_fields(self) -> Dict[str, np.ndarray]:
        """PRE_FIELDS at the instant of the current observation (new arrays, of PRE_FIELDS' dtypes)."""
        out = {
            "ee_pos": self.ee_pos,
            "ee_quat_xyzw": mm.wxyz_to_xyzw(self.ee_quat),
            "target_pos": self.target_pos[:, 0],
            "target_quat_xyzw": mm.wxyz_to_xyzw(self.target_quat[:, 0]),
            "episode": self.episode,
            "step_in_episode": self.step_in_episode,
        }
        return {k: np.array(out[k], dtype=PRE_FIELDS[k][1]) for k in PRE_FIELDS}

    def _write_frame_rows(self, frames: Dict[str, np.ndarray], states: np.ndarray) -> None:
        """Fill every row from the state before its substep, ``states`` float64 (rows, E, nq + nv), and
        what MuJoCo derived during that substep (``_derived``: poses before it, its forces)."""
        ix, m, n_rows = self.ix, self.model, len(states)
        kernels.frame_rows(
            states,
            self._derived[:n_rows],
            m.nq,
            m.nu,
            ix.root_qpos,
            ix.root_dof,
            ix.qpos,
            ix.dof,
            ix.act,
            self._body_rows,
            self.step_in_episode * POLICY_DT_S,
            SIM_DT_S,
            *(frames[name] for name in _ROW_FIELDS),
        )

    def _look_up_targets(self, frames: Dict[str, np.ndarray], n_rows: int) -> Tuple[np.ndarray, np.ndarray]:
        """One trajectory lookup per step: fill the future targets of frame rows 0..n_rows-1 and return
        the targets of the next observation (TARGET_TIMES_S after the next step's episode time),
        float64 (E, 5, 3) and (E, 5, 4) wxyz. Envs that end this step look theirs up again on reset."""
        t = self.step_in_episode * POLICY_DT_S  # (E,)
        pos, quat = self._traj.lookup(self._traj_index, t[:, None] + self._lookup_offsets[n_rows])
        n = n_rows * len(FUTURE_TARGET_OFFSETS_S)
        kernels.frame_targets(
            pos[:, :n], quat[:, :n], frames["target_future_pos"], frames["target_future_quat_xyzw"]
        )
        return pos[:, n:], quat[:, n:]

    # ---- task ----------------------------------------------------------------------------------

    def _evaluate(self, a: np.ndarray, trunk_force: np.ndarray) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
        """Tracking errors, reward parts and termination for the post-step state; float32 (E,) each
        (rows of one (len(TERM_NAMES), E) array), and the termination bool (E,)."""
        terms = np.empty((len(TERM_NAMES), self.n_envs), np.float32)
        terminated = np.empty(self.n_envs, np.bool_)
        kernels.evaluate(
            self.qpos,
            self.ee_pos,
            self.ee_quat,
            self.base_mat,
            self.target_pos,
            self.target_quat,
            trunk_force,
            a,
            self.last_action,
            self.ix.root_qpos,
            _LIMITS,
            _WEIGHTS,
            NEG_ERROR_SCALES,
            terms,
            terminated,
        )
        return dict(zip(TERM_NAMES, terms)), terminated

    def _observe(self) -> np.ndarray:
        """Build the 109-dim observation float32 (E, 109) from the state cache, as in OBS_LAYOUT."""
        obs = np.empty((self.n_envs, OBS_DIM), np.float32)
        ix = self.ix
        kernels.observe(
            self.qpos,
            self.qvel,
            self.ee_pos,
            self.ee_quat,
            self.base_mat,
            self.target_pos,
            self.target_quat,
            self.last_action,
            ix.default_pos,
            ix.qpos,
            ix.dof,
            ix.root_qpos,
            ix.root_dof,
            _OBS_STARTS,
            _OBS_SCALES,
            obs,
        )
        return obs
