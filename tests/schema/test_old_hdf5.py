"""Logs open with an older HDF5: h5py 3.11 (HDF5 1.14), as on the Python 3.8 recorder machines and in older tools.

A throw-away venv with h5py 3.11.0 and numpy 1.24.4 is cached under build/old-hdf5-venv (git-ignored);
the test is skipped, with the reason, when it cannot be built (no network, no wheels).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from helpers import GOLDEN, write_log

PINS = ("h5py==3.11.0", "numpy==1.24.4")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = os.path.join(
    ROOT,
    "build",
    "old-hdf5-venv",
    "py{}{}-{}".format(sys.version_info[0], sys.version_info[1], "-".join(p.replace("==", "") for p in PINS)),
)

CHECK = textwrap.dedent("""
    import sys, h5py
    assert h5py.version.hdf5_version.startswith("1."), h5py.version.hdf5_version
    for path in sys.argv[1:]:
        with h5py.File(path, "r", swmr=True) as f:
            s, n = (int(x) for x in f["n_committed"][()])
            assert f.attrs["format_version"] == 1 and list(f.attrs["expert_names"]) == ["base", "arm"]
            assert f["steps/obs"][:s].shape[0] == s and f["frames/root_pos"][:n].shape[0] == n
            assert f["steps/obs"].fletcher32
    print("ok", h5py.version.hdf5_version)
""")


@pytest.fixture(scope="module")
def old_h5py_python():
    """Python of a venv with h5py 3.11.0 (HDF5 1.14); skips if it cannot be built."""
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(os.path.join(VENV, ".complete")):
        try:
            if not os.path.exists(py):
                subprocess.run(
                    [sys.executable, "-m", "venv", VENV], check=True, capture_output=True, timeout=300
                )
            subprocess.run(
                [py, "-m", "pip", "install", "-q", *PINS],
                check=True,
                capture_output=True,
                text=True,
                timeout=600,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
            pytest.skip("cannot build a venv with {}: {}".format(" ".join(PINS), getattr(e, "stderr", e)))
        open(os.path.join(VENV, ".complete"), "w").close()
    return py


def test_logs_open_with_hdf5_1_14(old_h5py_python, tmp_path):
    """A fresh log and every golden file open, with their committed rows, under HDF5 1.14."""
    fresh = tmp_path / "fresh.h5"
    write_log(fresh, 20)
    proc = subprocess.run(
        [old_h5py_python, "-c", CHECK, str(fresh), *GOLDEN], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok 1.")
