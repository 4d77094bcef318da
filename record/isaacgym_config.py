"""Building an Isaac Gym env from a training run's ``config.pkl``: play overrides and instantiation.

The env config is ``config["env"]`` of the run's resolved hydra config (or the whole config when it
has a ``_target_``). :func:`load_config` reads ``config.pkl`` (given, or next to the checkpoint) with
the restricted builtins unpickler; :func:`build_env_config` applies the legacy play overrides
(:data:`PLAY_OVERRIDES`, the device in every :data:`DEVICE_KEYS`, num_envs, the trajectory path) to a
deep copy; :func:`instantiate` calls the hydra ``_target_`` (``hydra.utils.instantiate``, or a
minimal stand-in without hydra); :func:`build_env` does all of it after :func:`import_isaacgym`.

isaacgym must be imported before torch (an Isaac Gym rule): call :func:`import_isaacgym` before
anything imports torch. The adapter over the built env is ``moetape.record.isaacgym_backend``.
"""

from __future__ import annotations

import copy
import functools
import importlib
import logging
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from moetape.record.safe_pickle import PathLike, load_builtins_pickle
from moetape.schema.errors import InputError

log = logging.getLogger(__name__)

ISAACGYM_MISSING = (
    "isaacgym is not installed: it ships with NVIDIA Isaac Gym Preview 4, not PyPI; use --backend mujoco"
)

PLAY_OVERRIDES: Tuple[Tuple[str, Any, str], ...] = (
    ("cfg.terrain.mode", "plane", "plane terrain"),
    ("cfg.terrain.mesh_type", "plane", "plane terrain (legged_gym spelling)"),
    ("cfg.domain_rand.push_robots", False, "no pushes"),
    ("cfg.domain_rand.transport_robots", False, "no transports"),
    ("cfg.init_state.pos_noise", [0.0, 0.0, 0.0], "no init noise"),
    ("cfg.init_state.euler_noise", [0.0, 0.0, 0.0], "no init noise"),
    ("cfg.init_state.lin_vel_noise", [0.0, 0.0, 0.0], "no init noise"),
    ("cfg.init_state.ang_vel_noise", [0.0, 0.0, 0.0], "no init noise"),
    ("dof_pos_reset_range_scale", 0.0, "no init joint noise"),
    ("constraints", {}, "constraints off"),
)
"""Legacy play overrides: (key path in the env config, value, why). Applied only where the path
exists; the env config is ``config["env"]`` (or the whole config when it has a ``_target_``)."""

TERMINATIONS_OVERRIDE: Tuple[str, Any, str] = (
    "cfg.asset.terminate_after_contacts_on",
    ["base"],
    "episodes end only on base contact, as play_moe_ee_task.py",
)
"""The full legacy script's relaxed terminations (QM-MoE ``play_moe_ee_task.py``); applied unless
``keep_terminations`` (``play_moe_simple.py`` keeps the training's list)."""

DEVICE_KEYS = ("device", "sim_device", "rl_device")
"""Keys replaced by the chosen device anywhere in the env config (legacy replaced every "device")."""

NUM_ENVS_PATHS = ("cfg.env.num_envs", "controller.num_envs", "num_envs")
TRAJECTORY_PATH_KEYS = ("sequence_sampler", "file_path")  # under each task of ``tasks``


