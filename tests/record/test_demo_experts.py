"""moetape demo ships its two experts as plain checkpoints and shows the legacy full script's command."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("mujoco")

from moetape.cli import cli  # noqa: E402
from moetape.record.demo import demo_expert_state_dict, demo_state_dict  # noqa: E402
from moetape.record.policy import detect_kind, load_policy, read_checkpoint  # noqa: E402
from moetape.schema.reader import open_log  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A short `moetape demo` run: its folder and its CliRunner result."""
    out = str(tmp_path_factory.mktemp("demo") / "demo")
    r = CliRunner().invoke(cli, ["demo", "--out", out, "--num_steps", "4", "--num_envs", "2", "-q"])
    assert r.exit_code == 0, r.output
    return out, r


def test_demo_writes_plain_expert_checkpoints(demo_run):
    """The demo writes demo_base_expert.pt and demo_arm_expert.pt: plain rsl_rl expert dicts of the MoE's experts."""
    out, _ = demo_run
    moe = demo_state_dict()
    for role in ("base", "arm"):
        ckpt = read_checkpoint(os.path.join(out, f"demo_{role}_expert.pt"))
        assert set(ckpt) == {"model_state_dict", "optimizer_state_dict", "iter", "infos"}
        sd = ckpt["model_state_dict"]
        assert detect_kind(sd) == "expert"
        assert set(sd) == set(demo_expert_state_dict(role)) and "std" in sd and "critic.0.weight" in sd
        for key, value in sd.items():
            np.testing.assert_array_equal(value.numpy(), moe[f"ac_{role}.{key}"])


def test_demo_experts_replace_the_moe_experts_unchanged(demo_run):
    """Loaded as --base_ckpt_path / --arm_ckpt_path the demo experts give the MoE's own actions and gate."""
    out, _ = demo_run
    moe = os.path.join(out, "demo_moe_checkpoint.pt")
    base, arm = (os.path.join(out, f"demo_{role}_expert.pt") for role in ("base", "arm"))
    plain = load_policy(moe)
    replaced = load_policy(moe, base_path=base, arm_path=arm)
    assert [s["role"] for s in replaced.sources] == ["moe", "base", "arm"]
    with open_log(os.path.join(out, "log.h5")) as log:  # the demo ran them as replacements
        assert [s["role"] for s in log.provenance["checkpoints"]] == ["moe", "base", "arm"]
        logged_obs, logged_action = log.read("obs"), log.read("action")
    for s in range(len(logged_obs)):  # same obs -> the MoE's own actions (up to torch thread counts)
        np.testing.assert_allclose(logged_action[s], plain.policy_step(logged_obs[s])[0], rtol=0, atol=1e-6)
    obs = logged_obs.reshape(-1, logged_obs.shape[-1])
    obs = np.concatenate([obs, np.random.RandomState(0).normal(0, 1, (64, obs.shape[1])).astype(np.float32)])
    a0, g0 = plain.policy_step(obs)
    a1, g1 = replaced.policy_step(obs)
    np.testing.assert_array_equal(a1, a0)
    np.testing.assert_array_equal(g1, g0)


def test_demo_shows_the_legacy_command_and_it_runs(demo_run, tmp_path):
    """The demo prints the legacy play_moe_ee_task.py command on stderr; run for 3 steps it writes its files."""
    out, r = demo_run
    lines = r.stderr.splitlines()
    at = [i for i, line in enumerate(lines) if "legacy full script" in line]
    assert at, r.stderr
    cmd = shlex.split(lines[at[-1] + 1])
    assert cmd[:2] == ["python", os.path.join("scripts", "play_moe_ee_task.py")]
    for flag, name in (
        ("--moe_ckpt_path", "demo_moe_checkpoint.pt"),
        ("--base_ckpt_path", "demo_base_expert.pt"),
        ("--arm_ckpt_path", "demo_arm_expert.pt"),
        ("--trajectory_file_path", "demo_trajectory.pkl"),
    ):
        assert cmd[cmd.index(flag) + 1] == os.path.join(out, name)
    assert r.stdout.strip() == os.path.join(out, "log.h5")  # stdout keeps only the log path
    legacy_out = str(tmp_path / "legacy")
    run = [sys.executable] + cmd[1:] + ["--num_steps", "3", "--out", legacy_out]
    p = subprocess.run(run, cwd=str(REPO), capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert sorted(n for n in os.listdir(legacy_out) if not n.startswith(".")) == [
        "log.h5",
        "logs.pkl",
        "logs.zarr",
    ]
    with open_log(os.path.join(legacy_out, "log.h5")) as log:
        assert log.n_steps == 3 and log.ended_cleanly
        assert [s["role"] for s in log.provenance["checkpoints"]] == ["moe", "base", "arm"]
