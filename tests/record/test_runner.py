"""moetape record / demo end to end on MuJoCo with the demo checkpoint: real rollouts into real logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("mujoco")

from moetape.cli import cli  # noqa: E402
from moetape.record.demo import make_demo_checkpoint, make_demo_trajectory  # noqa: E402
from moetape.record.policy import load_policy  # noqa: E402
from moetape.record.runner import Metric, RunConfig, record  # noqa: E402
from moetape.schema.reader import open_log  # noqa: E402
from moetape.schema.validate import validate  # noqa: E402


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    """The demo checkpoint and trajectory, made once for the module."""
    d = tmp_path_factory.mktemp("demo")
    return make_demo_checkpoint(str(d / "moe.pt")), make_demo_trajectory(str(d / "traj.pkl"))


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_record_legacy_flags_gate_and_action_from_same_obs(demo_files, tmp_path):
    """Legacy flag spellings work; logged gate and action equal the policy applied to the logged obs."""
    ckpt, traj = demo_files
    out = str(tmp_path / "run")
    r = run(
        "record",
        "--moe_ckpt_path",
        ckpt,
        "--trajectory_file_path",
        traj,
        "--num_envs",
        "2",
        "--num_steps",
        "30",
        "--device",
        "cpu",
        "--out",
        out,
        "-q",
    )
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == os.path.join(out, "log.h5")
    path = os.path.join(out, "log.h5")
    assert validate(path) == []
    policy = load_policy(ckpt)
    with open_log(path) as log:
        assert log.n_steps == 30 and log.n_envs == 2 and log.frames_per_step == 4 and log.ended_cleanly
        obs = log.read("obs")
        for s in (0, 7, 29):
            action, gate = policy.policy_step(obs[s])
            # same obs -> same outputs (up to float reassociation between torch thread counts)
            np.testing.assert_allclose(log.read("action", s, s + 1)[0], action, rtol=0, atol=1e-6)
            np.testing.assert_allclose(log.read("gate", s, s + 1)[0], gate, rtol=0, atol=1e-6)
        prov = log.provenance
        assert prov["checkpoint_sha256"]["moe"] == policy.sources[0]["sha256"]
        assert log.config["num_envs"] == 2 and log.model_xml and log.trajectory() is not None


def test_record_dash_spellings_and_policy_frames(demo_files, tmp_path):
    """The dashed spellings work too, and --frames policy writes one frame row per step."""
    ckpt, traj = demo_files
    out = str(tmp_path / "run")
    r = run(
        "record",
        "--moe-ckpt-path",
        ckpt,
        "--trajectory-file-path",
        traj,
        "--num-envs",
        "1",
        "--num-steps",
        "10",
        "--device",
        "cpu",
        "--out",
        out,
        "--frames",
        "policy",
        "-q",
    )
    assert r.exit_code == 0, r.output
    with open_log(os.path.join(out, "log.h5")) as log:
        assert log.frames_per_step == 1 and log.n_frames == 10


def test_record_refuses_existing_log(demo_files, tmp_path):
    """A run folder with a log is not overwritten without --force."""
    ckpt, traj = demo_files
    out = str(tmp_path / "run")
    args = [
        "record",
        "--moe_ckpt_path",
        ckpt,
        "--trajectory_file_path",
        traj,
        "--num_steps",
        "3",
        "--device",
        "cpu",
        "--out",
        out,
        "-q",
    ]
    assert run(*args).exit_code == 0
    r = run(*args)
    assert r.exit_code == 1 and "--force" in r.stderr and "Traceback" not in r.stderr
    assert run(*args, "--force").exit_code == 0


def test_record_bad_inputs_one_line(demo_files, tmp_path):
    """Missing checkpoint, absent CUDA device and bad trajectory each give one 'Error:' line, exit 1."""
    ckpt, traj = demo_files
    base = ["record", "--trajectory_file_path", traj, "--num_steps", "3", "--out", str(tmp_path / "x"), "-q"]
    cases = [
        (["--moe_ckpt_path", str(tmp_path / "nope.pt"), "--device", "cpu"], "no such file"),
        (["--moe_ckpt_path", ckpt, "--device", "cuda:3"], "no such CUDA device"),
    ]
    for extra, needle in cases:
        r = run(*(base + extra))
        assert r.exit_code == 1, r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:") and needle in lines[0], r.stderr
    binary = tmp_path / "robot.xml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    r = run(
        "record",
        "--moe_ckpt_path",
        ckpt,
        "--trajectory_file_path",
        traj,
        "--device",
        "cpu",
        "--robot",
        str(binary),
        "--out",
        str(tmp_path / "z"),
        "-q",
    )
    assert r.exit_code == 1 and "not a text file" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle")
    r = run(
        "record",
        "--moe_ckpt_path",
        ckpt,
        "--trajectory_file_path",
        str(bad),
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "y"),
        "-q",
    )
    assert r.exit_code == 1 and str(bad) in r.stderr


def test_default_device_falls_back_to_cpu(demo_files, tmp_path):
    """With no --device and no CUDA the legacy default cuda:0 falls back to cpu with a notice."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    ckpt, traj = demo_files
    r = run(
        "record",
        "--moe_ckpt_path",
        ckpt,
        "--trajectory_file_path",
        traj,
        "--num_steps",
        "2",
        "--out",
        str(tmp_path / "r"),
        "-q",
    )
    assert r.exit_code == 0 and "running the policy on cpu" in r.stderr