def build_env_config(
    config: Mapping[str, Any],
    *,
    num_envs: int,
    device: str,
    trajectory_path: Optional[PathLike] = None,
    visualize: bool = False,
    seed: Optional[int] = None,
    keep_terminations: bool = False,
) -> Tuple[Dict[str, Any], List[str]]:
    """Return a deep copy of the env config with the play overrides applied, and what was applied.

    The caller's ``config`` is never modified. Overrides (see :data:`PLAY_OVERRIDES`) are applied
    only where their key path exists, except two required ones: ``num_envs`` (set at every path in
    :data:`NUM_ENVS_PATHS` that exists, else at the top of the env config) and the device (every key
    in :data:`DEVICE_KEYS` anywhere, else ``sim_device`` at the top). Also, where present:
    ``graphics_device_id`` (the cuda index, 0 on cpu), ``headless`` (not visualize),
    ``attach_camera`` (visualize), ``seed``, each task's ``sequence_sampler.file_path`` and, unless
    ``keep_terminations``, :data:`TERMINATIONS_OVERRIDE`.

    Returns:
        (env_config, applied): the patched copy and one line per override applied.
    """
    env_cfg = config.get("env") if "_target_" not in config else config
    if not isinstance(env_cfg, Mapping) or "_target_" not in env_cfg:
        raise InputError(
            "config.pkl: no env config with a '_target_' (expected config['env']['_target_'], the hydra "
            "class of the Isaac Gym env)"
        )
    cfg: Dict[str, Any] = copy.deepcopy(dict(env_cfg))
    applied: List[str] = []

    overrides = PLAY_OVERRIDES if keep_terminations else PLAY_OVERRIDES + (TERMINATIONS_OVERRIDE,)
    for path, value, why in overrides:
        if _set_existing(cfg, path, copy.deepcopy(value)):
            applied.append(f"{path} = {value!r} ({why})")

    targets = [p for p in NUM_ENVS_PATHS[:-1] if _has_path(cfg, p)] or [NUM_ENVS_PATHS[-1]]
    for path in targets:
        _set_path(cfg, path, int(num_envs))
        applied.append(f"{path} = {int(num_envs)}")

    replaced = _replace_keys(cfg, DEVICE_KEYS, device)
    if not replaced:
        cfg["sim_device"] = device
        replaced = ["sim_device"]
    applied.extend(f"{p} = {device!r}" for p in replaced)
    gpu = int(device.split("cuda:")[-1]) if device.startswith("cuda:") else 0
    applied.extend(f"{p} = {gpu}" for p in _replace_keys(cfg, ("graphics_device_id",), gpu))

    for path, value in (("headless", not visualize), ("attach_camera", bool(visualize))):
        if _set_existing(cfg, path, value):
            applied.append(f"{path} = {value!r}")
    if seed is not None and _set_existing(cfg, "seed", int(seed)):
        applied.append(f"seed = {int(seed)}")

    if trajectory_path is not None:
        tasks = cfg.get("tasks")
        for name, task in tasks.items() if isinstance(tasks, dict) else ():
            path = ".".join(("tasks", str(name)) + TRAJECTORY_PATH_KEYS)
            if isinstance(task, dict) and _set_existing(cfg, path, os.fspath(trajectory_path)):
                applied.append(f"{path} = {os.fspath(trajectory_path)!r}")
    return cfg, applied


def _has_path(cfg: Mapping[str, Any], path: str) -> bool:
    node: Any = cfg
    for key in path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True


