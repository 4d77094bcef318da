"""Isaac Gym recording through the real entry points, in subprocesses, against the stand-in isaacgym.

The stand-in (tests/data/isaacgym_standin: an ``isaacgym`` package and a UMI-on-Legs-style
``legged_gym`` codebase) reproduces the real package's behaviours a recorder depends on: its
torch-import check, tensors that refresh only at ``simulate``, reset inside ``step``, the
per-substep callback, ``__del__`` that destroys the sim (a second destroy exits 139, as the
real one segfaults) and a resolved ``config.pkl``. Nothing here runs real Isaac Gym.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")

from moetape.record.isaacgym_backend import STALE_AFTER_RESET  # noqa: E402
from moetape.schema.reader import open_log, stale_mask  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
STANDIN = os.path.join(ROOT, "tests", "data", "isaacgym_standin")
SITE = os.path.join(STANDIN, "site")
CODEBASE = os.path.join(STANDIN, "codebase")
SCRIPTS = os.path.join(ROOT, "scripts")
STEPS = 60  # the stand-in's episodes time out after 51 steps; thighs touch the ground at step 25


def make_run(folder, **kw):
    """The training run's files (config.pkl, checkpoint, trajectory) for the stand-in env."""
    sys.path.insert(0, STANDIN)
    try:
        from make_run import make_run as _make_run
    finally:
        sys.path.remove(STANDIN)
    return _make_run(str(folder), **kw)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A QM-MoE-style training run (109 observations, training seed 42)."""
    return make_run(tmp_path_factory.mktemp("run"))


def env_vars(tmp_path, codebase=False, **extra):
    """Subprocess environment: the stand-in isaacgym on PYTHONPATH (and the codebase if asked), no display."""
    env = dict(os.environ)
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    inherited = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    env["PYTHONPATH"] = os.pathsep.join([SITE] + ([CODEBASE] if codebase else []) + inherited)
    env["ISAACGYM_STANDIN_LOG"] = str(tmp_path / "gym.log")
    env.update(extra)
    return env


def record_args(run, out, *extra, steps=STEPS, envs=2):
    """`moetape record --backend isaacgym` arguments for the run's files."""
    args = ["--moe_ckpt_path", run["checkpoint"], "--trajectory_file_path", run["trajectory"]]
    args += ["--backend", "isaacgym", "--device", "cpu", "--num_envs", str(envs)]
    return args + ["--num_steps", str(steps), "--out", str(out), "-q"] + list(extra)


def moetape(args, env):
    """Run `python -m moetape ARGS`; return the CompletedProcess (text)."""
    cmd = [sys.executable, "-m", "moetape"] + list(args)
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def gym_log(tmp_path):
    """Lines the stand-in gym logged (viewer draws, destroys)."""
    path = tmp_path / "gym.log"
    return path.read_text().splitlines() if path.exists() else []


