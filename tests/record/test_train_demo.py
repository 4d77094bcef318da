"""The demo policy's training (scripts/train_demo_policy.py, record/train_moe.py) and the committed trained checkpoint."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("mujoco")

from moetape.cli import cli  # noqa: E402
from moetape.record import demo  # noqa: E402
from moetape.record.mujoco_task import OBS  # noqa: E402
from moetape.record.policy import detect_kind, load_policy, read_checkpoint  # noqa: E402
from moetape.schema.reader import open_log  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location(
        "train_demo_policy", REPO / "scripts" / "train_demo_policy.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-iteration, 8-env training run of the script: its output folder and exit code."""
    pytest.importorskip("rsl_rl")
    out = str(tmp_path_factory.mktemp("train") / "policy")
    code = _script().main(
        ["--out-dir", out, "--iterations", "2", "--n-envs", "8", "--seed", "3", "--demo-steps", "20", "-q"]
    )
    return out, code


def test_short_training_writes_checkpoint_metadata_and_curves(trained):
    """A short training run writes demo_moe.pt (variant B), demo_moe.json (script, seed, iterations, figures) and the PNG."""
    out, code = trained
    assert code == 0
    assert sorted(os.listdir(out)) == ["demo_moe.json", "demo_moe.pt", "training_curves.png"]
    ckpt = read_checkpoint(os.path.join(out, "demo_moe.pt"))
    assert set(ckpt) == {"model_state_dict", "optimizer_state_dict", "iter", "infos"}
    assert detect_kind(ckpt["model_state_dict"]) == "moe-b" and ckpt["iter"] == 2
    meta = __import__("json").loads(Path(out, "demo_moe.json").read_text())
    assert meta["config"]["seed"] == 3 and meta["config"]["iterations"] == 2 and meta["config"]["n_envs"] == 8
    assert meta["script"].startswith("scripts/train_demo_policy.py")
    assert {"pos_err_median_m", "terminations", "gate_arm_mean"} <= set(meta["demo_figures"])
    assert ckpt["infos"]["trained"] is True and ckpt["infos"]["config"] == meta["config"]
    assert Path(out, "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_short_training_checkpoint_records(trained, tmp_path):
    """`moetape record` loads the freshly trained checkpoint and records its gate for every step."""
    out, _ = trained
    traj = demo.make_demo_trajectory(str(tmp_path / "traj.pkl"), n_episodes=2, duration_s=2.0)
    run = str(tmp_path / "run")
    args = ["record", "--moe_ckpt_path", os.path.join(out, "demo_moe.pt"), "--trajectory_file_path", traj]
    r = CliRunner().invoke(cli, args + ["--out", run, "--num_envs", "2", "--num_steps", "6", "-q"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == os.path.join(run, "log.h5")
    with open_log(os.path.join(run, "log.h5")) as log:
        assert log.n_steps == 6 and log.ended_cleanly
        gate = log.read("gate")
    assert gate.shape == (6, 2, 2)
    np.testing.assert_allclose(gate.sum(-1), 1.0, atol=1e-5)


def test_script_refuses_existing_outputs_without_force(trained, capsys):
    """The script refuses to overwrite its outputs without --force and names the file and the flag."""
    out, _ = trained
    code = _script().main(["--out-dir", out, "--iterations", "1", "--n-envs", "2", "-q"])
    assert code == 1
    err = capsys.readouterr().err
    assert "demo_moe" in err and "--force" in err and len(err.strip().splitlines()) == 1


def test_training_is_deterministic_for_a_seed():
    """Two training runs with the same seed give the same weights; another seed other weights."""
    pytest.importorskip("rsl_rl")
    from moetape.record.train_moe import TrainConfig, train

    torch.set_num_threads(1)
    sds = []
    for seed in (5, 5, 6):
        result = train(TrainConfig(seed=seed, iterations=1, n_envs=4, steps_per_env=8))
        sds.append({k: v.detach().clone() for k, v in result["policy"].state_dict().items()})
    assert all(torch.equal(sds[0][k], sds[1][k]) for k in sds[0])
    assert not all(torch.equal(sds[0][k], sds[2][k]) for k in sds[0])


def test_moe_actor_critic_is_the_variant_b_layout_and_blend(tmp_path):
    """The trained class's state dict is the variant-B layout, and moetape's loader gives its own actions and gate."""
    pytest.importorskip("rsl_rl")
    from moetape.record.train_moe import MoEActorCritic, checkpoint_dict, save_checkpoint

    torch.manual_seed(0)
    policy = MoEActorCritic(109, 109, 18)
    keys = set(policy.state_dict())
    assert {"ac_base.std", "ac_arm.std", "ac_base.actor.6.weight", "ac_arm.critic.6.bias"} <= keys
    assert {k.split(".")[0] for k in keys} == {"ac_base", "ac_arm", "obs_moe"}
    assert tuple(policy.state_dict()["obs_moe.mlp.4.weight"].shape) == (2, 64)
    path = str(tmp_path / "m.pt")
    save_checkpoint(checkpoint_dict(policy, 0, {}), path)
    obs = torch.randn(16, 109)
    action, gate = load_policy(path).policy_step(obs.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(action, policy.act_inference(obs).numpy(), atol=1e-5)
        np.testing.assert_allclose(gate, policy.gate_weights(obs).numpy(), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# the committed checkpoint


def test_committed_checkpoint_is_trained_and_described():
    """The committed demo checkpoint is a trained variant-B MoE whose infos repeat its metadata file."""
    ckpt = read_checkpoint(demo.DEMO_CHECKPOINT)
    meta = demo.demo_metadata()
    infos = ckpt["infos"]
    assert infos["trained"] is True and infos["moetape_demo"] is True
    assert ckpt["iter"] == meta["config"]["iterations"] >= 100
    for key in ("script", "config", "reward_weights", "seconds", "env_steps"):
        assert infos[key] == meta[key], key
    assert meta["script"].startswith("scripts/train_demo_policy.py")
    assert detect_kind(ckpt["model_state_dict"]) == "moe-b"
    assert os.path.getsize(demo.DEMO_CHECKPOINT) < 1_000_000


@pytest.fixture(scope="module")
def demo_log(tmp_path_factory):
    """The log of a full `moetape demo` run (4 envs x 500 steps of the committed checkpoint)."""
    out = str(tmp_path_factory.mktemp("demo") / "demo")
    r = CliRunner().invoke(cli, ["demo", "--out", out, "-q"])
    assert r.exit_code == 0, r.output
    return os.path.join(out, "log.h5")


def test_demo_log_meets_the_goals(demo_log):
    """On the demo log: upright throughout (no termination, tilt < 20 deg), median EE error <= 5 cm, a gate that moves."""
    with open_log(demo_log) as log:
        assert log.n_steps == 500
        err = log.read("terms/task_reaching_pos_err")
        done, timeout = log.read("done"), log.read("timeout")
        gravity = log.read("obs")[..., OBS["projected_gravity"]]
        gate = log.read("gate")
    assert not (done & ~timeout).any()  # no termination: never fell, never touched down with the trunk
    assert np.degrees(np.arccos(-gravity[..., 2])).max() < 20.0
    assert np.median(err) <= 0.05
    w_arm = gate[..., 1]
    assert w_arm.std() > 0.02 and w_arm.max() - w_arm.min() > 0.1  # the learned gate varies over the demo


def test_demo_log_matches_the_committed_figures(demo_log):
    """The metadata's demo figures are what the demo log shows (median EE error, gate mean)."""
    figs = demo.demo_metadata()["demo_figures"]
    with open_log(demo_log) as log:
        err = log.read("terms/task_reaching_pos_err")
        gate = log.read("gate")
    assert abs(float(np.median(err)) - figs["pos_err_median_m"]) < 2e-3
    assert abs(float(gate[..., 1].mean()) - figs["gate_arm_mean"]) < 2e-3
