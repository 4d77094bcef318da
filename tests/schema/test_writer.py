"""Writer behaviour beyond round-trips: write failures, time-based flush, live reading, idempotent close."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from moetape.schema.errors import LogFormatError, LogReadError, LogWriteError
from moetape.schema.io import stored_eof
from moetape.schema.reader import open_log
from moetape.schema.synthetic import small_spec, synthetic_step
from moetape.schema.validate import validate
from moetape.schema.writer import LogWriter

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_write_failure_is_raised_in_caller_and_log_stays_readable(tmp_path, mode):
    """A write the OS refuses (file size limit, as on a full disk) surfaces as LogWriteError; committed rows stay."""
    path = str(tmp_path / "full.h5")
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "full_disk_writer.py"), path, str(2_000_000), mode],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    message = proc.stdout.strip()
    assert message.startswith(path + ": writing the log failed") and "committed before the failure" in message
    try:
        log = open_log(path)
    except LogReadError as e:  # HDF5 < 2.0 refuses the short file; the message gives the repair
        assert "truncate -s" in str(e)
        os.truncate(path, stored_eof(path))
        log = open_log(path)
    with log:
        assert log.n_steps > 0 and log.run_status == "failed"
        spec = small_spec(2, frames_per_step=4)
        obs = log.read("obs")
        for s in range(log.n_steps):
            np.testing.assert_array_equal(obs[s], synthetic_step(spec, s, 0)[0]["obs"])


@pytest.mark.parametrize("process", [False, True])
def test_partial_batch_committed_within_flush_seconds(tmp_path, process):
    """A slow run commits its buffered steps after flush_seconds even if the batch is not full."""
    path = str(tmp_path / "slow.h5")
    spec = small_spec(1, frames_per_step=1)
    with LogWriter(path, spec, batch_steps=1000, flush_seconds=0.2, process=process) as log:
        for s in range(3):
            log.append(*synthetic_step(spec, s))
        deadline = time.monotonic() + 10
        while log.n_committed < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.n_committed == 3
        with open_log(path) as reader:  # a second reader sees them while the writer is open
            assert reader.n_steps == 3 and reader.run_status == "running"


def test_close_is_idempotent_and_append_after_close_fails(tmp_path):
    """close() twice is fine; appending (or asking for frame rows) afterwards is an error."""
    spec = small_spec(1, frames_per_step=1)
    log = LogWriter(str(tmp_path / "c.h5"), spec)
    log.append(*synthetic_step(spec, 0))
    log.close()
    log.close()
    with pytest.raises(LogWriteError):
        log.append(*synthetic_step(spec, 1))
    with pytest.raises(LogWriteError, match="closed"):
        log.frame_rows()


def test_writer_process_round_trip_and_no_leaked_shared_memory(tmp_path, monkeypatch):
    """The writer process commits what the thread would (frames copied or written in place into its
    shared batches), marks the status, and frees its shared memory."""
    from multiprocessing import shared_memory

    made = []  # this test's blocks only: other processes on the machine may use /dev/shm meanwhile

    class Recorded(shared_memory.SharedMemory):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self._name.lstrip("/"))

    monkeypatch.setattr(shared_memory, "SharedMemory", Recorded)  # the batches import it when made
    spec = small_spec(3, frames_per_step=4)
    for status_exc, want in ((None, "clean"), (KeyboardInterrupt, "interrupted")):
        path = str(tmp_path / f"p_{want}.h5")
        try:
            with LogWriter(path, spec, batch_steps=8, process=True) as log:
                for s in range(37):
                    step, frames = synthetic_step(spec, s, 5)
                    if s % 2:  # as moetape record does: the backend fills the batch's own rows
                        rows = log.frame_rows()
                        for key in rows:
                            rows[key][...] = frames[key]
                        frames = rows
                    log.append(step, frames)
                if status_exc:
                    raise status_exc
        except KeyboardInterrupt:
            pass
        with open_log(path) as r:
            assert r.n_steps == 37 and r.run_status == want
            obs, pos = r.read("obs"), r.read("frames/root_pos")
        for s in range(37):
            step, frames = synthetic_step(spec, s, 5)
            np.testing.assert_array_equal(obs[s], step["obs"])
            np.testing.assert_array_equal(pos[4 * s : 4 * s + 4], frames["root_pos"])
        assert validate(path) == []
    assert made and not set(made) & set(os.listdir("/dev/shm"))


def test_writer_process_killed_is_a_write_error(tmp_path):
    """If the writer process dies, the next append (or close) raises LogWriteError; committed rows stay."""
    import signal

    path = str(tmp_path / "k.h5")
    spec = small_spec(2, frames_per_step=1)
    log = LogWriter(path, spec, batch_steps=2, process=True)
    for s in range(4):
        log.append(*synthetic_step(spec, s))
    log.flush()
    os.kill(log._child.proc.pid, signal.SIGKILL)
    log._child.proc.wait()
    with pytest.raises(
        LogWriteError, match="writer process ended unexpectedly .exit status -9.*4 steps committed"
    ):
        for s in range(4, 100):
            log.append(*synthetic_step(spec, s))
    with pytest.raises(LogWriteError):
        log.close()
    with open_log(path) as r:
        assert r.n_steps == 4 and r.run_status == "running"


def test_wrong_shape_is_refused_with_field_names(tmp_path):
    """A step with a wrong shape or a missing field names them and writes nothing."""
    spec = small_spec(2, frames_per_step=1)
    with LogWriter(str(tmp_path / "w.h5"), spec) as log:
        step, frames = synthetic_step(spec, 0)
        step["obs"] = step["obs"][:1]
        del step["reward"]
        with pytest.raises(
            LogFormatError, match=r"steps/obs: shape \(1, 109\), expected \(2, 109\).*steps/reward: missing"
        ):
            log.append(step, frames)
    with open_log(str(tmp_path / "w.h5")) as r:
        assert r.n_steps == 0 and r.run_status == "clean"


def test_exception_marks_failed_and_keyboardinterrupt_marks_interrupted(tmp_path):
    """Leaving the context by an exception marks the run failed; by Ctrl-C, interrupted."""
    spec = small_spec(1, frames_per_step=1)
    for exc, status in ((RuntimeError, "failed"), (KeyboardInterrupt, "interrupted")):
        path = str(tmp_path / (status + ".h5"))
        with pytest.raises(exc):
            with LogWriter(path, spec) as log:
                log.append(*synthetic_step(spec, 0))
                raise exc()
        with open_log(path) as r:
            assert r.run_status == status and r.n_steps == 1
        assert validate(path) == []


def test_follow_yields_steps_while_another_process_writes(tmp_path):
    """follow() in a reader process yields the steps a live writer commits, in order, values intact."""
    path = str(tmp_path / "live.h5")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "crash_writer.py"), path, "5", "process"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        seen = 0
        spec = small_spec(3, frames_per_step=4)
        with open_log(path) as log:
            for chunk in log.follow(["obs"], poll_s=0.05, idle_timeout_s=10):
                assert chunk.start == seen
                for i in range(chunk.stop - chunk.start):
                    np.testing.assert_array_equal(
                        chunk.data["obs"][i], synthetic_step(spec, seen + i, 5)[0]["obs"]
                    )
                seen = chunk.stop
                if seen >= 200:
                    break
        assert seen >= 200
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def _held_open(path, opener):
    """Keep ``path`` open in another process, opened by the Python expression ``opener``, until exit."""
    code = f"import sys, time, h5py; from moetape.schema.io import open_for_read; f = {opener}; print('open', flush=True); time.sleep(30)"
    with subprocess.Popen([sys.executable, "-c", code, path], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout.readline().strip() == "open"
            yield
        finally:
            proc.kill()


def test_reopen_ignores_file_locks_or_waits_for_them_without_the_option(tmp_path, monkeypatch):
    """Another program's HDF5 file lock does not stop the writer's reopen (locking=False); an HDF5
    without that option waits until the lock is released."""
    from moetape.schema import io

    path = str(tmp_path / "locked.h5")
    spec = small_spec(2, frames_per_step=1)
    with LogWriter(path, spec) as log:
        log.append(*synthetic_step(spec, 0))
    for opener in ("h5py.File(sys.argv[1], 'r')", "open_for_read(sys.argv[1])"):  # h5py's default locks
        with _held_open(path, opener):
            io.open_for_append(path).close()
    monkeypatch.setattr(io, "LOCKING", {})
    with _held_open(path, "h5py.File(sys.argv[1], 'r')"):
        opened = []
        reopen = threading.Thread(target=lambda: opened.append(io.open_for_append(path)))
        reopen.start()
        time.sleep(0.5)
        assert not opened  # waiting for the lock
    reopen.join(timeout=io.LOCK_WAIT_S)
    assert len(opened) == 1
    opened[0].close()


def test_writer_process_gives_up_on_a_held_file_lock_with_a_hint(tmp_path, monkeypatch):
    """Without locking=False, a file lock held past LOCK_WAIT_S is a one-line LogWriteError saying what to do."""
    from moetape.schema import io

    path = str(tmp_path / "held.h5")
    spec = small_spec(2, frames_per_step=1)
    with LogWriter(path, spec) as log:
        log.append(*synthetic_step(spec, 0))
    monkeypatch.setattr(io, "LOCK_WAIT_S", 0.3)
    monkeypatch.setattr(io, "LOCKING", {})  # an HDF5 without locking=False
    with _held_open(path, "h5py.File(sys.argv[1], 'r')"):
        with pytest.raises(LogWriteError, match="HDF5_USE_FILE_LOCKING=FALSE") as e:
            io.open_for_append(path)
    assert "\n" not in str(e.value)
