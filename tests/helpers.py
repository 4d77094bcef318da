"""Helpers shared by tests (importable as ``helpers``; tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys

from moetape.schema.synthetic import small_spec, synthetic_step
from moetape.schema.writer import LogWriter

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
GOLDEN = sorted(glob.glob(os.path.join(DATA, "v*_minimal.h5")))
GOLDEN_SEED = 1


def write_log(path, n_steps=12, *, n_envs=2, seed=0, frames_per_step=4, **kwargs):
    """Write a synthetic log of ``n_steps`` steps and return its spec."""
    spec = small_spec(n_envs, frames_per_step=frames_per_step)
    with LogWriter(str(path), spec, meta={"command_line": "test"}, **kwargs) as log:
        for s in range(n_steps):
            log.append(*synthetic_step(spec, s, seed))
    return spec


CRASH_WRITER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema", "crash_writer.py")


def killed_log(path: str, seed: int = 3, steps: int = 60) -> str:
    """Write a log with schema/crash_writer.py and SIGKILL it after ``steps`` committed steps (superblock flags left set)."""
    proc = subprocess.Popen(
        [sys.executable, CRASH_WRITER, path, str(seed), "thread"], stdout=subprocess.PIPE, text=True
    )
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if int(line) >= steps:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
    return path
