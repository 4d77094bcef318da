"""The MuJoCo Warp backend on warp's CPU device: agreement with the MuJoCo backend, resets, record end to end.

Tolerances (measured on this machine, bundled robot, 4 envs, 40 steps of random actions, frames
alternating substep/policy): step-0 observations differ by <= 9e-7 (the EE pose from float32
kinematics; targets and joint terms are equal), then qpos by <= 5e-7, observations by <= 3e-6,
body poses by <= 4e-7, joint velocities and torques by <= 3e-5, contact forces by <= 1e-3 N.
MuJoCo Warp integrates in float32 and MuJoCo in float64, and the constraint solver stops on its own
tolerance in each; the bounds below are about 10x the measured ones.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("mujoco")
pytest.importorskip("mujoco_warp")

from moetape.cli import cli  # noqa: E402
from moetape.record import warp_backend  # noqa: E402
from moetape.record.mujoco_backend import BUNDLED_XML, MujocoBackend  # noqa: E402
from moetape.record.mujoco_task import TERM_NAMES  # noqa: E402
from moetape.record.policy import load_policy  # noqa: E402
from moetape.record.targets import episode_trajectory  # noqa: E402
from moetape.record.trajectory import Trajectories  # noqa: E402
from moetape.record.warp_backend import WarpBackend  # noqa: E402
from moetape.schema.errors import InputError  # noqa: E402
from moetape.schema.reader import open_log  # noqa: E402
from moetape.schema.synthetic import small_spec  # noqa: E402

E = 4
SEED = 3
FRAME_ATOL = {
    "contact_force": 1e-2,
    "dof_vel": 5e-4,
    "torque": 5e-4,
    "root_lin_vel": 1e-5,
    "root_ang_vel": 2e-5,
}


@pytest.fixture(scope="module")
def trajectories():
    """Three circling EE trajectories, told apart by height (as in test_mujoco_backend.py)."""
    t = np.arange(1600) * 0.005
    pos = [
        np.stack([1.0 + 0.1 * np.cos(t), 2.0 + 0.1 * np.sin(t), 0.5 + 0.02 * k + 0 * t], -1) for k in range(3)
    ]
    rotvec = np.zeros((3, len(t), 3))
    rotvec[..., 1] = np.pi / 2 + 0.2 * np.sin(t)
    return Trajectories(np.array(pos, np.float32), rotvec.astype(np.float32))


@pytest.fixture(scope="module")
def warp(trajectories):
    """One WarpBackend for the module (kernels compile once per machine, then load from warp's cache)."""
    b = WarpBackend(trajectories, n_envs=E, seed=SEED)
    yield b
    b.close()


def _mlp(gen, sizes, prefix, scale):
    out = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        out[f"{prefix}{2 * i}.weight"] = scale * torch.randn(n_out, n_in, generator=gen)
        out[f"{prefix}{2 * i}.bias"] = scale * torch.randn(n_out, generator=gen)
    return out


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    """A small random variant-B MoE checkpoint (2 experts) and a 3-episode trajectory file."""
    d = tmp_path_factory.mktemp("demo")
    gen = torch.Generator().manual_seed(0)
    sd = _mlp(gen, (109, 12, 6, 2), "obs_moe.mlp.", 0.5)
    for name in ("base", "arm"):
        sd[f"ac_{name}.std"] = torch.ones(18)
        sd.update(_mlp(gen, (109, 16, 8, 18), f"ac_{name}.actor.", 0.05))
        sd.update(_mlp(gen, (109, 16, 1), f"ac_{name}.critic.", 0.05))
    ckpt = str(d / "moe.pt")
    torch.save({"model_state_dict": sd, "optimizer_state_dict": {}, "iter": 1, "infos": None}, ckpt)
    t = np.arange(800) * 0.005
    episodes = [
        {
            "ee_pos": np.stack([0.3 + 0.1 * np.cos(t + k), 0.1 * np.sin(t), 0.5 + 0 * t], -1),
            "ee_axis_angle": np.stack([0 * t, np.pi / 2 + 0.2 * np.sin(t), 0 * t], -1),
        }
        for k in range(3)
    ]
    traj = str(d / "traj.pkl")
    with open(traj, "wb") as f:
        pickle.dump(episodes, f, protocol=3)
    return ckpt, traj


def test_step0_observation_and_targets_equal_mujoco(warp, trajectories):
    """From the same seed both backends start in the same state: same trajectory draws, targets, obs."""
    mj = MujocoBackend(trajectories, n_envs=E, seed=SEED)
    try:
        o_mj, o_wp = mj.reset(), warp.reset()
        assert o_wp.dtype == np.float32 and o_wp.shape == o_mj.shape
        np.testing.assert_allclose(o_wp, o_mj, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(warp.trajectory_index, mj.trajectory_index)
        np.testing.assert_array_equal(o_wp[:, :18], o_mj[:, :18])  # joint positions: exact
        a = np.zeros((E, 18), np.float32)
        r_mj, r_wp = mj.step(a, substep_frames=True), warp.step(a, substep_frames=True)
        for k in ("target_pos", "target_quat_xyzw", "episode", "step_in_episode"):
            np.testing.assert_array_equal(r_wp.pre[k], r_mj.pre[k], err_msg=k)
        for k in ("target_future_pos", "target_future_quat_xyzw", "episode_time_s"):
            np.testing.assert_allclose(r_wp.frames[k], r_mj.frames[k], rtol=0, atol=1e-7, err_msg=k)
    finally:
        mj.close()


def test_same_actions_same_states_and_observations_within_tolerance(warp, trajectories):
    """40 steps of the same random actions: states, observations, frames and terms agree (module doc)."""
    mj = MujocoBackend(trajectories, n_envs=E, seed=SEED)
    try:
        mj.reset(), warp.reset()
        rng = np.random.default_rng(0)
        for s in range(40):
            a = (0.3 * rng.standard_normal((E, 18))).astype(np.float32)
            sub = s % 2 == 0
            r_mj, r_wp = mj.step(a, substep_frames=sub), warp.step(a, substep_frames=sub)
            np.testing.assert_allclose(warp.s.qpos.numpy(), mj.qpos, rtol=0, atol=5e-6)
            np.testing.assert_allclose(r_wp.obs, r_mj.obs, rtol=0, atol=5e-5)
            for k, v in r_mj.frames.items():
                assert r_wp.frames[k].shape == v.shape, k
                np.testing.assert_allclose(r_wp.frames[k], v, rtol=0, atol=FRAME_ATOL.get(k, 5e-6), err_msg=k)
            for k in TERM_NAMES:
                np.testing.assert_allclose(r_wp.terms[k], r_mj.terms[k], rtol=0, atol=1e-4, err_msg=k)
            np.testing.assert_array_equal(r_wp.done, r_mj.done)
    finally:
        mj.close()


def test_across_timeouts_resets_agree_with_mujoco(trajectories):
    """0.1 s episodes: after each reset (masked writes from the spawn snapshot) both backends agree."""
    wb = WarpBackend(trajectories, n_envs=2, seed=SEED, episode_length_s=0.1)
    mj = MujocoBackend(trajectories, n_envs=2, seed=SEED, episode_length_s=0.1)
    try:
        mj.reset(), wb.reset()
        rng = np.random.default_rng(1)
        for _ in range(12):
            a = (0.3 * rng.standard_normal((2, 18))).astype(np.float32)
            r_mj, r_wp = mj.step(a, substep_frames=False), wb.step(a, substep_frames=False)
            np.testing.assert_array_equal(r_wp.done, r_mj.done)
            np.testing.assert_array_equal(r_wp.pre["episode"], r_mj.pre["episode"])
            np.testing.assert_array_equal(wb.trajectory_index, mj.trajectory_index)
            np.testing.assert_allclose(r_wp.obs, r_mj.obs, rtol=0, atol=5e-5)
        assert r_mj.pre["episode"].min() == 2
    finally:
        mj.close()
        wb.close()


def test_a_fallen_env_resets_alone_with_its_drawn_trajectory(warp, trajectories):
    """An env tilted past 60 deg terminates and restarts alone (masked reset); the others go on untouched."""
    warp.reset()
    a = np.zeros((E, 18), np.float32)
    warp.step(a, substep_frames=False)
    warp.s.qpos[1, 3:7] = torch.tensor([0.7071068, 0.7071068, 0.0, 0.0])  # env 1 rolled 90 deg: > 60 deg tilt
    r = warp.step(a, substep_frames=False)
    assert r.done.tolist() == [False, True, False, False]
    assert not r.timeout.any() and r.terms["reward_termination"][1] < 0
    after = warp.step(a, substep_frames=False)
    assert after.pre["episode"].tolist() == [0, 1, 0, 0]
    assert after.pre["step_in_episode"].tolist() == [2, 0, 2, 2]
    n = len(trajectories.ee_pos)
    assert warp.trajectory_index[1] == episode_trajectory(SEED, 1, 1, n)
    np.testing.assert_allclose(after.frames["root_pos"][0, 1, 2], warp.ix.spawn_z, atol=1e-6)
    np.testing.assert_array_equal(after.obs[1, 91:], 0.0)  # last action cleared on reset


def test_frames_out_receives_the_rows(warp):
    """frames_out (the log's batch rows) is filled in place and returned as the step's frames."""
    warp.reset()
    rows = warp._new_frames(4)
    for v in rows.values():
        v.fill(np.nan)
    r = warp.step(np.zeros((E, 18), np.float32), substep_frames=True, frames_out=rows)
    assert r.frames is rows
    for k, v in rows.items():
        assert np.isfinite(v).all(), k


def test_action_of_wrong_shape_is_refused(warp):
    """An action that is not (E, 18) is refused before anything runs."""
    with pytest.raises(ValueError, match=r"expected \(4, 18\)"):
        warp.step(np.zeros((E, 17), np.float32), substep_frames=False)


def test_model_warp_cannot_simulate_names_the_feature(trajectories, tmp_path):
    """A model with a feature MuJoCo Warp lacks (the PGS solver) is one line naming it."""
    xml = Path(BUNDLED_XML).read_text(encoding="utf-8").replace("<option ", '<option solver="PGS" ', 1)
    path = tmp_path / "pgs.xml"
    path.write_text(xml)
    with pytest.raises(InputError) as e:
        WarpBackend(trajectories, n_envs=1, robot_xml=str(path))
    msg = str(e.value)
    assert (
        "\n" not in msg
        and str(path) in msg
        and "mjSOL_PGS is unsupported" in msg
        and "--backend mujoco" in msg
    )


def test_no_cuda_device_is_one_line():
    """--device cuda:N that warp cannot see is one line with what to do."""
    with pytest.raises(InputError, match=r"^--device cuda:7: MuJoCo Warp sees \d+ CUDA device.*--device cpu"):
        warp_backend.warp_device("cuda:7")


def test_out_of_memory_says_how_many_envs_fit(monkeypatch):
    """An allocation failure for E worlds becomes one line with the envs that would fit."""
    import mujoco

    real = warp_backend.mjw.put_data

    def put_data(model, data, nworld=1, **kw):
        if nworld > 2:
            raise RuntimeError("Failed to allocate 9999999999 bytes on device 'cpu'")
        return real(model, data, nworld=nworld, **kw)

    monkeypatch.setattr(warp_backend.mjw, "put_data", put_data)
    model = mujoco.MjModel.from_xml_path(BUNDLED_XML)
    with pytest.raises(InputError) as e:
        warp_backend._put(model, 100000, BUNDLED_XML, "cpu")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--num_envs 100000: out of memory on cpu")
    assert "envs would fit" in msg and int(msg.split("about ")[1].split()[0]) > 0


def test_log_size_line_counts_every_dataset():
    """The bytes-per-step line adds every dataset's row (frame rows times frames per step)."""
    spec = small_spec(3, frames_per_step=4)
    per_step = sum(
        int(np.prod(s)) * np.dtype(d).itemsize * (4 if p.startswith("frames/") else 1)
        for p, (s, d) in spec.datasets().items()
    )
    line = warp_backend.log_size_line(spec, 1000)
    assert line.startswith(f"log size: {warp_backend._human(per_step)} per policy step (3 envs, 4 frame row")
    assert line.endswith(f"{warp_backend._human(per_step * 1000)} for 1000 steps")


def test_record_warp_cpu_verifies_derives_and_gate_matches(demo_files, tmp_path):
    """record --backend warp --device cpu: a log that verifies and derives, gate = policy(logged obs)."""
    ckpt, traj = demo_files
    out = str(tmp_path / "run")
    r = CliRunner().invoke(
        cli,
        ["record", "--backend", "warp", "--device", "cpu", "--moe_ckpt_path", ckpt,
         "--trajectory_file_path", traj, "--num_envs", "3", "--num_steps", "12", "--out", out, "-q"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    path = os.path.join(out, "log.h5")
    assert r.stdout.strip() == path
    assert "warp's CPU device is for testing" in r.stderr
    assert "log size: " in r.stderr and "for 12 steps" in r.stderr
    assert "1 frame row(s) per step" in r.stderr and "--frames auto: policy rate on warp" in r.stderr
    v = CliRunner().invoke(cli, ["verify", path])
    assert v.exit_code == 0, v.output
    d = CliRunner().invoke(cli, ["derive", path, "--out", str(tmp_path / "derived")])
    assert d.exit_code == 0, d.output
    written = set(os.listdir(tmp_path / "derived"))
    assert {
        "weight_stats.pkl",
        "moe_results.pkl",
        "logs.zarr",
        "logs.pkl",
        "video.mp4",
        "derived.json",
    } <= written
    with open_log(path) as log:
        assert log.n_steps == 12 and log.provenance["backend"] == "warp"
        obs, gate = log.read("obs"), log.read("gate")
        assert log.frames_per_step == 1 and log.config["frames"] == "policy"  # --frames auto on warp
        assert log.read("frames/root_pos").shape == (12, 3, 3)
    policy = load_policy(ckpt, device="cpu")
    _, recomputed = policy.policy_step(obs.reshape(-1, obs.shape[-1]))
    np.testing.assert_allclose(recomputed.reshape(gate.shape), gate, rtol=0, atol=1e-6)


def test_sigkill_during_a_warp_recording_keeps_every_committed_step(demo_files, tmp_path):
    """SIGKILL of a warp recording (process and writer) leaves every step committed before it readable."""
    ckpt, traj = demo_files
    out = str(tmp_path / "killed")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moetape", "record", "--backend", "warp", "--device", "cpu",
         "--moe_ckpt_path", ckpt, "--trajectory_file_path", traj, "--num_envs", "2",
         "--num_steps", "1000000", "--flush-seconds", "0", "--out", out, "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    path = os.path.join(out, "log.h5")
    seen = 0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and seen < 5:
            if os.path.exists(path):
                try:
                    with open_log(path) as log:
                        seen = log.n_steps
                except Exception:  # noqa: BLE001 - the file may be mid-creation
                    pass
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert seen >= 5, "the recording did not commit 5 steps in time"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the killed writer process releases the file
        try:
            log = open_log(path)
            break
        except Exception:  # noqa: BLE001
            time.sleep(0.1)
    with log:
        assert log.run_status == "running" and log.n_steps >= seen
        obs = log.read("obs")
        assert obs.shape[0] == log.n_steps and np.isfinite(obs).all()
        assert np.isfinite(log.read("frames/root_pos")).all()


def test_launched_steps_overlap_and_equal_waited_steps(warp):
    """launch_step t + 1 before waiting for t gives bit for bit what step() gives; a third launch is refused."""
    rng = np.random.default_rng(4)
    actions = [(0.3 * rng.standard_normal((E, 18))).astype(np.float32) for _ in range(6)]
    warp.reset()
    want = [warp.step(a, substep_frames=True) for a in actions]
    obs0 = warp.reset()
    assert torch.equal(warp.obs_tensor, torch.as_tensor(obs0))

    def check(w, g):  # at once: g's arrays are valid until two more steps are launched
        np.testing.assert_array_equal(g.obs, w.obs)
        np.testing.assert_array_equal(g.done, w.done)
        for k in w.pre:
            np.testing.assert_array_equal(g.pre[k], w.pre[k], err_msg=k)
        for k in w.terms:
            np.testing.assert_array_equal(g.terms[k], w.terms[k], err_msg=k)
        for k in w.frames:
            np.testing.assert_array_equal(g.frames[k], w.frames[k], err_msg=k)

    got, pending = [], None
    for a in actions:
        launched = warp.launch_step(
            torch.as_tensor(a), substep_frames=True, keep={"action": torch.as_tensor(a)}
        )
        if pending is not None:
            got.append(pending.wait(warp._new_frames(4)))
            check(want[len(got) - 1], got[-1])
        pending = launched
    got.append(pending.wait())
    check(want[-1], got[-1])
    assert pending.wait() is got[-1]  # idempotent
    np.testing.assert_array_equal(got[-1].kept["action"], actions[-1])
    a = torch.zeros((E, 18))
    warp.launch_step(a, substep_frames=False)
    warp.launch_step(a, substep_frames=False)
    with pytest.raises(RuntimeError, match="two steps are launched and not waited"):
        warp.launch_step(a, substep_frames=False)


def test_one_step_episodes_with_a_step_in_flight_draw_their_trajectories(trajectories):
    """Episodes of one step, launched one ahead: 40 episodes per env, each on its drawn trajectory."""
    wb = WarpBackend(trajectories, n_envs=2, seed=SEED, episode_length_s=0.02)
    try:
        wb.reset()
        a = torch.zeros((2, 18))
        pending, episodes, ended = None, [], []
        for _ in range(41):
            launched = wb.launch_step(a, substep_frames=False) if len(episodes) < 39 else None
            if pending is not None:
                r = pending.wait()
                episodes.append(r.pre["episode"].tolist())
                ended.append(bool(r.done.all() and r.timeout.all()))
            pending = launched
        assert episodes == [[k, k] for k in range(40)] and all(ended)
        n = len(trajectories.ee_pos)
        assert wb.trajectory_index.tolist() == [episode_trajectory(SEED, e, 40, n) for e in range(2)]
    finally:
        wb.close()


def test_record_warp_runs_the_policy_on_the_device_tensor(demo_files, tmp_path, monkeypatch):
    """record --backend warp: the policy takes obs_tensor and the backend its action tensor; between the
    first launch and the end no tensor is read on the host except by the host copy's wait."""
    from moetape.record import policy as policy_mod

    def refuse(*args, **kwargs):
        raise AssertionError("a host round trip in the step loop")

    monkeypatch.setattr(policy_mod.LoadedPolicy, "policy_step", refuse)
    monkeypatch.setattr(WarpBackend, "step", refuse)
    looping = {"on": False, "numpy": 0}
    launch, wait = WarpBackend.launch_step, warp_backend.HostCopy.wait

    def launch_step(self, action, **kw):
        assert isinstance(action, torch.Tensor)
        looping["on"] = True
        return launch(self, action, **kw)

    def host_wait(self):
        looping["on"] = False  # the one place rows cross to the host
        try:
            return wait(self)
        finally:
            looping["on"] = True

    monkeypatch.setattr(WarpBackend, "launch_step", launch_step)
    monkeypatch.setattr(warp_backend.HostCopy, "wait", host_wait)
    for name in ("cpu", "numpy", "item", "tolist", "__bool__", "__int__", "__float__"):
        real = getattr(torch.Tensor, name)

        def guarded(self, *args, _real=real, _name=name, **kwargs):
            assert not looping["on"], f"Tensor.{_name} in the step loop"
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, guarded)
    ckpt, traj = demo_files
    out = str(tmp_path / "run")
    r = CliRunner().invoke(
        cli,
        ["record", "--backend", "warp", "--device", "cpu", "--moe_ckpt_path", ckpt,
         "--trajectory_file_path", traj, "--num_envs", "2", "--num_steps", "6", "--out", out, "-q"],
    )  # fmt: skip
    looping["on"] = False
    assert r.exit_code == 0, r.output
    policy = load_policy(ckpt, device="cpu")
    with open_log(os.path.join(out, "log.h5")) as log:
        assert log.n_steps == 6 and log.ended_cleanly
        obs, action = log.read("obs"), log.read("action")
    recomputed, _ = policy.policy_step_tensor(torch.as_tensor(obs.reshape(-1, obs.shape[-1])))
    np.testing.assert_allclose(recomputed.reshape(action.shape), action, rtol=0, atol=1e-6)
