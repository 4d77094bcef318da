"""Where the Isaac Gym adapter finds things on a UMI-on-Legs-style env, and reading them to numpy.

:class:`IsaacGymNames` holds every attribute path the adapter reads (the table below);
:func:`get_path` / :func:`first_attr` follow those dotted paths;
:func:`host_copy` copies a torch tensor (any device) into a host numpy array. No torch import here.

Assumed env attributes (read from the public UMI-on-Legs code; all in :class:`IsaacGymNames`).
Tensors are torch tensors on ``env.device``, E = number of envs, B = rigid bodies:

======================================  ==========================================================
``env.num_envs`` / ``env.num_actions``  int, E and A (18)
``env.device``                          str, torch device of every tensor
``env.state.root_state``                (E, 13) [pos, xyzw quat, lin vel, ang vel], world
``env.state.dof_pos`` / ``dof_vel``     (E, J)
``env.state.rigid_body_pos``            (E, B, 3), world
``env.state.rigid_body_xyzw_quat``      (E, B, 4), world, xyzw (Isaac Gym convention, kept as is)
``env.state.contact_forces``            (E, B, 3), net contact force, world
``env.state.episode_time``              (E,) seconds
``env.state.sim_dt``                    float, passed to the task's target lookup (legacy does)
``env.ctrl.torque`` or ``env.torques``  (E, J) torque of the last physics substep; zeros if neither
``env.tasks["reaching"]``               the EE task (else the first task in ``env.tasks``) with
  ``.get_target_pose(times, sim_dt)``   times (E,) s -> (E, 4, 4) world target pose
  ``.link_index``                       int, EE rigid-body index into the B bodies
``env.dof_names``                       J joint names
``env.body_names`` or ``env.gym.get_actor_rigid_body_names(env.envs[0], env.actor_handles[0])``
``env.sim_params.dt``                   physics dt, s
``env.controller.decimation_count_range`` (lo, hi); must be fixed (lo == hi), else
``env.cfg.control.decimation`` or ``env.decimation``  (legged_gym spellings)
``env.max_episode_length_s``            episode length, s (else ``env.cfg.env.episode_length_s``)
``env.reset()``                         -> obs (E, O) or (obs, privileged_obs); UMI-on-Legs: reset_idx
                                        of all envs, then one zero-action ``step()``
``env.step(actions, callback=cb)``      -> obs, privileged_obs, rewards (E,), dones (E,), infos;
                                        ``cb(env)`` is called before each physics substep
``infos``                               per-env (E,) tensors become terms (nested dicts such as
                                        ``infos["episode"]`` flattened to ``"episode/<key>"``; any
                                        value that is not (E,) is skipped); ``infos["time_outs"]``
                                        (E,) bool is the timeout flag, not a term
======================================  ==========================================================
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from moetape.schema.errors import InputError


@dataclass(frozen=True)
class IsaacGymNames:
    """Where the adapter finds things on the env; dotted paths are relative to the env object.

    A tuple lists alternatives, tried in order; the first that exists is used.
    """

    state: str = "state"
    root_state: str = "root_state"  # on state, (E, 13)
    dof_pos: str = "dof_pos"  # on state, (E, J)
    dof_vel: str = "dof_vel"  # on state, (E, J)
    body_pos: str = "rigid_body_pos"  # on state, (E, B, 3)
    body_quat_xyzw: str = "rigid_body_xyzw_quat"  # on state, (E, B, 4)
    contact_forces: str = "contact_forces"  # on state, (E, B, 3)
    episode_time: str = "episode_time"  # on state, (E,)
    state_sim_dt: str = "sim_dt"  # on state, float
    torque: Tuple[str, ...] = ("ctrl.torque", "torques")  # (E, J); zeros when none exists
    tasks: str = "tasks"  # dict name -> task
    task_name: str = "reaching"  # falls back to the first task
    task_target_pose: str = "get_target_pose"  # method (times (E,), sim_dt) -> (E, 4, 4)
    task_ee_body_index: str = "link_index"  # int attribute of the task
    dof_names: Tuple[str, ...] = ("dof_names",)
    body_names: Tuple[str, ...] = ("body_names", "rigid_body_names")
    sim_dt: Tuple[str, ...] = ("sim_params.dt", "sim_dt", "dt")
    decimation: Tuple[str, ...] = (
        "controller.decimation_count_range",
        "cfg.control.decimation",
        "decimation",
    )
    episode_length_s: Tuple[str, ...] = ("max_episode_length_s", "cfg.env.episode_length_s")
    time_outs_key: str = "time_outs"  # in infos
    step_callback_kwarg: Optional[str] = "callback"  # None: never pass a per-substep callback


DEFAULT_NAMES = IsaacGymNames()


_MISSING = object()


def get_path(obj: Any, path: str, default: Any = _MISSING) -> Any:
    for part in path.split("."):
        if isinstance(obj, Mapping) and part in obj:
            obj = obj[part]
            continue
        try:
            obj = getattr(obj, part)
        except AttributeError:
            if default is _MISSING:
                raise AttributeError(f"Isaac Gym env has no {path!r} (missing {part!r})") from None
            return default
    return obj


def first_attr(obj: Any, paths: Sequence[str], default: Any = _MISSING) -> Any:
    for path in paths:
        value = get_path(obj, path, None)
        if value is not None:
            return value
    if default is _MISSING:
        raise InputError(f"Isaac Gym env has none of {', '.join('env.' + p for p in paths)}")
    return default


def host_copy(value: Any, dtype: Any) -> np.ndarray:
    """Copy a torch tensor (any device) or array-like to a host numpy array of ``dtype``."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    # Always copy: on a cpu device .numpy() shares memory with the sim buffers that change in place.
    return np.array(value, dtype=dtype, copy=True)


def gym_versions() -> Dict[str, str]:
    versions = {}
    for name in ("isaacgym", "torch", "hydra", "omegaconf"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = str(getattr(module, "__version__", "unknown"))
    return versions
