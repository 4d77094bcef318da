"""The writer on its failure paths: a bad flush interval is refused, any writer failure ends the run at
once with its error, and every shared-memory batch is released. Runs that could hang on a broken
writer go in a subprocess with a timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from moetape.schema.errors import LogWriteError
from moetape.schema.reader import open_log
from moetape.schema.synthetic import small_spec, synthetic_step
from moetape.schema.writer import LogWriter

PRELUDE = """
import os, sys, time
from moetape.schema.errors import InputError, LogWriteError, OutputExistsError
from moetape.schema.reader import open_log
from moetape.schema.synthetic import small_spec, synthetic_step
from moetape.schema.writer import LogWriter
path = sys.argv[1]
spec = small_spec(1, frames_per_step=1)
"""


def _script(body, path):
    """Run PRELUDE + body in a fresh interpreter (a hang fails the test instead of stalling it)."""
    code = PRELUDE + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("process", [False, True])
@pytest.mark.parametrize("value", ["-1", "float('nan')", "float('inf')"])
def test_bad_flush_seconds_refused_before_anything_is_made(tmp_path, value, process):
    """flush_seconds below 0 or not finite raises InputError; no file, no thread traceback, no leaked block."""
    path = tmp_path / "f.h5"
    proc = _script(
        f"""
        try:
            LogWriter(path, spec, flush_seconds={value}, process={process})
            print("accepted")
        except InputError as e:
            print("refused:", e)
        """,
        path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("refused: " + str(path)) and ">= 0" in proc.stdout
    assert proc.stderr == ""  # no thread traceback, no resource_tracker warning
    assert not path.exists()


@pytest.mark.parametrize("process", [False, True])
def test_zero_flush_seconds_commits_every_step(tmp_path, process):
    """flush_seconds=0 commits each step on its own (a batch far from full), and does not hang."""
    path = tmp_path / "z.h5"
    proc = _script(
        f"""
        with LogWriter(path, spec, batch_steps=1000, flush_seconds=0, process={process}) as log:
            for s in range(5):
                log.append(*synthetic_step(spec, s))
                deadline = time.monotonic() + 60
                while log.n_committed < s + 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                print(log.n_committed)
        with open_log(path) as r:
            print("log", r.n_steps, r.run_status)
        """,
        path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "2", "3", "4", "5", "log", "5", "clean"]


@pytest.mark.parametrize("process", [False, True])
def test_writer_thread_failure_outside_a_write_ends_the_run(tmp_path, process):
    """A writer-thread failure outside a batch write is re-raised at the next append, not left to hang."""
    path = tmp_path / "t.h5"
    proc = _script(
        f"""
        def boom(self):
            raise RuntimeError("boom")
        LogWriter._take_stale = boom
        log = LogWriter(path, spec, batch_steps=2, flush_seconds=0.05, process={process})
        try:  # the thread may fail before the first append (its first idle look), or after
            log.append(*synthetic_step(spec, 0))
            deadline = time.monotonic() + 60
            while log._thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.01)
            for s in range(1, 1000):
                log.append(*synthetic_step(spec, s))
            print("no error")
        except LogWriteError as e:
            print("error:", e)
        try:
            log.close()
        except LogWriteError:
            print("close raised")
        with open_log(path) as r:
            print("status", r.run_status)
        """,
        path,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"error: {path}: writing the log failed (RuntimeError: boom)"), proc.stdout
    assert lines[1:] == ["close raised", "status failed"]
    assert "Traceback" not in proc.stderr and "leaked" not in proc.stderr


def test_dead_writer_process_noticed_at_the_next_append(tmp_path):
    """A writer process that dies while idle ends the run at the very next append, not a batch later."""
    path = str(tmp_path / "k.h5")
    spec = small_spec(1, frames_per_step=1)
    log = LogWriter(path, spec, batch_steps=1000, flush_seconds=100, process=True)
    log.append(*synthetic_step(spec, 0))
    os.kill(log._child.proc.pid, signal.SIGKILL)
    log._child.proc.wait()
    with pytest.raises(LogWriteError, match=r"writer process ended unexpectedly \(exit status -9\)"):
        log.append(*synthetic_step(spec, 1))
    with pytest.raises(LogWriteError):
        log.close()
    with open_log(path) as r:
        assert r.n_steps == 0


def test_refused_writer_releases_its_shared_memory(tmp_path):
    """A writer refused because the log exists releases its shared-memory batches: no 'leaked' warning."""
    path = tmp_path / "exists.h5"
    path.write_bytes(b"someone else's")
    proc = _script(
        """
        try:
            LogWriter(path, spec, process=True)
        except OutputExistsError as e:
            print("refused")
        """,
        path,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "refused", proc.stderr
    assert "leaked" not in proc.stderr and proc.stderr == ""
    assert path.read_bytes() == b"someone else's"


def test_batch_pool_failure_releases_the_blocks_made(tmp_path):
    """If making the batch pool fails partway, the blocks already made are released."""
    path = tmp_path / "pool.h5"
    proc = _script(
        """
        import moetape.schema.writer as w
        real, made = w.Batch, []
        def third_fails(*a, **k):
            if len(made) == 2:
                raise MemoryError("no room in /dev/shm")
            made.append(real(*a, **k))
            return made[-1]
        w.Batch = third_fails
        try:
            LogWriter(path, spec, process=True)
        except MemoryError:
            print("failed", sum(b.shm is None for b in made))
        """,
        path,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "failed 2", proc.stderr
    assert proc.stderr == "" and not path.exists()


def test_main_thread_never_polls_the_writer_process(tmp_path, monkeypatch):
    """Appends check the writer process without Popen.poll in the main thread, where a Ctrl-C could
    leave Popen's wait lock taken (the close then waited forever); the writer thread may poll."""
    import subprocess
    import threading

    callers = []
    real_poll = subprocess.Popen.poll

    def poll(self):
        callers.append(threading.current_thread() is threading.main_thread())
        return real_poll(self)

    monkeypatch.setattr(subprocess.Popen, "poll", poll)
    path = str(tmp_path / "p.h5")
    spec = small_spec(1, frames_per_step=1)
    with LogWriter(path, spec, batch_steps=4, flush_seconds=0.01, process=True) as log:
        for s in range(40):
            log.frame_rows()
            log.append(*synthetic_step(spec, s))
        time.sleep(0.1)  # the writer thread's idle look at the child
    assert callers and not any(callers)
    with open_log(path) as r:
        assert r.n_steps == 40


def test_exit_status_sees_a_dead_writer_process_without_reaping_it(tmp_path):
    """WriterProcess.exit_status: None while the child runs; minus the signal once killed; the Popen still reaps it."""
    path = str(tmp_path / "e.h5")
    spec = small_spec(1, frames_per_step=1)
    log = LogWriter(path, spec, process=True)
    child = log._child
    assert child.exit_status() is None
    os.kill(child.proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while child.exit_status() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert child.exit_status() == -signal.SIGKILL and child.proc.returncode is None  # not reaped
    assert child.proc.wait(timeout=30) == -signal.SIGKILL
    with pytest.raises(LogWriteError):
        log.close()
