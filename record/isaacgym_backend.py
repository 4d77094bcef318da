"""Isaac Gym backend: an adapter around the user's UMI-on-Legs-style ``IsaacGymEnv``.

UNVERIFIED ON REAL ISAAC GYM. isaacgym is not on PyPI and no machine here has it. The adapter is
written against the attribute names below, read from the public UMI-on-Legs code
(``mani-centric-wbc/legged_gym/env/isaacgym/{env,state,task,control}.py`` and ``scripts/play.py``),
and tested against a stand-in isaacgym package and env codebase (``tests/data/isaacgym_standin``).

The env attributes it reads, their shapes and frames are tabled in ``moetape.record.isaacgym_names``
(:class:`IsaacGymNames`; pass ``names=IsaacGymNames(...)`` to change any of them).

Timing (see ``moetape.record.backend``): pre-step fields and frame row 0 are read before
``env.step``. Physics substeps run inside ``env.step``, so substep rows (``substep_frames=True``)
need the env's per-substep ``callback`` keyword (UMI-on-Legs has it; it is what the legacy
headless ``logs.zarr`` rows came from). An env whose ``step`` has no such keyword cannot give
substep rows: the adapter raises and tells the user to record with ``frames=policy``. The ``torque``
of row f is the torque applied over substep f, read at the next callback (or after the step for the
last substep). Without a callback, the single row's torque is the one read after the step, that is
the last substep's torque, an approximation.

Building from ``config.pkl``: see ``moetape.record.isaacgym_config`` (:func:`build_env_config`, the
play overrides) and :meth:`IsaacGymBackend.__init__`. isaacgym must be imported before torch (an
Isaac Gym rule): call :func:`import_isaacgym` before anything imports torch.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from moetape.record.backend import (
    FUTURE_TARGET_OFFSETS_S,
    PRE_FIELDS,
    BackendInfo,
    StepResult,
    frame_fields,
)
from moetape.record.isaacgym_config import DEVICE_KEYS as DEVICE_KEYS
from moetape.record.isaacgym_config import ISAACGYM_MISSING as ISAACGYM_MISSING
from moetape.record.isaacgym_config import NUM_ENVS_PATHS as NUM_ENVS_PATHS
from moetape.record.isaacgym_config import PLAY_OVERRIDES as PLAY_OVERRIDES
from moetape.record.isaacgym_config import TRAJECTORY_PATH_KEYS as TRAJECTORY_PATH_KEYS
from moetape.record.isaacgym_config import build_env, load_config
from moetape.record.isaacgym_config import build_env_config as build_env_config
from moetape.record.isaacgym_config import import_isaacgym as import_isaacgym
from moetape.record.isaacgym_config import instantiate as instantiate
from moetape.record.isaacgym_names import DEFAULT_NAMES as DEFAULT_NAMES
from moetape.record.isaacgym_names import IsaacGymNames as IsaacGymNames
from moetape.record.isaacgym_names import first_attr as _first_attr
from moetape.record.isaacgym_names import get_path as _get_path
from moetape.record.isaacgym_names import gym_versions as _versions
from moetape.record.isaacgym_names import host_copy as _np
from moetape.record.poses import matrix_to_quat_xyzw
from moetape.record.safe_pickle import PathLike
from moetape.schema.errors import InputError

STALE_AFTER_RESET = [
    "steps/ee_pos",
    "steps/ee_quat_xyzw",
    "frames/body_pos",
    "frames/body_quat_xyzw",
    "frames/contact_force",
]
"""What is stale on a new episode's first step (the log's stale_after_reset attribute):
``reset_idx`` writes root and dof state in place, but rigid-body poses and contact forces refresh
only at the next ``gym.simulate``, so the pre-step EE pose and frame row 0's rigid-body rows hold the
previous episode's last values. Kept as read (the legacy scripts logged the same) and marked."""

SUBSTEP_FRAMES_UNSUPPORTED = (
    "this Isaac Gym env steps its {decimation} physics substeps inside env.step() and its step() takes no "
    "{kwarg!r} keyword, so substep frames cannot be read from outside; record with frames=policy "
    "(one frame row per policy step)"
)


# ------------------------------------------------------------------------------------ the adapter