def test_custom_metric_api(demo_files, tmp_path):
    """A metric declared before the run is stored per step under metrics/."""
    ckpt, traj = demo_files
    cfg = RunConfig(
        moe_ckpt_path=ckpt,
        trajectory_file_path=traj,
        out=str(tmp_path / "m"),
        num_envs=2,
        num_steps=12,
        frames="policy",
    )
    height = Metric("base_height", lambda backend, res: res.frames["root_pos"][0][:, 2])
    result = record(cfg, metrics=[height], command_line="test")
    with open_log(result.log_path) as log:
        np.testing.assert_array_equal(log.read("metrics/base_height"), log.read("frames/root_pos")[:, :, 2])


def test_demo_stays_upright(tmp_path):
    """moetape demo records 4 envs x 500 steps and the robot stays upright the whole time."""
    out = str(tmp_path / "demo")
    r = run("demo", "--out", out, "-q")
    assert r.exit_code == 0, r.output
    with open_log(os.path.join(out, "log.h5")) as log:
        assert log.n_steps == 500 and log.n_envs == 4 and log.ended_cleanly
        z = log.read("frames/root_pos")[..., 2]
        q = log.read("frames/root_quat_xyzw")
        # tilt from the quaternion: the body z axis's world z component
        x, y = q[..., 0], q[..., 1]
        up_z = 1 - 2 * (x * x + y * y)
        assert z.min() > 0.2, z.min()  # the trained policy crouches to about 0.23 m (stands at 0.34 m)
        assert up_z.min() > np.cos(np.radians(15)), up_z.min()
        gate = log.read("gate")
        assert gate[..., 1].max() - gate[..., 1].min() > 0.1  # the learned gate moves over the demo
        terminated = log.read("done") & ~log.read("timeout")
        assert not terminated.any()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_ends_cleanly(demo_files, tmp_path, sig):
    """SIGINT (Ctrl-C) or SIGTERM during a recording flushes every step, marks the log interrupted, exits 130."""
    ckpt, traj = demo_files
    out = str(tmp_path / "int")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "moetape",
            "record",
            "--moe_ckpt_path",
            ckpt,
            "--trajectory_file_path",
            traj,
            "--num_steps",
            "1000000",
            "--device",
            "cpu",
            "--out",
            out,
            "--flush-seconds",
            "0.2",
            "-q",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    path = os.path.join(out, "log.h5")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if os.path.exists(path):
            try:
                with open_log(path) as log:
                    if log.n_steps > 20:
                        break
            except Exception:  # noqa: BLE001 - the file may be mid-creation
                pass
        time.sleep(0.1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    with open_log(path) as log:
        assert log.run_status == "interrupted" and log.n_steps > 20
    assert validate(path) == []


class _FakePending:
    """A step of _FakeDeviceBackend in flight: its rows are the step index."""

    def __init__(self, backend, s, keep):
        self.backend, self.s, self.keep = backend, s, keep
        self.result = None

    def wait(self, frames_out=None):
        from moetape.record.backend import PRE_FIELDS, StepResult

        if self.result is not None:  # idempotent, as the protocol says
            return self.result
        self.backend.events.append(("wait", self.s))
        b, s = self.backend, self.s
        e = b.info.n_envs
        frames = frames_out if frames_out is not None else {}
        for v in frames.values():
            v.fill(s)
        reward = np.full(e, s, np.float32)
        self.result = StepResult(
            obs=np.full((e, b.info.obs_dim), s + 1, np.float32),
            reward=reward,
            done=np.zeros(e, bool),
            timeout=np.zeros(e, bool),
            terms={"reward_total": reward},
            pre={
                k: np.full((e,) + shape, 0 if k == "episode" else s, dtype)
                for k, (shape, dtype) in PRE_FIELDS.items()
            },
            frames=frames,
            kept={k: v.numpy().copy() for k, v in self.keep.items()},
        )
        return self.result


class _FakeDeviceBackend:
    """A DeviceBackend whose observation after step s is s + 1 everywhere; it notes launches and waits."""

    def __init__(self, interrupt_at=None):
        import torch

        from moetape.record.backend import BackendInfo

        self.torch = torch
        self.info = BackendInfo(
            name="fake-device", n_envs=2, obs_dim=109, action_dim=18,
            joint_names=[f"j{i}" for i in range(18)], body_names=["trunk", "ee"],
            term_names=["reward_total"], sim_dt_s=0.005, decimation=4, episode_length_s=7.0,
        )  # fmt: skip
        self.events = []
        self.interrupt_at = interrupt_at
        self.obs_tensor = torch.zeros((2, 109))
        self.current = -1  # the last launched step

    def reset(self):
        self.obs_tensor = self.torch.zeros((2, 109))
        return self.obs_tensor.numpy().copy()

    def launch_step(self, action, *, substep_frames, keep=None):
        s = self.current + 1
        if s == self.interrupt_at:
            raise KeyboardInterrupt
        assert isinstance(action, self.torch.Tensor) and action.shape == (2, 18)
        self.events.append(("launch", s))
        self.current = s
        self.obs_tensor = self.torch.full((2, 109), float(s + 1))
        return _FakePending(self, s, dict(keep or {}))

    def close(self):
        pass


def _record_fake(demo_files, tmp_path, monkeypatch, backend, metrics=()):
    from moetape.record import runner

    ckpt, traj = demo_files
    monkeypatch.setattr(runner, "build_backend", lambda cfg, trajectories, device: backend)
    cfg = RunConfig(moe_ckpt_path=ckpt, trajectory_file_path=traj, out=str(tmp_path / "d"), num_steps=6)
    return record(cfg, metrics=metrics, command_line="test", notice=lambda msg: None)


def test_device_backend_step_appended_after_the_next_is_launched(demo_files, tmp_path, monkeypatch):
    """A DeviceBackend's step t is waited for and appended after step t + 1 is launched; rows line up."""
    backend = _FakeDeviceBackend()
    result = _record_fake(demo_files, tmp_path, monkeypatch, backend)
    assert result.status == "clean" and result.steps == 6
    order = (
        [("launch", 0)] + [e for s in range(1, 6) for e in (("launch", s), ("wait", s - 1))] + [("wait", 5)]
    )
    assert backend.events == order
    policy = load_policy(demo_files[0])
    with open_log(result.log_path) as log:
        obs = log.read("obs")
        assert [float(o.min()) for o in obs] == [float(o.max()) for o in obs] == list(range(6))
        assert log.read("reward")[:, 0].tolist() == list(range(6))
        assert log.frames_per_step == 4  # --frames auto: substep on every backend but warp
        np.testing.assert_array_equal(log.read("frames/root_pos")[::4, 0, 0], np.arange(6))
        logged_action, logged_gate = log.read("action"), log.read("gate")
    for s in range(6):  # same obs -> same outputs (the numpy entry point on the logged obs)
        action, gate = policy.policy_step(obs[s])
        np.testing.assert_allclose(logged_action[s], action, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(logged_gate[s], gate, rtol=0, atol=1e-6)


def test_device_backend_with_metrics_waits_each_step(demo_files, tmp_path, monkeypatch):
    """With a metric (it reads the backend after its own step) each step is appended before the next launch."""
    backend = _FakeDeviceBackend()
    seen = Metric("launched", lambda b, res: np.full(2, b.current, np.float32))
    result = _record_fake(demo_files, tmp_path, monkeypatch, backend, metrics=[seen])
    assert backend.events == [e for s in range(6) for e in (("launch", s), ("wait", s))]
    with open_log(result.log_path) as log:
        assert log.read("metrics/launched")[:, 0].tolist() == list(range(6))


def test_device_backend_ctrl_c_appends_the_launched_step(demo_files, tmp_path, monkeypatch):
    """Ctrl-C while step t + 1 launches: step t, launched and not yet appended, is in the log."""
    backend = _FakeDeviceBackend(interrupt_at=4)
    result = _record_fake(demo_files, tmp_path, monkeypatch, backend)
    assert result.status == "interrupted" and result.steps == 4
    with open_log(result.log_path) as log:
        assert log.run_status == "interrupted" and log.n_steps == 4
        assert log.read("obs")[:, 0, 0].tolist() == [0, 1, 2, 3]
    assert validate(result.log_path) == []


def test_frames_auto_is_policy_on_warp_only():
    """--frames auto resolves to policy on warp, substep on mujoco and isaacgym; a bad value is one line."""
    from moetape.record.runner import resolve_frames
    from moetape.schema.errors import InputError

    assert resolve_frames("auto", "warp") == "policy"
    assert resolve_frames("auto", "mujoco") == resolve_frames("auto", "isaacgym") == "substep"
    assert resolve_frames("substep", "warp") == "substep" and resolve_frames("policy", "mujoco") == "policy"
    with pytest.raises(InputError, match=r"^--frames every: expected one of auto, substep, policy$"):
        resolve_frames("every", "mujoco")
    r = run("record", "--help")
    assert r.exit_code == 0 and "auto = policy on --backend warp" in " ".join(r.stdout.split())
    assert "[default: auto]" in " ".join(r.stdout.split())