def one_line(proc):
    """The single stderr line of a refused run (exit 1, no traceback)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def recorded(run, tmp_path_factory):
    """`moetape record --backend isaacgym --codebase DIR` of 60 steps x 2 envs: (process, log path, gym log)."""
    tmp = tmp_path_factory.mktemp("rec")
    out = tmp / "out"
    proc = moetape(["record"] + record_args(run, out, "--codebase", CODEBASE), env_vars(tmp))
    return proc, str(out / "log.h5"), gym_log(tmp)


# ------------------------------------------------------------------------------- the stand-in


def test_standin_refuses_torch_imported_first(tmp_path):
    """The stand-in isaacgym raises the real ImportError when torch was imported first."""
    code = "import torch\nimport isaacgym"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env_vars(tmp_path), capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert "PyTorch was imported before isaacgym modules" in proc.stderr


# ------------------------------------------------------------------------- 1. import order


def test_cli_record_isaacgym_completes(recorded):
    """`moetape record --backend isaacgym` imports isaacgym before torch and records every step."""
    proc, log_path, _ = recorded
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == log_path
    with open_log(log_path) as log:
        assert log.n_steps == STEPS
        assert log.provenance["backend"] == "isaacgym"
        assert log.provenance["backend_versions"]["isaacgym"] == "1.0rc4-standin"
        assert log.read("obs").shape == (STEPS, 2, 109)


def test_python_api_record_isaacgym(run, tmp_path):
    """record(RunConfig(backend="isaacgym")) from Python imports isaacgym before torch itself."""
    code = (
        "from moetape.record.runner import RunConfig, record\n"
        f"r = record(RunConfig(moe_ckpt_path={run['checkpoint']!r}, trajectory_file_path={run['trajectory']!r}, "
        f"out={str(tmp_path / 'api')!r}, backend='isaacgym', num_steps=3, codebase={CODEBASE!r}))\n"
        "print(r.steps, r.status)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env_vars(tmp_path), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["3", "clean"]


def test_python_api_after_torch_is_one_clear_error(run, tmp_path):
    """A Python caller that imported torch first gets one InputError saying to import isaacgym first."""
    code = (
        "import torch\n"
        "from moetape.record.runner import RunConfig, record\n"
        "from moetape.schema.errors import InputError\n"
        "try:\n"
        f"    record(RunConfig(moe_ckpt_path={run['checkpoint']!r}, trajectory_file_path={run['trajectory']!r}, "
        f"out={str(tmp_path / 'api')!r}, backend='isaacgym', codebase={CODEBASE!r}))\n"
        "except InputError as e:\n"
        "    print(e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env_vars(tmp_path), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "PyTorch was imported before isaacgym modules" in proc.stdout
    assert "`import isaacgym`" in proc.stdout and "before anything imports torch" in proc.stdout


def test_help_imports_neither_isaacgym_nor_torch(tmp_path):
    """`moetape --help` and `moetape record --help` import neither isaacgym nor torch, and list the new options."""
    code = (
        "import sys\nfrom moetape.cli import cli\n"
        "for args in (['--help'], ['record', '--help']):\n"
        "    try:\n        cli(args)\n    except SystemExit:\n        pass\n"
        "print('isaacgym' in sys.modules, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env_vars(tmp_path), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "False False"
    assert "--keep-terminations" in proc.stdout and "--codebase" in proc.stdout


@pytest.mark.parametrize("script", ["play_moe_ee_task.py", "play_moe_simple.py"])
def test_legacy_wrappers_reach_isaacgym(run, tmp_path, script):
    """Both legacy wrappers record on Isaac Gym (--backend isaacgym) and write their legacy files."""
    args = [sys.executable, os.path.join(SCRIPTS, script), "--moe_ckpt_path", run["checkpoint"]]
    args += ["--trajectory_file_path", run["trajectory"], "--num_steps", "30", "--num_envs", "2"]
    args += ["--device", "cpu", "--backend", "isaacgym", "--codebase", CODEBASE, "--out", str(tmp_path / "o")]
    if script == "play_moe_ee_task.py":
        args += ["--base_ckpt_path", run["base"], "--arm_ckpt_path", run["arm"]]
    proc = subprocess.run(args, env=env_vars(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    wanted = ["logs.zarr", "logs.pkl"] if script == "play_moe_ee_task.py" else ["moe_results.pkl"]
    for name in wanted + ["log.h5"]:
        assert os.path.exists(tmp_path / "o" / name), name
    with open_log(str(tmp_path / "o" / "log.h5")) as log:
        overrides = log.provenance["config_overrides"]
    base_only = any(line.startswith("cfg.asset.terminate_after_contacts_on = ['base']") for line in overrides)
    assert base_only == (script == "play_moe_ee_task.py")  # the simple script kept the training's list


# --------------------------------------------------------------------------- 2. terminations


def test_terminations_follow_the_full_script_unless_kept(run, recorded, tmp_path):
    """By default only base contact ends an episode (thighs touch at step 25); --keep-terminations keeps the training's."""
    _, log_path, _ = recorded
    with open_log(log_path) as log:
        done, timeout = log.read("done"), log.read("timeout")
    assert not (done & ~timeout).any() and timeout[50].all()  # only the 1 s time-out ends episodes
    out = tmp_path / "keep"
    proc = moetape(
        ["record"] + record_args(run, out, "--keep-terminations", steps=30), env_vars(tmp_path, True)
    )
    assert proc.returncode == 0, proc.stderr
    with open_log(str(out / "log.h5")) as log:
        done, timeout = log.read("done"), log.read("timeout")
    first = np.argmax(done[:, 0])
    assert done[first].all() and not timeout[first].any() and 20 < first < 30  # a thigh contact


