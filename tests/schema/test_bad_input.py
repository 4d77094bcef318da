"""Bad input: each gets one line naming the file and what is wrong, exit status 1, no traceback."""

from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from moetape.cli import cli
from moetape.schema.errors import LogFormatError, LogReadError, NewerFormatError
from moetape.schema.reader import open_log


def run(*args):
    return CliRunner().invoke(cli, list(args))


def assert_one_line_error(result, *needles):
    """Exit 1, nothing on stdout, one 'Error:' line on stderr containing every needle, no traceback."""
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def copy(src, tmp_path, name="copy.h5"):
    dst = str(tmp_path / name)
    shutil.copyfile(src, dst)
    return dst


@pytest.mark.parametrize("command", ["info", "verify"])
def test_missing_file(tmp_path, command):
    """A path that does not exist is named, with 'no such file'."""
    p = str(tmp_path / "nope.h5")
    assert_one_line_error(run(command, p), p, "no such file")


def test_directory(tmp_path):
    """A directory is refused as a log."""
    assert_one_line_error(run("info", str(tmp_path)), str(tmp_path), "directory")


def test_not_hdf5(tmp_path):
    """A text file is named as not HDF5."""
    p = tmp_path / "a.h5"
    p.write_text("hello")
    assert_one_line_error(run("verify", str(p)), str(p), "not an HDF5 file")


def test_truncated(log_path, tmp_path):
    """A log cut in half cannot be opened and says it may be truncated."""
    p = copy(log_path, tmp_path)
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.truncate(size // 2)
    assert_one_line_error(run("info", p), p, "truncated")


def test_hdf5_not_moetape(tmp_path):
    """An HDF5 file without format_version is not a moetape log."""
    p = str(tmp_path / "other.h5")
    with h5py.File(p, "w") as f:
        f["x"] = np.arange(3)
    assert_one_line_error(run("info", p), p, "not a moetape log")


def test_newer_version(log_path, tmp_path):
    """A newer format_version is refused naming the version and the upgrade command."""
    p = copy(log_path, tmp_path)
    with h5py.File(p, "a") as f:
        f.attrs["format_version"] = 99
    assert_one_line_error(run("info", p), p, "format_version 99 is newer", "pip install -U moetape")
    with pytest.raises(NewerFormatError):
        open_log(p)


def test_missing_dataset(log_path, tmp_path):
    """A missing dataset is named."""
    p = copy(log_path, tmp_path)
    with h5py.File(p, "a") as f:
        del f["steps/gate"]
    assert_one_line_error(run("verify", p), p, "steps/gate")


def test_wrong_dtype(log_path, tmp_path):
    """verify lists a wrong dtype with expected and got, exit 1."""
    p = copy(log_path, tmp_path)
    with h5py.File(p, "a") as f:
        data = f["steps/reward"][()]
        del f["steps/reward"]
        f.create_dataset(
            "steps/reward", data=data.astype(np.float64), maxshape=(None, 2), chunks=True, fletcher32=True
        )
    result = run("verify", "-q", p)
    assert result.exit_code == 1
    assert "steps/reward: dtype float64, expected float32" in result.stderr
    assert "Traceback" not in result.stderr


def test_counter_larger_than_data(log_path, tmp_path):
    """n_committed beyond the rows present is reported as damage."""
    p = copy(log_path, tmp_path)
    with h5py.File(p, "a") as f:
        f["n_committed"][...] = [1000, 4000]
    assert_one_line_error(run("info", p), p, "n_committed says")
    with pytest.raises(LogFormatError):
        open_log(p)


def test_corrupt_chunk_fails_checksum(log_path, tmp_path):
    """Flipped bytes inside a data chunk are caught by fletcher32 in verify."""
    p = copy(log_path, tmp_path)
    with h5py.File(p, "r") as f:
        offset = f["steps/obs"].id.get_chunk_info(0).byte_offset
    with open(p, "r+b") as f:
        f.seek(offset + 100)
        f.write(b"\xff\x00\xff\x00")
    result = run("verify", "-q", p)
    assert result.exit_code == 1
    assert "checksum or read failure" in result.stderr
    with open_log(p) as log, pytest.raises(LogReadError):
        log.read("obs")


def test_upgrade_refuses_existing_output(log_path, tmp_path, monkeypatch):
    """upgrade never overwrites without --force, and never touches the old file."""
    from moetape.schema import upgrade

    monkeypatch.setattr(upgrade, "FORMAT_VERSION", upgrade.FORMAT_VERSION + 1)  # the log is older
    new = tmp_path / "new.h5"
    new.write_bytes(b"keep")
    with open(log_path, "rb") as f:
        before = f.read()
    assert_one_line_error(run("upgrade", log_path, str(new)), str(new), "exists", "--force")
    assert new.read_bytes() == b"keep"
    assert run("upgrade", log_path, str(new), "--force").exit_code == 0
    with open(log_path, "rb") as f:
        assert f.read() == before


def test_env_out_of_range(log_path):
    """Reading an env index past the log's envs says how many envs there are."""
    with open_log(log_path) as log, pytest.raises(LogFormatError, match="out of range; the log has 2 envs"):
        log.read("gate", env=5)
