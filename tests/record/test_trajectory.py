"""Trajectory loading: legacy .pkl and .npz files, and one-line errors naming file, episode and key."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from moetape.record.trajectory import TRAJECTORY_DT_S, Trajectories, load_trajectories
from moetape.schema.errors import InputError


def _episode(t=50, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "ee_pos": rng.normal(size=(t, 3)),
        "ee_axis_angle": rng.normal(size=(t, 3)) * 0.1,
        "t": np.arange(t) * 0.005,
        "gripper_width": np.zeros(t),
    }


def _pkl(tmp_path, obj, name="traj.pkl"):
    path = tmp_path / name
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


def test_good_pkl_loads_as_float32(tmp_path):
    """A legacy list of episode dicts loads as float32 (N, T, 3) arrays; extra keys are ignored."""
    episodes = [_episode(seed=i) for i in range(3)]
    traj = load_trajectories(_pkl(tmp_path, episodes))
    assert isinstance(traj, Trajectories)
    assert traj.ee_pos.shape == (3, 50, 3) and traj.ee_axis_angle.shape == (3, 50, 3)
    assert traj.ee_pos.dtype == np.float32 and traj.ee_axis_angle.dtype == np.float32
    assert traj.n_episodes == 3 and traj.n_samples == 50 and traj.dt_s == TRAJECTORY_DT_S
    np.testing.assert_allclose(traj.ee_pos[2], episodes[2]["ee_pos"], rtol=1e-6)


def test_pkl_with_nested_lists(tmp_path):
    """Episode values given as nested lists of numbers load too."""
    episodes = [{"ee_pos": [[0, 0, 1], [0, 0, 2]], "ee_axis_angle": [[0.0, 0.0, 0.0], [0.1, 0.0, 0.0]]}]
    traj = load_trajectories(_pkl(tmp_path, episodes))
    assert traj.ee_pos.shape == (1, 2, 3) and traj.ee_pos.dtype == np.float32


def test_good_npz_loads(tmp_path):
    """A .npz with stacked 'ee_pos' and 'ee_axis_angle' (N, T, 3) loads as float32."""
    path = tmp_path / "traj.npz"
    np.savez(path, ee_pos=np.zeros((2, 10, 3)), ee_axis_angle=np.ones((2, 10, 3)), other=np.arange(3))
    traj = load_trajectories(path)
    assert traj.ee_pos.shape == (2, 10, 3) and traj.ee_axis_angle.dtype == np.float32
    assert float(traj.ee_axis_angle.sum()) == 60.0


def _error(tmp_path, obj):
    with pytest.raises(InputError) as info:
        load_trajectories(_pkl(tmp_path, obj))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'traj.pkl'}: ")
    return message


def test_unequal_lengths(tmp_path):
    """Episodes of different T name the episode and key."""
    message = _error(tmp_path, [_episode(50), _episode(50), _episode(40)])
    assert "episode 2 'ee_pos' has 40 samples, episode 0 has 50" in message


def test_missing_key(tmp_path):
    """An episode without 'ee_axis_angle' names the episode and the key."""
    bad = _episode()
    del bad["ee_axis_angle"]
    message = _error(tmp_path, [_episode(), bad])
    assert "episode 1 has no key 'ee_axis_angle'" in message


def test_wrong_shape(tmp_path):
    """A (T, 2) array gives the legacy-style shape message."""
    bad = _episode(100)
    bad["ee_pos"] = np.zeros((100, 2))
    message = _error(tmp_path, [_episode(100)] * 3 + [bad])
    assert message.endswith("episode 3 'ee_pos' has shape (100, 2), expected (T, 3)")


def test_nan(tmp_path):
    """A NaN names the episode, key and sample."""
    bad = _episode()
    bad["ee_axis_angle"][7, 1] = np.nan
    message = _error(tmp_path, [bad])
    assert "episode 0 'ee_axis_angle' has non-finite values (NaN or inf) at sample 7" in message


def test_empty_list(tmp_path):
    """An empty list is refused."""
    assert "episode list is empty" in _error(tmp_path, [])


def test_not_a_list(tmp_path):
    """A dict instead of a list is refused with what was found."""
    assert "expected a list of episode dicts" in _error(tmp_path, {"ee_pos": np.zeros((3, 3))})


def test_item_not_a_dict(tmp_path):
    """A list item that is not a dict names its episode index."""
    assert "episode 1 is a ndarray, expected a dict" in _error(tmp_path, [_episode(), np.zeros((50, 3))])


def test_too_short(tmp_path):
    """T = 1 is refused (T >= 2)."""
    assert "episode 0 'ee_pos' has 1 sample(s), expected T >= 2" in _error(tmp_path, [_episode(1)])


def test_non_numeric(tmp_path):
    """A string array is refused naming episode and key."""
    bad = _episode()
    bad["ee_pos"] = np.array([["a", "b", "c"]] * 50)
    assert "episode 0 'ee_pos' has dtype <U1" in _error(tmp_path, [bad])


def test_malicious_pkl_refused(tmp_path):
    """A trajectory pickle naming code is refused and does not run."""
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with pytest.raises(InputError, match="refused to unpickle"):
        load_trajectories(_pkl(tmp_path, [{"ee_pos": Evil()}]))
    assert not marker.exists()


def test_npz_missing_key_and_shape(tmp_path):
    """A .npz without 'ee_axis_angle', or with (T, 3) arrays, names the key."""
    path = tmp_path / "a.npz"
    np.savez(path, ee_pos=np.zeros((2, 10, 3)))
    with pytest.raises(InputError, match=r"a\.npz: no array 'ee_axis_angle'"):
        load_trajectories(path)
    np.savez(path, ee_pos=np.zeros((10, 3)), ee_axis_angle=np.zeros((10, 3)))
    with pytest.raises(InputError, match=r"'ee_pos' has shape \(10, 3\), expected \(N, T, 3\)"):
        load_trajectories(path)


def test_npz_nan_names_episode(tmp_path):
    """A NaN in a stacked .npz names the episode index and key."""
    path = tmp_path / "a.npz"
    pos = np.zeros((3, 10, 3))
    pos[2, 4, 0] = np.inf
    np.savez(path, ee_pos=pos, ee_axis_angle=np.zeros((3, 10, 3)))
    with pytest.raises(
        InputError, match=r"episode 2 'ee_pos' has non-finite values \(NaN or inf\) at sample 4"
    ):
        load_trajectories(path)


def test_npz_object_array_refused(tmp_path):
    """A .npz holding an object array is refused (allow_pickle=False), not unpickled."""
    path = tmp_path / "a.npz"
    np.savez(path, ee_pos=np.array([None, 1], dtype=object), ee_axis_angle=np.zeros((1, 2, 3)))
    with pytest.raises(InputError, match=r"a\.npz: not a readable \.npz file"):
        load_trajectories(path)


def test_garbage_npz_and_missing_files(tmp_path):
    """A corrupt .npz and missing files give one-line InputErrors."""
    path = tmp_path / "bad.npz"
    path.write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"bad\.npz: not a readable \.npz file"):
        load_trajectories(path)
    with pytest.raises(InputError, match=r"none\.npz: no such file"):
        load_trajectories(tmp_path / "none.npz")
    with pytest.raises(InputError, match=r"none\.pkl: no such file"):
        load_trajectories(tmp_path / "none.pkl")


def test_unknown_extension(tmp_path):
    """An unknown extension says which ones are supported."""
    with pytest.raises(InputError, match=r"unknown trajectory file extension '\.csv'; expected \.pkl"):
        load_trajectories(tmp_path / "traj.csv")
