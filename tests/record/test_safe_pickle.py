"""Restricted unpicklers: plain data loads, anything that names code is refused without running it."""

from __future__ import annotations

import collections
import os
import pickle

import numpy as np
import pytest

from moetape.record.safe_pickle import load_array_pickle, load_builtins_pickle, loads_restricted
from moetape.schema.errors import InputError


class _MarkerPayload:
    """Pickles to ``open(marker, "w")``: loading it with plain pickle would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _SystemPayload:
    """Pickles to ``os.system("touch marker")``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch " + self.marker,))


def _write(path, obj, protocol=pickle.HIGHEST_PROTOCOL):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


@pytest.mark.parametrize("loader", [load_builtins_pickle, load_array_pickle])
@pytest.mark.parametrize("payload", [_MarkerPayload, _SystemPayload])
def test_code_is_refused_and_never_runs(tmp_path, loader, payload):
    """A pickle that would call open/os.system is refused with a one-line InputError; no marker file appears."""
    marker = str(tmp_path / "marker")
    path = _write(tmp_path / "evil.pkl", {"config": [1, payload(marker)]})
    with pytest.raises(InputError) as info:
        loader(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: refused to unpickle ")
    assert "only plain data (dicts, lists, numbers, strings, numpy arrays) is allowed" in message
    assert "re-save the file with plain types" in message
    assert not os.path.exists(marker)


def test_refusal_names_the_global(tmp_path):
    """The message names module.name of the refused global."""
    path = _write(tmp_path / "evil.pkl", _SystemPayload(str(tmp_path / "m")), protocol=2)
    with pytest.raises(InputError, match=r"refused to unpickle (os|posix)\.system"):
        load_builtins_pickle(path)


def test_hand_crafted_global_refused_without_import(tmp_path):
    """A GLOBAL opcode for an unimportable module is refused by name, not as an import error."""
    data = b"cnot_a_module\nboom\n(tR."
    path = tmp_path / "crafted.pkl"
    path.write_bytes(data)
    with pytest.raises(InputError, match=r"refused to unpickle not_a_module\.boom"):
        load_array_pickle(path)


def test_builtins_round_trip_all_protocols(tmp_path):
    """Plain builtins (the hydra config.pkl shape) load under every pickle protocol."""
    config = {
        "env": {"_target_": "a.B", "cfg": {"sim": {"dt": 0.005}, "num_envs": 4}},
        "seed": 1,
        "floats": {100.0: 2.0},
        "misc": [None, True, 1.5, "s", b"raw", (1, 2), {1, 2}, frozenset({3}), bytearray(b"x"), 1j],
        "ordered": collections.OrderedDict(a=1),
    }
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path = _write(tmp_path / f"config{protocol}.pkl", config, protocol=protocol)
        assert load_builtins_pickle(path) == config


def test_builtins_loader_refuses_numpy(tmp_path):
    """The builtins-only loader refuses numpy arrays (config.pkl must be plain builtins)."""
    path = _write(tmp_path / "a.pkl", {"a": np.zeros(3)})
    with pytest.raises(InputError, match="refused to unpickle numpy"):
        load_builtins_pickle(path)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_arrays_and_scalars_load(tmp_path, protocol):
    """numpy arrays, dtypes and scalars (as numpy 2 pickles them, under numpy._core) load."""
    data = [
        {"ee_pos": np.arange(6, dtype=np.float32).reshape(2, 3), "t": np.float64(0.5), "i": np.int64(3)},
        {"flags": np.array([True, False]), "fortran": np.asfortranarray(np.ones((2, 3)))},
    ]
    path = _write(tmp_path / "arr.pkl", data, protocol=protocol)
    loaded = load_array_pickle(path)
    np.testing.assert_array_equal(loaded[0]["ee_pos"], data[0]["ee_pos"])
    assert loaded[0]["ee_pos"].dtype == np.float32
    assert loaded[0]["t"] == 0.5 and isinstance(loaded[0]["t"], np.float64)
    assert loaded[0]["i"] == 3
    np.testing.assert_array_equal(loaded[1]["flags"], [True, False])
    np.testing.assert_array_equal(loaded[1]["fortran"], np.ones((2, 3)))


def test_numpy_core_reference_loads(tmp_path):
    """A numpy 1.x pickle (numpy.core.multiarray names, hand-crafted) loads under this numpy."""
    data = pickle.dumps(np.arange(4, dtype=np.float64), protocol=2)
    legacy = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in legacy and b"numpy._core" not in legacy
    path = tmp_path / "np1.pkl"
    path.write_bytes(legacy)
    np.testing.assert_array_equal(load_array_pickle(path), np.arange(4.0))


def test_other_numpy_names_refused(tmp_path):
    """numpy functions outside the array allow-list (e.g. numpy.load) are refused."""
    path = tmp_path / "np.pkl"
    path.write_bytes(b"cnumpy\nload\n(S'x'\ntR.")
    with pytest.raises(InputError, match=r"refused to unpickle numpy\.load"):
        load_array_pickle(path)


@pytest.mark.parametrize(
    "data",
    [b"", b"not a pickle at all", pickle.dumps({"a": list(range(50))})[:-7], b"\x80\x05\x95garbage"],
    ids=["empty", "text", "truncated", "garbage"],
)
def test_garbage_is_not_a_pickle(tmp_path, data):
    """Truncated or garbage files give '<path>: not a pickle file (<reason>)', chained to the cause."""
    path = tmp_path / "bad.pkl"
    path.write_bytes(data)
    for loader in (load_builtins_pickle, load_array_pickle):
        with pytest.raises(InputError) as info:
            loader(path)
        assert str(info.value).startswith(f"{path}: not a pickle file (")
        assert "\n" not in str(info.value)
        assert info.value.__cause__ is not None


def test_missing_file(tmp_path):
    """A missing file gives '<path>: no such file'."""
    path = tmp_path / "nope.pkl"
    with pytest.raises(InputError, match=r"nope\.pkl: no such file$"):
        load_array_pickle(path)


def test_input_error_is_value_error(tmp_path):
    """InputError is a ValueError, so callers may catch either."""
    with pytest.raises(ValueError):
        load_builtins_pickle(tmp_path / "missing.pkl")


def test_loads_restricted_bytes():
    """loads_restricted applies the same allow-list to in-memory bytes."""
    assert loads_restricted(pickle.dumps([1, "a"]), arrays=False) == [1, "a"]
    with pytest.raises(InputError, match="<bytes>: refused to unpickle"):
        loads_restricted(pickle.dumps(_SystemPayload("/nonexistent/x")))
