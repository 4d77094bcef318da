"""Shared fixtures: golden logs of every format version and small freshly written logs."""

from __future__ import annotations

import os

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