def _set_path(cfg: Dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = cfg
    for key in parents:
        node = node[key]
    node[last] = value


def _set_existing(cfg: Dict[str, Any], path: str, value: Any) -> bool:
    if not _has_path(cfg, path):
        return False
    _set_path(cfg, path, value)
    return True


def _replace_keys(node: Any, keys: Sequence[str], value: Any, prefix: str = "") -> List[str]:
    """Set every dict key in ``keys`` anywhere under ``node`` to ``value``; return their paths."""
    done: List[str] = []
    if isinstance(node, dict):
        for k in list(node):
            path = f"{prefix}{k}"
            if k in keys:
                node[k] = value
                done.append(path)
            else:
                done.extend(_replace_keys(node[k], keys, value, path + "."))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            done.extend(_replace_keys(item, keys, value, f"{prefix}{i}."))
    return done


def import_isaacgym() -> Any:
    """Import and return ``isaacgym``, or raise InputError.

    Isaac Gym refuses to load once torch is imported (its ``gymdeps`` check), so every path to the
    Isaac Gym backend calls this before anything imports torch.
    """
    try:
        import isaacgym  # noqa: F401
        from isaacgym import gymapi, gymutil  # noqa: F401
    except ImportError as e:
        missing = str(getattr(e, "name", None) or "")
        if missing == "isaacgym" or missing.startswith("isaacgym."):
            raise InputError(ISAACGYM_MISSING) from None
        if "torch" in sys.modules and "before isaacgym" in str(e):
            raise InputError(
                f"isaacgym failed to import: {e} In Python, `import isaacgym` (or call "
                "moetape.record.isaacgym_config.import_isaacgym()) before anything imports torch"
            ) from None
        raise InputError(f"isaacgym failed to import: {e}") from None
    return isaacgym


def instantiate(cfg: Mapping[str, Any], **kwargs: Any) -> Any:
    """Instantiate a hydra-style config: ``hydra.utils.instantiate`` when hydra is importable.

    Without hydra, a minimal stand-in: import the dotted ``_target_`` with importlib and call it with
    the remaining keys (and ``kwargs``), instantiating nested ``_target_`` dicts first; ``_partial_:
    true`` gives a ``functools.partial``; ``_args_`` are positional; other ``_..._`` keys are dropped.
    Interpolations are not resolved; nested configs become :class:`ConfigDict`, dicts that also
    read and write their keys as attributes (``cfg.env.num_envs``), as hydra's ``DictConfig`` does.
    """
    try:
        import hydra.utils
    except ImportError:
        return _instantiate_plain(cfg, **kwargs)
    return hydra.utils.instantiate(cfg, **kwargs)


class ConfigDict(dict):  # type: ignore[type-arg]
    """A dict whose keys are also attributes: what an env reads its nested config as without hydra."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def _instantiate_plain(node: Any, **kwargs: Any) -> Any:
    if isinstance(node, list):
        return [_instantiate_plain(v) for v in node]
    if not isinstance(node, Mapping):
        return node
    if "_target_" not in node:
        return ConfigDict({k: _instantiate_plain(v) for k, v in node.items()})
    module_name, _, attr = str(node["_target_"]).rpartition(".")
    if not module_name:
        raise InputError(f"config: _target_ {node['_target_']!r} is not a dotted name")
    target = getattr(importlib.import_module(module_name), attr)
    args = [_instantiate_plain(v) for v in node.get("_args_", [])]
    params = {
        k: _instantiate_plain(v) for k, v in node.items() if not (k.startswith("_") and k.endswith("_"))
    }
    params.update(kwargs)
    if node.get("_partial_", False):
        return functools.partial(target, *args, **params)
    return target(*args, **params)


def _resolve_interpolations(config: Mapping[str, Any]) -> Dict[str, Any]:
    """Resolve ``${...}`` interpolations with omegaconf when it is importable; else return a copy."""
    try:
        from omegaconf import OmegaConf
    except ImportError:
        return copy.deepcopy(dict(config))
    try:
        return OmegaConf.to_container(OmegaConf.create(dict(config)), resolve=True)  # type: ignore[return-value]
    except Exception as e:  # noqa: BLE001 - a custom resolver missing here; hydra may still resolve
        log.warning("config.pkl: could not resolve interpolations (%s); using it as stored", e)
        return copy.deepcopy(dict(config))


def build_env(
    config: Mapping[str, Any],
    *,
    num_envs: int,
    device: str,
    trajectory_path: Optional[PathLike],
    visualize: bool,
    seed: Optional[int],
    keep_terminations: bool = False,
    codebase: Optional[PathLike] = None,
) -> Tuple[Any, List[str], Optional[int]]:
    """Import isaacgym, apply the play overrides to ``config`` and instantiate the env.

    As the legacy play scripts: the seed is the training's (``config["seed"]``) unless ``seed`` is
    given, which then replaces it everywhere before interpolations are resolved; random, numpy and
    torch are seeded with it (their ``setup(config, seed=...)``). ``codebase`` (the folder holding the
    training code's ``legged_gym/``) is put first on ``sys.path``, as their ``setup_path.py`` did.

    Returns:
        (env, applied, seed): the env, one line per override applied (see :func:`build_env_config`)
        and the seed used (None when the config has none and none was given).
    """
    import_isaacgym()
    from isaacgym import gymapi, gymutil

    if codebase is not None:
        add_codebase(codebase)
    config = dict(config)
    used = seed if seed is not None else config.get("seed")
    if seed is not None and "seed" in config:
        config["seed"] = int(seed)
    resolved = _resolve_interpolations(config)
    env_cfg, applied = build_env_config(
        resolved,
        num_envs=num_envs,
        device=device,
        trajectory_path=trajectory_path,
        visualize=visualize,
        seed=seed,
        keep_terminations=keep_terminations,
    )
    if used is not None:
        where = "--seed" if seed is not None else "the training's, from config.pkl; --seed replaces it"
        applied.append(f"seed = {used!r} ({where})")
    log.info("Isaac Gym play overrides applied: %s", "; ".join(applied) or "none")
    check_target(env_cfg)
    sim_params = gymapi.SimParams()
    sim_cfg = env_cfg.get("cfg", {}).get("sim")
    if isinstance(sim_cfg, dict):
        gymutil.parse_sim_config(sim_cfg, sim_params)
    if used is not None:
        _seed_everything(int(used))
    return instantiate(env_cfg, sim_params=sim_params), applied, used


CODEBASE_HINT = (
    "put the training codebase on the path: --codebase DIR (the folder that holds legged_gym/, as the "
    "legacy setup_path.py added), or PYTHONPATH=DIR"
)


def add_codebase(codebase: PathLike) -> None:
    """Put the training codebase first on ``sys.path`` (raise InputError if it is not a folder)."""
    path = os.path.abspath(os.fspath(codebase))
    if not os.path.isdir(path):
        raise InputError(
            f"--codebase {os.fspath(codebase)}: not a folder; expected the folder that holds legged_gym/"
        )
    if path not in sys.path:
        sys.path.insert(0, path)


def check_target(env_cfg: Mapping[str, Any]) -> None:
    """Import the env's ``_target_`` module now, so a missing codebase is one line, not hydra's trace.

    Raises:
        InputError: the module is not on the path (how to add it), or importing it failed.
    """
    target = str(env_cfg.get("_target_", ""))
    module_name, _, attr = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        missing = str(getattr(e, "name", None) or "")
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise InputError(
                f"config.pkl: the env's _target_ {target!r} cannot be imported: no module {missing!r} on the "
                f"path. It is in the training codebase (QM-MoE envs exist only in its fork); {CODEBASE_HINT}"
            ) from None
        raise InputError(
            f"config.pkl: importing the env's module {module_name!r} failed: {e}. Install what the training "
            "codebase needs"
        ) from None
    if not hasattr(module, attr):
        raise InputError(
            f"config.pkl: the env's _target_ {target!r}: module {module_name!r} has no {attr!r}; is "
            "--codebase the training run's own codebase?"
        )


def _seed_everything(seed: int) -> None:
    """Seed random, numpy and torch, as the legacy ``setup(config, seed=...)`` did (torch after isaacgym)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _config_path(config_path: Optional[PathLike], checkpoint_path: Optional[PathLike]) -> str:
    if config_path is not None:
        return os.fspath(config_path)
    if checkpoint_path is None:
        raise InputError("Isaac Gym backend needs env=, config=, config_path= or checkpoint_path=")
    return os.path.join(os.path.dirname(os.path.abspath(os.fspath(checkpoint_path))), "config.pkl")


def load_config(config_path: Optional[PathLike], checkpoint_path: Optional[PathLike]) -> Dict[str, Any]:
    """Return the dict in ``config_path``, else in ``config.pkl`` next to ``checkpoint_path``.

    Read with the restricted builtins unpickler (:func:`load_builtins_pickle`).

    Raises:
        InputError: neither path given, a refused or unreadable pickle, or not a dict.
    """
    path = _config_path(config_path, checkpoint_path)
    if not os.path.exists(path):
        raise InputError(
            f"{path}: no such file; --backend isaacgym builds the env from the training run's config.pkl "
            "(the resolved hydra config), expected next to the checkpoint. Copy it there, or use --backend mujoco"
        )
    config = load_builtins_pickle(path)
    if not isinstance(config, dict):
        raise InputError(f"config.pkl: expected a dict, got {type(config).__name__}")
    return config
