"""--seed on MuJoCo: it picks each episode's trajectory as the legacy sequence sampler does, and repeats."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("mujoco")

from moetape.cli import cli  # noqa: E402
from moetape.record.demo import make_demo_checkpoint, make_demo_trajectory  # noqa: E402
from moetape.record.mujoco_backend import MujocoBackend  # noqa: E402
from moetape.record.targets import episode_rng, episode_trajectory  # noqa: E402
from moetape.record.trajectory import load_trajectories  # noqa: E402
from moetape.schema.reader import open_log  # noqa: E402

N_DEMO_TRAJECTORIES = 4
STEPS_PER_EPISODE = 350


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    """The demo checkpoint and trajectory (4 trajectory episodes), made once for the module."""
    d = tmp_path_factory.mktemp("demo")
    return make_demo_checkpoint(str(d / "moe.pt")), make_demo_trajectory(str(d / "traj.pkl"))


def record_log(demo_files, out, seed, n_steps=6, n_envs=4):
    """Record the demo checkpoint with ``--seed seed`` into ``out``; return the log path."""
    ckpt, traj = demo_files
    args = ["record", "--moe_ckpt_path", ckpt, "--trajectory_file_path", traj, "--device", "cpu"]
    args += ["--num_envs", str(n_envs), "--num_steps", str(n_steps), "--seed", str(seed)]
    r = CliRunner().invoke(cli, args + ["--frames", "policy", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    return os.path.join(str(out), "log.h5")


def read_all(path):
    """Every steps/ and frames/ dataset of a log but the wall-clock times, by name."""
    with open_log(path) as log:
        names = ["obs", "action", "gate", "reward", "target_pos", "target_quat_xyzw", "episode"]
        names += ["frames/root_pos", "frames/dof_pos", "frames/target_future_pos"]
        return {n: log.read(n) for n in names}


def test_two_seeds_give_different_targets_and_obs(demo_files, tmp_path):
    """--seed 1 and --seed 2 play different trajectory episodes: targets, obs and actions differ."""
    a = read_all(record_log(demo_files, tmp_path / "s1", 1))
    b = read_all(record_log(demo_files, tmp_path / "s2", 2))
    for name in ("target_pos", "obs", "action", "frames/target_future_pos"):
        assert not np.array_equal(a[name], b[name]), name
    first = [episode_trajectory(s, e, 0, N_DEMO_TRAJECTORIES) for s in (1, 2) for e in range(4)]
    assert first[:4] != first[4:]


def test_one_seed_repeats_bit_identically(demo_files, tmp_path):
    """Two recordings with --seed 3 hold bit-identical steps and frames."""
    a = read_all(record_log(demo_files, tmp_path / "a", 3))
    b = read_all(record_log(demo_files, tmp_path / "b", 3))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_log_reproduces_each_episodes_trajectory_from_its_seed(demo_files, tmp_path):
    """Every episode of a log starts at sample 0 of episode_trajectory(seed, env, episode, N), centred."""
    path = record_log(demo_files, tmp_path / "run", 5, n_steps=STEPS_PER_EPISODE + 3, n_envs=3)
    with open_log(path) as log:
        seed, traj = log.provenance["seed"], log.trajectory()
        target, episode, step = log.read("target_pos"), log.read("episode"), log.read("step_in_episode")
    assert seed == 5
    ee_pos = traj["ee_pos"].astype(np.float64)
    starts = np.argwhere(step == 0)
    assert sorted(set(episode[step == 0].tolist())) == [0, 1]
    for s, e in starts:
        k = episode_trajectory(seed, e, episode[s, e], len(ee_pos))
        expected = ee_pos[k, 0].copy()
        expected[:2] -= ee_pos[k, :, :2].mean(axis=0)
        np.testing.assert_allclose(target[s, e], expected, atol=1e-5)


def test_trajectory_draws_are_uniform_with_replacement():
    """Per (seed, env, episode) one uniform draw from the N: every episode comes up about equally
    often, envs share episodes and an env may replay one (no cycle), and the seed changes the draws."""
    draws = np.array([[episode_trajectory(0, e, k, 4) for k in range(32)] for e in range(64)])
    counts = np.bincount(draws.ravel(), minlength=4)
    assert counts.sum() == 2048 and counts.min() > 440 and counts.max() < 580  # 512 expected each
    assert (draws[:, 1:] == draws[:, :-1]).any()  # the same episode twice in a row: with replacement
    assert len(set(draws[:, 0].tolist())) == 4
    other = np.array([[episode_trajectory(1, e, k, 4) for k in range(32)] for e in range(64)])
    assert (draws != other).mean() > 0.6  # 0.75 expected
    assert episode_trajectory(0, 3, 7, 4) == draws[3, 7]  # a pure function of its arguments
    assert episode_trajectory(-1, 0, 0, 4) in range(4)  # negative seeds are seeds too


def test_backend_draws_trajectory_and_noise_from_the_episode_generator(demo_files):
    """On reset, env i's trajectory episode and reset noise are the first draws of episode_rng(seed, i, 0)."""
    trajectories = load_trajectories(demo_files[1])
    b = MujocoBackend(trajectories, n_envs=3, seed=11, init_noise_rad=0.05)
    b.reset()
    for e in range(3):
        rng = episode_rng(11, e, 0)
        assert b.trajectory_index[e] == rng.integers(N_DEMO_TRAJECTORIES)
        noise = rng.uniform(-0.05, 0.05, 18)
        np.testing.assert_allclose(b.datas[e].qpos[b.ix.qpos], b.ix.default_pos + noise, rtol=0, atol=1e-12)
    b.close()
