"""Crash tests: a writer SIGKILLed at a random moment leaves a log with every committed row intact."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from moetape.schema.reader import open_log
from moetape.schema.synthetic import small_spec, synthetic_step
from moetape.schema.validate import validate

WRITER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crash_writer.py")


MODES = ["thread", "process", "process-group"]
"""thread: the writer thread dies with the process. process: only the recording process is killed
(the OOM killer's choice) and the writer process must close the log. process-group: both die."""


def kill_and_check(tmp_path, seed: int, mode: str = "thread") -> None:
    """Start the writer, SIGKILL it after a random delay, reopen and compare every committed row."""
    path = str(tmp_path / f"crash{seed}.h5")
    proc = subprocess.Popen(
        [sys.executable, WRITER, path, str(seed), "thread" if mode == "thread" else "process"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    rnd = random.Random(seed)
    last = 0
    deadline = time.monotonic() + rnd.uniform(0.3, 1.5)
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            last = int(line)
    finally:
        if mode == "process-group":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        _wait_group_gone(proc.pid)  # an orphaned writer process closes the log, then exits
    with open_log(path) as log:  # the mode replay uses
        assert log.run_status == "running"
        assert log.n_steps >= last
        spec = small_spec(3, frames_per_step=4)
        obs = log.read("obs")
        pos = log.read("frames/root_pos")
        for s in range(log.n_steps):
            step, frames = synthetic_step(spec, s, seed)
            np.testing.assert_array_equal(obs[s], step["obs"])
            np.testing.assert_array_equal(pos[4 * s : 4 * s + 4], frames["root_pos"])
    assert validate(path) == []


def _wait_group_gone(pgid: int, timeout: float = 30.0) -> None:
    """Wait until no live (non-zombie) process is left in process group ``pgid``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _live_members(pgid):
            return
        time.sleep(0.02)
    raise AssertionError(f"process group {pgid} still alive {timeout} s after the kill")


def _live_members(pgid: int) -> list:
    live = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            live.append(int(pid))
    return live


@pytest.mark.parametrize("seed", range(12))
def test_sigkill_keeps_committed_rows(tmp_path, seed):
    """After a SIGKILL at a random moment the log opens and every committed row is intact."""
    kill_and_check(tmp_path, seed, MODES[seed % 3])


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 250))
def test_sigkill_keeps_committed_rows_many(tmp_path, seed):
    """The same crash check over 150 more random kill moments, 50 per writer mode."""
    kill_and_check(tmp_path, seed, MODES[seed % 3])


def _break_checksum(path, dataset, row):
    """Flip the stored fletcher32 of the chunk holding ``row`` (as a torn rewrite leaves it)."""
    import h5py

    with h5py.File(path, "r") as f:
        ds = f[dataset]
        origin = ((row // ds.chunks[0]) * ds.chunks[0],) + (0,) * (ds.ndim - 1)
        info = ds.id.get_chunk_info_by_coord(origin)
    with open(path, "r+b") as g:
        g.seek(info.byte_offset + info.size - 4)
        g.write(b"\x00\x00\x00\x01")


@pytest.mark.parametrize("status", ["running", "clean"])
def test_torn_last_chunk(tmp_path, status):
    """A crashed run's last chunk with a bad checksum is read raw; in a clean log it is an error."""
    import h5py

    from moetape.schema.errors import LogReadError
    from moetape.schema.writer import LogWriter

    path = str(tmp_path / "torn.h5")
    spec = small_spec(3, frames_per_step=4)
    with LogWriter(path, spec, batch_steps=16, chunk_bytes=1 << 20) as log:
        for s in range(21):  # 21 rows: the last chunk (rows 16..31) is partly filled
            log.append(*synthetic_step(spec, s, 3))
    with h5py.File(path, "a") as f:
        f["run_status"][()] = status.encode()
    _break_checksum(path, "steps/obs", 20)
    want = np.stack([synthetic_step(spec, s, 3)[0]["obs"] for s in range(21)])
    with open_log(path) as log:
        if status == "clean":
            with pytest.raises(LogReadError):
                log.read("obs")
            return
        np.testing.assert_array_equal(log.read("obs"), want)
        np.testing.assert_array_equal(log.read("obs", 5, 19, env=1), want[5:19, 1])
        assert log.recovered == {"steps/obs"}
    notes = []
    assert validate(path, notes=notes) == [] and len(notes) == 1 and "steps/obs" in notes[0]
    _break_checksum(path, "steps/obs", 0)  # a bad checksum before the last chunk is corruption
    with open_log(path) as log, pytest.raises(LogReadError):
        log.read("obs")