class IsaacGymBackend:
    """The Backend protocol over a UMI-on-Legs-style Isaac Gym env (see the module docstring).

    Args:
        env: an already-built env (tests pass a stand-in); when given, nothing is imported or built.
        config: the resolved hydra config dict; else read from ``config_path`` or from
            ``config.pkl`` next to ``checkpoint_path`` with the restricted builtins unpickler.
        trajectory_path: patched into each task's ``sequence_sampler.file_path``.
        num_envs, device, visualize, seed, keep_terminations: play settings (see
            :func:`build_env` and :func:`build_env_config`); ``seed=None`` keeps the training's.
        codebase: folder holding the training code's ``legged_gym/``, put first on ``sys.path``.
        names: where to find things on the env (:class:`IsaacGymNames`).
        term_names: the per-env infos terms to record; ``None`` takes them from the infos of the
            step inside the env's own ``reset()`` (UMI-on-Legs resets with one zero-action step).

    The constructor makes the run's one initial ``env.reset()`` (as the legacy scripts do, and
    nothing more: no probe step spends the env's random streams); the first :meth:`reset` returns
    its observation.
    """

    def __init__(
        self,
        *,
        env: Any = None,
        config: Optional[Mapping[str, Any]] = None,
        config_path: Optional[PathLike] = None,
        checkpoint_path: Optional[PathLike] = None,
        trajectory_path: Optional[PathLike] = None,
        num_envs: int = 1,
        device: str = "cuda:0",
        visualize: bool = False,
        seed: Optional[int] = None,
        keep_terminations: bool = False,
        codebase: Optional[PathLike] = None,
        names: IsaacGymNames = DEFAULT_NAMES,
        term_names: Optional[Sequence[str]] = None,
    ) -> None:
        self.names = names
        self.applied_overrides: List[str] = []
        self.seed = seed
        self.visualize = bool(visualize)
        self._owns_env = env is None
        self._closed = False
        if env is None:
            if visualize:
                _check_visualize(num_envs)
            if config is None:
                config = load_config(config_path, checkpoint_path)
            env, self.applied_overrides, self.seed = build_env(
                config, num_envs=num_envs, device=device, trajectory_path=trajectory_path,
                visualize=visualize, seed=seed, keep_terminations=keep_terminations, codebase=codebase,
            )  # fmt: skip
        self.env = env
        self.n_envs = int(env.num_envs)
        self.device = str(getattr(env, "device", device))
        self._task = self._find_task()
        self._ee_index = int(getattr(self._task, names.task_ee_body_index))
        self.decimation = self._read_decimation()
        self._callback_ok = self._step_accepts_callback()
        self._episode = np.zeros(self.n_envs, np.int32)
        self._step_in_episode = np.zeros(self.n_envs, np.int32)
        obs_dim, probed = self._first_reset()
        dof_pos = self._state_array(names.dof_pos)
        body_pos = self._state_array(names.body_pos)
        self.info = BackendInfo(
            name="isaacgym",
            n_envs=self.n_envs,
            obs_dim=obs_dim,
            action_dim=int(env.num_actions),
            joint_names=self._joint_names(dof_pos.shape[1]),
            body_names=self._body_names(body_pos.shape[1]),
            term_names=list(term_names) if term_names is not None else probed,
            sim_dt_s=float(_first_attr(env, names.sim_dt)),
            decimation=self.decimation,
            episode_length_s=float(_first_attr(env, names.episode_length_s)),
            versions=_versions(),
            device=self.device,
            stale_after_reset=list(STALE_AFTER_RESET),
        )
        self._frame_fields = frame_fields(dof_pos.shape[1], body_pos.shape[1])

    # -------------------------------------------------------------------------- protocol

    def reset(self) -> np.ndarray:
        """Reset every env and return the observation, float32 (E, O).

        The first call returns the observation of the constructor's initial ``env.reset()``.
        """
        self._episode[:] = 0
        self._step_in_episode[:] = 0
        if self._first_obs is not None:
            obs, self._first_obs = self._first_obs, None
            return obs
        torch = _torch()
        with torch.inference_mode():
            out = self.env.reset()
        obs = out[0] if isinstance(out, tuple) else out
        return _np(obs, np.float32).reshape(self.n_envs, -1)

    def step(
        self,
        action: np.ndarray,
        *,
        substep_frames: bool,
        frames_out: Optional[Dict[str, np.ndarray]] = None,
    ) -> StepResult:
        """Apply ``action`` float32 (E, A) for one policy step and return what happened.

        ``frames_out``: arrays to stack the frame rows into (LogWriter.frame_rows()), else new ones.
        """
        if substep_frames and not self._callback_ok:
            raise InputError(
                SUBSTEP_FRAMES_UNSUPPORTED.format(
                    decimation=self.decimation, kwarg=self.names.step_callback_kwarg
                )
            )
        torch = _torch()
        pre = self._capture_pre()
        first = self._capture_frame()
        rows: List[Dict[str, np.ndarray]] = []
        torques: List[np.ndarray] = []

        def on_substep(_env: Any) -> None:
            if rows:  # the torque of the substep that just ended
                torques.append(self._torque())
            rows.append(first if not rows else (self._capture_frame() if substep_frames else {}))

        kwargs: Dict[str, Any] = {}
        if self._callback_ok and self.names.step_callback_kwarg:
            kwargs[self.names.step_callback_kwarg] = on_substep
        with torch.inference_mode():
            actions = torch.as_tensor(np.asarray(action, np.float32), device=self.device)
            out = self.env.step(actions.reshape(self.n_envs, -1), **kwargs)
        obs, _privileged, reward, done, infos = out
        torques.append(self._torque())
        if self.visualize:
            self._draw()
        if self._callback_ok and len(rows) != self.decimation:
            raise RuntimeError(
                f"Isaac Gym env ran {len(rows)} physics substeps in one step, expected {self.decimation}; "
                f"is its decimation randomised?"
            )
        frames = self._stack_frames(rows if substep_frames else [first], torques, frames_out)
        done_np = _np(done, np.bool_).reshape(self.n_envs)
        timeout = self._timeout(infos, done_np)
        self._advance_episodes(done_np)
        return StepResult(
            obs=_np(obs, np.float32).reshape(self.n_envs, -1),
            reward=_np(reward, np.float32).reshape(self.n_envs),
            done=done_np,
            timeout=timeout,
            terms=self._terms(infos),
            pre=pre,
            frames=frames,
        )

    def close(self) -> None:
        """Release the simulator once: ``env.close()`` if it has one, else destroy viewer and sim.

        UMI-on-Legs envs have no ``close()``; their ``__del__`` destroys the viewer when it is not
        None and the sim when the env has one (a second destroy segfaults). So the adapter destroys
        both here and then sets ``env.viewer = None`` and removes ``env.sim``: ``__del__`` has nothing
        left to destroy.
        """
        if self._closed:
            return
        self._closed = True
        env = self.env
        if callable(getattr(env, "close", None)):
            env.close()
            return
        gym = getattr(env, "gym", None)
        if not self._owns_env or gym is None:
            return
        viewer = getattr(env, "viewer", None)
        if viewer is not None:
            env.viewer = None
            gym.destroy_viewer(viewer)
        sim = env.__dict__.pop("sim", None) if hasattr(env, "__dict__") else None
        if sim is not None:
            gym.destroy_sim(sim)

    def _draw(self) -> None:
        """Draw the env's viewer (headless: nothing), as the legacy --visualize did every step.

        A closed window ends the run as Ctrl-C does (the env's own render() would sys.exit()).
        """
        env = self.env
        viewer = getattr(env, "viewer", None)
        if viewer is None:
            return
        if env.gym.query_viewer_has_closed(viewer):
            raise KeyboardInterrupt
        env.render()

    # ------------------------------------------------------------------------ reading the env

    def _find_task(self) -> Any:
        tasks = _get_path(self.env, self.names.tasks)
        if not tasks:
            raise InputError(
                f"Isaac Gym env has no tasks in env.{self.names.tasks}; moetape needs the EE reaching task"
            )
        task = tasks.get(self.names.task_name)
        return task if task is not None else next(iter(tasks.values()))

    def _read_decimation(self) -> int:
        value = _first_attr(self.env, self.names.decimation)
        if isinstance(value, (tuple, list)):
            lo, hi = int(value[0]), int(value[-1])
            if lo != hi:
                raise InputError(
                    f"Isaac Gym env randomises its decimation ({lo}..{hi} substeps per step); moetape needs "
                    f"a fixed one: set env.controller.decimation_count to one integer in config.pkl"
                )
            return lo
        return int(value)

    def _step_accepts_callback(self) -> bool:
        kwarg = self.names.step_callback_kwarg
        if kwarg is None:
            return False
        try:
            return kwarg in inspect.signature(self.env.step).parameters
        except (TypeError, ValueError):
            return False

    def _first_reset(self) -> Tuple[int, List[str]]:
        """The run's initial ``env.reset()``; return (obs dim, per-env infos term names).

        UMI-on-Legs' ``reset()`` is ``reset_idx(all)`` plus one zero-action ``step()``: its infos are
        caught by shadowing ``env.step`` on the instance for the duration of the call, so nothing is
        stepped, and no random number drawn, beyond what the legacy scripts' own reset does. The
        observation is kept for the first :meth:`reset`.
        """
        torch = _torch()
        env = self.env
        caught: List[Any] = []
        original = env.step

        def step(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            caught.append(out[4] if isinstance(out, tuple) and len(out) >= 5 else None)
            return out

        env.step = step
        try:
            with torch.inference_mode():
                out = env.reset()
        except RuntimeError as e:
            named = _reset_error(env, e)
            if named is e:
                raise
            raise named from None
        finally:
            env.__dict__.pop("step", None)
        obs = out[0] if isinstance(out, tuple) else out
        self._first_obs: Optional[np.ndarray] = _np(obs, np.float32).reshape(self.n_envs, -1)
        terms = list(self._flat_terms(caught[-1])) if caught else []
        return int(self._first_obs.shape[1]), terms

    def _state_array(self, name: str, dtype: Any = np.float32) -> np.ndarray:
        return _np(getattr(_get_path(self.env, self.names.state), name), dtype)

    def _torque(self) -> np.ndarray:
        for path in self.names.torque:
            value = _get_path(self.env, path, None)
            if value is not None:
                return _np(value, np.float32).reshape(self.n_envs, -1)
        return np.zeros_like(self._state_array(self.names.dof_pos))

    def _sim_dt_for_task(self) -> float:
        state = _get_path(self.env, self.names.state)
        value = getattr(state, self.names.state_sim_dt, None)
        return float(value) if value is not None else float(_first_attr(self.env, self.names.sim_dt))

    def _target_pose(self, offset_s: float) -> Tuple[np.ndarray, np.ndarray]:
        """World target pose at episode_time + offset: pos float32 (E, 3), quat xyzw float32 (E, 4)."""
        state = _get_path(self.env, self.names.state)
        times = getattr(state, self.names.episode_time) + float(offset_s)
        pose = _np(
            getattr(self._task, self.names.task_target_pose)(times=times, sim_dt=self._sim_dt_for_task()),
            np.float64,
        )
        return pose[:, :3, 3].astype(np.float32), matrix_to_quat_xyzw(pose[:, :3, :3]).astype(np.float32)

    def _capture_pre(self) -> Dict[str, np.ndarray]:
        torch = _torch()
        with torch.inference_mode():
            target_pos, target_quat = self._target_pose(0.0)
        body_pos = self._state_array(self.names.body_pos)
        body_quat = self._state_array(self.names.body_quat_xyzw)
        pre = {
            "ee_pos": body_pos[:, self._ee_index],
            "ee_quat_xyzw": body_quat[:, self._ee_index],
            "target_pos": target_pos,
            "target_quat_xyzw": target_quat,
            "episode": self._episode.copy(),
            "step_in_episode": self._step_in_episode.copy(),
        }
        return {k: np.ascontiguousarray(v, dtype=PRE_FIELDS[k][1]) for k, v in pre.items()}

    def _capture_frame(self) -> Dict[str, np.ndarray]:
        """Simulator state now, every frame field but torque, each (E, *shape)."""
        torch = _torch()
        root = self._state_array(self.names.root_state)
        with torch.inference_mode():
            future = [self._target_pose(t) for t in FUTURE_TARGET_OFFSETS_S]
        return {
            "root_pos": root[:, 0:3],
            "root_quat_xyzw": root[:, 3:7],
            "root_lin_vel": root[:, 7:10],
            "root_ang_vel": root[:, 10:13],
            "dof_pos": self._state_array(self.names.dof_pos),
            "dof_vel": self._state_array(self.names.dof_vel),
            "body_pos": self._state_array(self.names.body_pos),
            "body_quat_xyzw": self._state_array(self.names.body_quat_xyzw),
            "contact_force": self._state_array(self.names.contact_forces),
            "episode_time_s": self._state_array(self.names.episode_time).reshape(self.n_envs),
            "target_future_pos": np.stack([p for p, _ in future], axis=1),
            "target_future_quat_xyzw": np.stack([q for _, q in future], axis=1),
        }

    def _stack_frames(
        self,
        rows: List[Dict[str, np.ndarray]],
        torques: List[np.ndarray],
        out: Optional[Dict[str, np.ndarray]] = None,
    ) -> Dict[str, np.ndarray]:
        """Stack the rows of every frame field, into ``out``'s arrays when given."""
        if out is None:
            out = {
                name: np.empty((len(rows), self.n_envs) + shape, dtype)
                for name, (shape, dtype) in self._frame_fields.items()
            }
        for name in self._frame_fields:
            parts = torques[: len(rows)] if name == "torque" else [r[name] for r in rows]
            np.stack(parts, out=out[name])  # casts to the field dtype (same_kind)
        return out

    def _timeout(self, infos: Mapping[str, Any], done: np.ndarray) -> np.ndarray:
        value = infos.get(self.names.time_outs_key) if isinstance(infos, Mapping) else None
        if value is None:
            return np.zeros(self.n_envs, np.bool_)
        # Envs keep the last reset's time-out buffer in infos, so only ended envs can have timed out.
        return _np(value, np.bool_).reshape(self.n_envs) & done

    def _flat_terms(self, infos: Any, prefix: str = "") -> Dict[str, np.ndarray]:
        """Per-env (E,) numeric infos values, nested dicts flattened with "/"; the rest is skipped."""
        out: Dict[str, np.ndarray] = {}
        if not isinstance(infos, Mapping):
            return out
        for key, value in infos.items():
            name = f"{prefix}{key}"
            if not prefix and key == self.names.time_outs_key:
                continue
            if isinstance(value, Mapping):
                out.update(self._flat_terms(value, name + "/"))
                continue
            try:
                array = _np(value, None)
            except (TypeError, ValueError, RuntimeError):
                continue
            if array.shape == (self.n_envs,) and array.dtype.kind in "biuf":
                out[name] = array.astype(np.float32)
        return out

    def _terms(self, infos: Any) -> Dict[str, np.ndarray]:
        flat = self._flat_terms(infos)
        nan = np.full(self.n_envs, np.nan, np.float32)
        return {name: flat.get(name, nan).copy() for name in self.info.term_names}

    def _advance_episodes(self, done: np.ndarray) -> None:
        self._step_in_episode += 1
        self._episode[done] += 1
        self._step_in_episode[done] = 0

    def _joint_names(self, n: int) -> List[str]:
        names = _first_attr(self.env, self.names.dof_names, None)
        return (
            [str(x) for x in names]
            if names is not None and len(names) == n
            else [f"joint_{i}" for i in range(n)]
        )

    def _body_names(self, n: int) -> List[str]:
        names = _first_attr(self.env, self.names.body_names, None)
        if names is None:
            try:  # UMI-on-Legs keeps them only in the gym asset
                names = self.env.gym.get_actor_rigid_body_names(self.env.envs[0], self.env.actor_handles[0])
            except (AttributeError, IndexError, TypeError):
                names = None
        return (
            [str(x) for x in names]
            if names is not None and len(names) == n
            else [f"body_{i}" for i in range(n)]
        )


# --------------------------------------------------------------------------------------- helpers


def _check_visualize(num_envs: int) -> None:
    """--visualize plays one env on a display, as the legacy scripts did; else one line."""
    import os

    if int(num_envs) != 1:
        raise InputError(
            f"--visualize with Isaac Gym plays one env, as the legacy scripts did; got --num_envs {num_envs}. "
            "Pass --num_envs 1, or record headless and watch with `moetape view LOG`"
        )
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise InputError(
            "--visualize: no display here (DISPLAY is not set). Record headless and watch it with "
            "--record_video or `moetape view LOG` on a machine with a screen"
        )


def _reset_error(env: Any, error: RuntimeError) -> Exception:
    """A size mismatch in the env's first reset named as what it is (config vs env); else the error."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if "size" not in text.lower():
        return error
    n_obs = _get_path(env, "num_obs", None)
    return InputError(
        f"Isaac Gym env: its first reset failed ({text}): config.pkl's cfg.env.num_observations = {n_obs} "
        "is not the size of the observation this env builds. Use the config.pkl of the checkpoint's own "
        "training run, with the codebase it was trained with"
    )


def _torch() -> Any:
    import torch

    return torch