# ------------------------------------------------------------------------------ 3. seed, RNG


def test_same_samples_as_the_legacy_script(run, recorded, tmp_path):
    """Replaying the log's actions through the legacy set-up gives the same targets, obs and dones."""
    _, log_path, _ = recorded
    with open_log(log_path) as log:
        actions = log.read("action")
        mine = {n: log.read(n) for n in ("obs", "target_pos", "done")}
        frames = log.read("frames/root_pos")  # substep frames: 4 rows a step, row 0 before the step
        mine["root_pos"] = frames.reshape((STEPS, -1) + frames.shape[1:])[:, 0]
        assert log.provenance["seed"] == 42
        assert (
            "seed = 42 (the training's, from config.pkl; --seed replaces it)"
            in log.provenance["config_overrides"]
        )
    np.save(tmp_path / "actions.npy", actions)
    script = os.path.join(STANDIN, "legacy_reference.py")
    args = [sys.executable, script, os.path.dirname(run["config"]), str(tmp_path / "actions.npy")]
    args += [str(tmp_path / "ref.npz"), "--script", "ee_task", "--num_envs", "2"]
    proc = subprocess.run(args, env=env_vars(tmp_path, True), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    ref = np.load(tmp_path / "ref.npz")
    for name in ("target_pos", "obs", "root_pos"):
        np.testing.assert_allclose(mine[name], ref[name], rtol=0, atol=1e-6, err_msg=name)
    assert (mine["done"] == ref["done"]).all()


def test_seed_option_replaces_the_training_seed(run, tmp_path):
    """--seed N is used and recorded as given instead of config.pkl's seed."""
    out = tmp_path / "s"
    proc = moetape(["record"] + record_args(run, out, "--seed", "7", steps=2), env_vars(tmp_path, True))
    assert proc.returncode == 0, proc.stderr
    with open_log(str(out / "log.h5")) as log:
        assert log.provenance["seed"] == 7
        assert "seed = 7 (--seed)" in log.provenance["config_overrides"]


# --------------------------------------------------------------- 4. rows after an automatic reset


def test_stale_rows_after_a_reset_are_marked(recorded):
    """The log marks the rows a reset leaves stale; every unmarked frame row 0 has the base body on the root."""
    _, log_path, _ = recorded
    with open_log(log_path) as log:
        assert log.stale_after_reset == STALE_AFTER_RESET
        assert log.meta["stale_after_reset"] == json.dumps(STALE_AFTER_RESET)
        stale = stale_mask(log)
        root = log.read("frames/root_pos")[:, :, 2].reshape(STEPS, 4, 2)  # (step, substep, env)
        body = log.read("frames/body_pos")[:, :, 0, 2].reshape(STEPS, 4, 2)  # body 0 is "base"
    assert stale.shape == (STEPS, 2)
    assert np.flatnonzero(stale.any(axis=1)).tolist() == [51] and stale[51].all()  # after the time-out
    fresh = ~stale
    np.testing.assert_allclose(body[:, 0][fresh], root[:, 0][fresh], atol=1e-5)
    np.testing.assert_allclose(body[:, 1:], root[:, 1:], atol=1e-5)  # later substep rows are fresh
    assert (np.abs(body[51, 0] - root[51, 0]) > 1e-3).all()  # the marked rows really are stale


# ------------------------------------------------------------------------------- 5. close


def test_sim_destroyed_once(recorded):
    """The run destroys the sim once and exits 0 (a second destroy, as by the env's __del__, would exit 139)."""
    proc, _, lines = recorded
    assert proc.returncode == 0 and "Segmentation fault" not in proc.stderr
    assert lines.count("destroy_sim") == 1


# ----------------------------------------------------------------------------- 6. --visualize


def test_visualize_draws_the_viewer_every_step(run, tmp_path):
    """--visualize draws Isaac Gym's viewer after every step and destroys it once."""
    out = tmp_path / "v"
    env = env_vars(tmp_path, True, DISPLAY=":0")
    proc = moetape(["record"] + record_args(run, out, "--visualize", steps=5, envs=1), env)
    assert proc.returncode == 0, proc.stderr
    lines = gym_log(tmp_path)
    assert lines.count("draw_viewer") == 5 and lines.count("destroy_viewer") == 1


def test_visualize_window_closed_ends_run_as_interrupted(run, tmp_path):
    """Closing the viewer window ends the run like Ctrl-C: exit 130, the log marked interrupted."""
    out = tmp_path / "v"
    env = env_vars(tmp_path, True, DISPLAY=":0", ISAACGYM_STANDIN_CLOSE_VIEWER_AFTER="3")
    proc = moetape(["record"] + record_args(run, out, "--visualize", steps=10, envs=1), env)
    assert proc.returncode == 130, proc.stderr
    with open_log(str(out / "log.h5")) as log:
        assert log.run_status == "interrupted" and log.n_steps == 3


@pytest.mark.parametrize(
    "envs, display, words",
    [(2, ":0", "plays one env"), (1, None, "no display here")],
)
def test_visualize_refusals_are_one_line(run, tmp_path, envs, display, words):
    """--visualize with several envs, or without a display, is refused with one line."""
    extra = {"DISPLAY": display} if display else {}
    proc = moetape(
        ["record"] + record_args(run, tmp_path / "v", "--visualize", steps=2, envs=envs),
        env_vars(tmp_path, True, **extra),
    )
    assert words in one_line(proc)


# ------------------------------------------------------------------------------ 7. codebase


def test_missing_codebase_is_one_line(run, tmp_path):
    """Without the training codebase on the path: one line naming the module and --codebase."""
    proc = moetape(["record"] + record_args(run, tmp_path / "c", steps=2), env_vars(tmp_path))
    line = one_line(proc)
    assert "legged_gym.env.isaacgym.env_add_baseinfo.IsaacGymEnv" in line and "--codebase DIR" in line


# ------------------------------------------------------------------------ 8. observation size


def test_env_and_checkpoint_observation_sizes_differ(tmp_path):
    """A UMI-on-Legs env (96 observations) with a QM-MoE checkpoint (109): one line with both numbers."""
    run = make_run(tmp_path / "umi", env="umi")
    proc = moetape(["record"] + record_args(run, tmp_path / "o", steps=2), env_vars(tmp_path, True))
    line = one_line(proc)
    assert "expected 96 (env), got 109 (checkpoint)" in line


def test_config_observation_size_not_the_envs(tmp_path):
    """An older config.pkl saying 106 observations for an env that builds 109: one line naming 106."""
    run = make_run(tmp_path / "old", num_observations=106)
    proc = moetape(["record"] + record_args(run, tmp_path / "o", steps=2), env_vars(tmp_path, True))
    line = one_line(proc)
    assert "cfg.env.num_observations = 106" in line


# -------------------------------------------------------------------------------- the result


def test_derive_on_the_isaacgym_log(recorded, tmp_path):
    """`moetape derive` turns the Isaac Gym log into the legacy files."""
    _, log_path, _ = recorded
    proc = moetape(["derive", log_path, "-o", str(tmp_path / "d"), "--no-video"], env_vars(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert os.path.exists(tmp_path / "d" / "logs.pkl")
