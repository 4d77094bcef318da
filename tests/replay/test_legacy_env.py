"""Every derived file loads in the legacy environment: numpy 1.24.4, zarr 2.16.1, numcodecs 0.12.1.

The test builds a throw-away venv with exactly those versions (cached under
build/legacy-venv/<versions>: build/ is git-ignored, skipped by ruff and never cleaned, so later
runs reuse it in a second) and loads the files there with plain ``pickle.load`` and ``zarr.open``.
It is skipped, with the reason, when the venv cannot be built (no network, no wheels).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from typing import Tuple

import pytest

from moetape.replay.derive import derive


def _sibling(name: str):
    """Import a test module beside this one (tests/ has no packages; pytest runs with importlib mode)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py")
    spec = importlib.util.spec_from_file_location("_moetape_" + name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_te = _sibling("test_export")
LEGACY_SNIPPET, SLASH_TERMS, write_slash_log = _te.LEGACY_SNIPPET, _te.SLASH_TERMS, _te.write_slash_log

PINS = ("numpy==1.24.4", "zarr==2.16.1", "numcodecs==0.12.1")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = os.path.join(
    ROOT,
    "build",
    "legacy-venv",
    "py{}{}-{}".format(sys.version_info[0], sys.version_info[1], "-".join(p.replace("==", "") for p in PINS)),
)

CHECK = textwrap.dedent("""
    import json, pickle, sys
    import numpy as np, zarr, numcodecs
    assert (np.__version__, zarr.__version__, numcodecs.__version__) == ("1.24.4", "2.16.1", "0.12.1")
    d, terms, e, s, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])

    def load(name):
        with open(d + "/" + name, "rb") as f:
            return pickle.load(f)

    ws = load("weight_stats.pkl")
    assert list(ws) == ["base_weights", "arm_weights", "weight_entropy"]
    assert all(len(v) == s and all(type(x) is float for x in v) for v in ws.values())

    r = load("moe_results.pkl")
    assert list(r) == ["config", "weight_stats", "action_logs", "state_logs"] and isinstance(r["config"], dict)
    assert [a.shape for a in r["action_logs"]["actions"]] == [(e, 18)] * s
    assert all(a.dtype == np.float32 for a in r["action_logs"]["actions"] + r["action_logs"]["moe_weights"])
    assert [a.shape for a in r["state_logs"]["root_quat"]] == [(4,)] * s

    p = load("logs.pkl")
    assert list(p) == ["config", "state_logs", "action_logs", "episode_logs", "task_logs", "weight_stats"]
    assert list(p["episode_logs"]) == terms + ["reward_total", "time_outs"]
    assert [a.shape for a in p["state_logs"]["rigid_body_pos"]] == [(e, 3, 3)] * n
    assert [a.shape for a in p["task_logs"]["target_quats_wxyz"]] == [(8, 4)] * n
    assert p["episode_logs"]["time_outs"][0].dtype == np.bool_
    assert p["state_logs"]["root_state"][0].dtype == np.float32

    g = zarr.open(d + "/logs.zarr", mode="r")
    assert isinstance(g, zarr.hierarchy.Group) and g.attrs["rows"] == "substep"
    assert g["root_state"].shape == (n, e, 13) and g["root_state"].dtype == np.float32
    assert g["obs"].shape == (n, e, 109) and g["episode_time"].chunks == (1, e)
    for t in terms:
        a = g[t.replace("/", "_")]
        assert a.shape == (s, e) and a.chunks == (1, e) and a.dtype == np.float32
        assert np.array_equal(a[:], np.stack(p["episode_logs"][t]))
    assert g["time_outs"].dtype == bool and g["weight_entropy"].dtype == np.float64
    assert np.array_equal(g["obs"][:], np.stack(p["action_logs"]["obs"]))
    assert np.array_equal(g["target_quats_wxyz"][:], np.stack(p["task_logs"]["target_quats_wxyz"]))
    assert g["base_weights"][:].tolist() == ws["base_weights"]
    print("legacy-ok", len(list(g.array_keys())))
""")


def legacy_python() -> Tuple[str, str]:
    """Return (python of the cached legacy venv, "") or ("", why it could not be built)."""
    python = os.path.join(VENV, "bin", "python")
    stamp = os.path.join(VENV, ".complete")
    if os.path.exists(stamp):
        return python, ""
    try:
        if not os.path.exists(python):
            subprocess.run([sys.executable, "-m", "venv", VENV], check=True, capture_output=True, timeout=300)
        subprocess.run(
            [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        return "", "cannot build the legacy venv ({}): {}".format(" ".join(PINS), str(detail).strip()[-300:])
    with open(stamp, "w") as f:
        f.write("\n".join(PINS) + "\n")
    return python, ""


@pytest.fixture(scope="module")
def legacy_env():
    """Python of a venv with numpy 1.24.4, zarr 2.16.1 and numcodecs 0.12.1 (skips if it cannot be built)."""
    python, why = legacy_python()
    if not python:
        pytest.skip(why)
    return python


def test_derived_files_load_in_legacy_env(legacy_env, tmp_path):
    """weight_stats.pkl, moe_results.pkl, logs.pkl and logs.zarr load with numpy 1.24 / zarr 2.16, shapes intact."""
    log = write_slash_log(tmp_path / "run.h5", n_steps=7, n_envs=2)
    out = tmp_path / "derived"
    derive(log, str(out), video=False)
    args = [legacy_env, "-c", CHECK, str(out), json.dumps(SLASH_TERMS), "2", "7", "28"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("legacy-ok 23")


def test_legacy_snippet_in_legacy_env(legacy_env, tmp_path):
    """The legacy README's analysis snippet runs unchanged there on the exported weight_stats.pkl."""
    from moetape.replay.export import export_weight_stats

    log = write_slash_log(tmp_path / "run.h5", n_steps=5)
    export_weight_stats(log, str(tmp_path / "weight_stats.pkl"))
    proc = subprocess.run(
        [legacy_env, "-c", LEGACY_SNIPPET], cwd=str(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "平均权重熵" in proc.stdout
