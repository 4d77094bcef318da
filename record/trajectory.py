"""End-effector target trajectories: the legacy .pkl (restricted unpickler) and .npz files."""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Union

import numpy as np

from moetape.record.safe_pickle import load_array_pickle
from moetape.schema.errors import InputError

PathLike = Union[str, "os.PathLike[str]"]

TRAJECTORY_DT_S = 0.005
"""Trajectory files are sampled at 200 Hz (legacy)."""

TRAJECTORY_KEYS = ("ee_pos", "ee_axis_angle")
"""Keys read from each episode; any other key is ignored."""

_KEYS_TEXT = "'ee_pos' (T, 3) and 'ee_axis_angle' (T, 3)"


@dataclass(frozen=True)
class Trajectories:
    """World-frame EE target poses of N episodes of equal length T.

    ee_pos: float32 (N, T, 3), metres. ee_axis_angle: float32 (N, T, 3), rotation vector, radians.
    """

    ee_pos: np.ndarray
    ee_axis_angle: np.ndarray
    dt_s: float = TRAJECTORY_DT_S

    @property
    def n_episodes(self) -> int:
        return int(self.ee_pos.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.ee_pos.shape[1])


def load_trajectories(path: PathLike) -> Trajectories:
    """Load EE target trajectories from a legacy ``.pkl`` or a ``.npz`` file.

    ``.pkl`` (legacy, read with the restricted :func:`~moetape.record.safe_pickle.load_array_pickle`):
    a list (or tuple) of N episode dicts, each with ``ee_pos`` (T, 3) metres and ``ee_axis_angle``
    (T, 3) rotation vector, radians, world frame of the EE link, sampled at 200 Hz. Values may be
    numpy arrays or nested lists of numbers. Other keys (``t``, ``gripper_width``, velocities) are
    ignored.

    ``.npz`` (read with ``allow_pickle=False``): the stacked layout, two arrays ``ee_pos`` (N, T, 3)
    and ``ee_axis_angle`` (N, T, 3); other arrays are ignored. Per-episode keys are not read: stack
    the episodes (they must have equal T anyway).

    Every episode must have the same T >= 2 and finite values.

    Returns:
        Trajectories with float32 arrays ``ee_pos`` (N, T, 3) and ``ee_axis_angle`` (N, T, 3).

    Raises:
        InputError: one line naming the file, and the episode index and key where one is at fault,
            e.g. ``traj.pkl: episode 3 'ee_pos' has shape (100, 2), expected (T, 3)``.
    """
    where = os.fspath(path)
    ext = os.path.splitext(where)[1].lower()
    if ext == ".pkl" or ext == ".pickle":
        episodes = _read_pkl(where)
    elif ext == ".npz":
        episodes = _read_npz(where)
    else:
        raise InputError(
            f"{where}: unknown trajectory file extension {ext or '(none)'!r}; expected .pkl (legacy list "
            f"of episode dicts) or .npz (arrays 'ee_pos' and 'ee_axis_angle' of shape (N, T, 3))"
        )
    return _stack(where, episodes)


def _read_pkl(where: str) -> List[Dict[str, np.ndarray]]:
    data = load_array_pickle(where)
    if not isinstance(data, (list, tuple)):
        raise InputError(
            f"{where}: expected a list of episode dicts with {_KEYS_TEXT}, got {type(data).__name__}"
        )
    if len(data) == 0:
        raise InputError(f"{where}: the episode list is empty; expected at least one episode dict")
    episodes = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise InputError(
                f"{where}: episode {i} is a {type(item).__name__}, expected a dict with {_KEYS_TEXT}"
            )
        episode = {}
        for key in TRAJECTORY_KEYS:
            if key not in item:
                have = ", ".join(repr(k) for k in list(item)[:8]) or "none"
                raise InputError(f"{where}: episode {i} has no key {key!r} (keys: {have})")
            episode[key] = _as_real_array(where, f"episode {i} {key!r}", item[key])
        episodes.append(episode)
    return episodes


def _read_npz(where: str) -> List[Dict[str, np.ndarray]]:
    try:
        with np.load(where, allow_pickle=False) as npz:
            missing = [k for k in TRAJECTORY_KEYS if k not in npz.files]
            if missing:
                have = ", ".join(repr(k) for k in npz.files[:8]) or "none"
                raise InputError(
                    f"{where}: no array {missing[0]!r} (arrays: {have}); expected 'ee_pos' and "
                    f"'ee_axis_angle' of shape (N, T, 3)"
                )
            stacked = {k: npz[k] for k in TRAJECTORY_KEYS}
    except FileNotFoundError:
        raise InputError(f"{where}: no such file") from None
    except InputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"{where}: not a readable .npz file ({type(e).__name__}: {e})") from e
    for key, value in stacked.items():
        _as_real_array(where, repr(key), value)
        if value.ndim != 3 or value.shape[2] != 3:
            raise InputError(f"{where}: {key!r} has shape {value.shape}, expected (N, T, 3)")
        if value.shape[0] == 0:
            raise InputError(f"{where}: {key!r} has no episodes (shape {value.shape})")
    if stacked["ee_pos"].shape != stacked["ee_axis_angle"].shape:
        raise InputError(
            f"{where}: 'ee_pos' has shape {stacked['ee_pos'].shape} but 'ee_axis_angle' has shape "
            f"{stacked['ee_axis_angle'].shape}; both must be (N, T, 3)"
        )
    n = stacked["ee_pos"].shape[0]
    return [{k: stacked[k][i] for k in TRAJECTORY_KEYS} for i in range(n)]


def _as_real_array(where: str, what: str, value: object) -> np.ndarray:
    """Return ``value`` as a numpy array of a real (bool/int/float) dtype or raise InputError."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise InputError(f"{where}: {what} is not a numeric array ({e})") from e
    if array.dtype.kind not in "biuf":
        raise InputError(f"{where}: {what} has dtype {array.dtype}, expected a real-valued numeric array")
    return array


def _stack(where: str, episodes: List[Dict[str, np.ndarray]]) -> Trajectories:
    n_samples = None
    for i, episode in enumerate(episodes):
        for key in TRAJECTORY_KEYS:
            value = episode[key]
            if value.ndim != 2 or value.shape[1] != 3:
                raise InputError(f"{where}: episode {i} {key!r} has shape {value.shape}, expected (T, 3)")
            if value.shape[0] < 2:
                raise InputError(
                    f"{where}: episode {i} {key!r} has {value.shape[0]} sample(s), expected T >= 2"
                )
            if n_samples is None:
                n_samples = value.shape[0]
            elif value.shape[0] != n_samples:
                raise InputError(
                    f"{where}: episode {i} {key!r} has {value.shape[0]} samples, episode 0 has "
                    f"{n_samples}; all episodes must have the same length T"
                )
            bad = ~np.isfinite(value.astype(np.float64)).all(axis=1)
            if bad.any():
                raise InputError(
                    f"{where}: episode {i} {key!r} has non-finite values (NaN or inf) at sample "
                    f"{int(np.argmax(bad))}"
                )
    with np.errstate(over="ignore"):
        stacked = {k: np.stack([e[k] for e in episodes]).astype(np.float32) for k in TRAJECTORY_KEYS}
    for key, value in stacked.items():
        if not np.isfinite(value).all():
            raise InputError(f"{where}: {key!r} has values too large for float32")
    return Trajectories(ee_pos=stacked["ee_pos"], ee_axis_angle=stacked["ee_axis_angle"])
