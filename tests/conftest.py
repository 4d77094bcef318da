"""Shared fixtures: golden logs of every format version and small freshly written logs."""

from __future__ import annotations

import os
import signal

import pytest
from helpers import GOLDEN, write_log


@pytest.fixture(params=GOLDEN, ids=[os.path.basename(p) for p in GOLDEN])
def golden_log(request):
    """Path of each golden log (one per released format version)."""
    return request.param


@pytest.fixture
def log_path(tmp_path):
    """Path of a fresh 12-step synthetic log with 2 envs and substep frames."""
    p = tmp_path / "run.h5"
    write_log(p)
    return str(p)


def pytest_configure(config):
    """Give this run the default Ctrl-C handling if it was started with SIGINT ignored.

    Tests send SIGINT to moetape subprocesses. A shell starts background jobs (`make test &`, nohup)
    with SIGINT ignored, an ignored signal stays ignored across exec, and Python then installs no
    Ctrl-C handler: every such test would wait on a recording that never stops. A handled signal is
    reset to the default in the children, which is what these tests need.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
