"""Isaac Gym adapter in-process, against an env object with the UMI-on-Legs attribute names and shapes.

These check shapes, frames and conventions. The stand-in isaacgym package cannot be imported in a
process that has imported torch (as the real one), so the entry points are tested against it in
subprocesses: tests/record/test_isaacgym_standin.py.
"""

from __future__ import annotations

import copy
import math
import pickle
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moetape.record.backend import FUTURE_TARGET_OFFSETS_S, PRE_FIELDS, frame_fields  # noqa: E402
from moetape.record.isaacgym_backend import (  # noqa: E402
    ISAACGYM_MISSING,
    IsaacGymBackend,
    build_env_config,
    instantiate,
)
from moetape.record.poses import matrix_to_quat_xyzw  # noqa: E402
from moetape.schema.errors import InputError  # noqa: E402

E, J, B, A, OBS = 3, 18, 5, 18, 109
DT = 0.005
DECIMATION = 4
EE = B - 1
ROOT_QUAT_XYZW = [0.0, 0.0, 0.6, 0.8]
EE_QUAT_XYZW = [0.6, 0.0, 0.0, 0.8]
HALF = math.sqrt(0.5)


class FakeState:
    """``env.state`` of UMI-on-Legs: torch tensors updated in place by the sim."""

    def __init__(self):
        self.root_state = torch.zeros(E, 13)
        self.root_state[:, 3:7] = torch.tensor(ROOT_QUAT_XYZW)
        self.dof_pos = torch.zeros(E, J)
        self.dof_vel = torch.zeros(E, J)
        self.rigid_body_pos = torch.zeros(E, B, 3)
        self.rigid_body_xyzw_quat = torch.zeros(E, B, 4)
        self.rigid_body_xyzw_quat[..., 3] = 1.0
        self.rigid_body_xyzw_quat[:, EE] = torch.tensor(EE_QUAT_XYZW)
        self.contact_forces = torch.zeros(E, B, 3)
        self.episode_time = torch.zeros(E)
        self.time = 0.0
        self.prev_time = -DT

    @property
    def sim_dt(self):
        return self.time - self.prev_time


class FakeTask:
    """The reaching task: target at [t, 2 * env, 1], rotated 90 degrees about z."""

    link_index = EE

    def get_target_pose(self, times, sim_dt):
        pose = torch.eye(4).repeat(E, 1, 1)
        pose[:, 0, 3] = times
        pose[:, 1, 3] = 2.0 * torch.arange(E)
        pose[:, 2, 3] = 1.0
        pose[:, :3, :3] = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        return pose


class Obj:
    """A plain attribute bag."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


class FakeGym:
    """Only what the adapter asks the gym for: body names."""

    def get_actor_rigid_body_names(self, env, actor):
        return [f"link{i}" for i in range(B)]


class FakeEnv:
    """Stand-in for IsaacGymEnv: rsl_rl step/reset, per-substep callback, 3-step episodes for env 0."""

    num_envs, num_actions, device = E, A, "cpu"

    def __init__(self, decimation=(DECIMATION, DECIMATION), episode_steps=(3, 100, 100)):
        self.state = FakeState()
        self.ctrl = Obj(torque=torch.zeros(E, J))
        self.tasks = {"locomotion": object(), "reaching": FakeTask()}
        self.dof_names = [f"j{i}" for i in range(J)]
        self.gym, self.envs, self.actor_handles = FakeGym(), [0], [0]
        self.sim_params = Obj(dt=DT)
        self.controller = Obj(decimation_count_range=decimation)
        self.max_episode_length_s = 7.0
        self.episode_steps = torch.tensor(episode_steps)
        self.steps = torch.zeros(E, dtype=torch.long)
        self.extras = {}
        self.closed = 0

    def reset(self):
        self._reset_idx(torch.arange(E))
        obs, privileged, _, _, _ = self.step(torch.zeros(E, A))
        return obs, privileged

    def _reset_idx(self, ids):
        self.state.episode_time[ids] = 0.0
        self.state.root_state[ids, 0] = 0.0
        self.steps[ids] = 0
        self.extras["time_outs"] = (
            self.time_out_buf if hasattr(self, "time_out_buf") else torch.zeros(E, dtype=torch.bool)
        )

    def _substep(self, action, d):
        self.ctrl.torque = action * 0.0 + float(d + 1)
        self.state.prev_time = self.state.time
        self.state.time += DT
        self.state.episode_time += DT
        self.state.root_state[:, 0] += 0.01
        self.state.dof_pos += 0.01 * action
        self.state.rigid_body_pos[:, :, 0] += 0.01

    def step(self, action, callback=None):
        for d in range(DECIMATION):
            if callback is not None:
                callback(self)
            self._substep(action, d)
        self.steps += 1
        done = self.steps >= self.episode_steps
        self.time_out_buf = done.clone()
        info = {
            "task/reaching/pos_err": torch.full((E,), 0.1),
            "reward/total": torch.arange(E, dtype=torch.float32),
            "episode": {"mean_rew": torch.tensor(0.5), "per_env": torch.ones(E)},
            "vis": torch.zeros(2, 2),
        }
        ids = done.nonzero().flatten()
        if len(ids):
            self._reset_idx(ids)
        info.update(self.extras)
        obs = torch.zeros(E, OBS) + self.steps[:, None].float()
        return obs, None, torch.ones(E), done.long(), info

    def close(self):
        self.closed += 1


class FakeEnvNoCallback(FakeEnv):
    """A legged_gym-style env whose step() takes no per-substep callback."""

    def step(self, action):
        return FakeEnv.step(self, action)


@pytest.fixture
def backend():
    return IsaacGymBackend(env=FakeEnv())


def test_info_from_env(backend):
    """BackendInfo comes from the env's documented attributes and the probe step."""
    info = backend.info
    assert (info.name, info.n_envs, info.obs_dim, info.action_dim) == ("isaacgym", E, OBS, A)
    assert info.joint_names == [f"j{i}" for i in range(J)]
    assert info.body_names == [f"link{i}" for i in range(B)]
    assert (info.sim_dt_s, info.decimation, info.episode_length_s) == (DT, DECIMATION, 7.0)
    assert info.term_names == ["task/reaching/pos_err", "reward/total", "episode/per_env"]
    assert "torch" in info.versions and info.device == "cpu"


def test_reset_and_step_shapes(backend):
    """reset/step return float32/bool arrays, every PRE_FIELDS and frame field with its shape and dtype."""
    obs = backend.reset()
    assert obs.shape == (E, OBS) and obs.dtype == np.float32
    result = backend.step(np.zeros((E, A), np.float32), substep_frames=False)
    assert result.obs.shape == (E, OBS) and result.obs.dtype == np.float32
    assert result.reward.shape == (E,) and result.reward.dtype == np.float32
    assert result.done.dtype == np.bool_ and result.timeout.dtype == np.bool_
    assert set(result.pre) == set(PRE_FIELDS)
    for name, (shape, dtype) in PRE_FIELDS.items():
        assert result.pre[name].shape == (E,) + shape, name
        assert result.pre[name].dtype == np.dtype(dtype), name
    fields = frame_fields(J, B)
    assert set(result.frames) == set(fields)
    for name, (shape, dtype) in fields.items():
        assert result.frames[name].shape == (1, E) + shape, name
        assert result.frames[name].dtype == np.dtype(dtype), name
    assert set(result.terms) == set(backend.info.term_names)
    assert all(v.shape == (E,) and v.dtype == np.float32 for v in result.terms.values())
    np.testing.assert_allclose(result.terms["reward/total"], [0, 1, 2])


def test_substep_frames_via_callback(backend):
    """substep_frames=True gives one row per physics substep; row 0 is the pre-step state."""
    backend.reset()
    x0 = float(backend.env.state.root_state[0, 0])
    result = backend.step(np.ones((E, A), np.float32), substep_frames=True)
    frames = result.frames
    assert frames["root_pos"].shape == (DECIMATION, E, 3)
    np.testing.assert_allclose(frames["root_pos"][:, 0, 0], x0 + 0.01 * np.arange(DECIMATION), atol=1e-6)
    np.testing.assert_allclose(frames["body_pos"][0, :, EE], result.pre["ee_pos"])
    # torque row f is the torque applied over substep f (the stand-in applies f + 1)
    np.testing.assert_allclose(frames["torque"][:, 0, 0], np.arange(1, DECIMATION + 1))
    np.testing.assert_allclose(np.diff(frames["episode_time_s"][:, 0]), DT, atol=1e-6)


def test_frames_out_receives_the_stacked_frames():
    """step(frames_out=...) stacks every frame field into the given float32 arrays and returns them."""
    a, b = IsaacGymBackend(env=FakeEnv()), IsaacGymBackend(env=FakeEnv())
    a.reset(), b.reset()
    out = {
        k: np.full((DECIMATION, E) + shape, np.nan, np.float32) for k, (shape, _) in a._frame_fields.items()
    }
    got = a.step(np.ones((E, A), np.float32), substep_frames=True, frames_out=out)
    want = b.step(np.ones((E, A), np.float32), substep_frames=True)
    assert got.frames is out and set(out) == set(want.frames)
    for key, value in want.frames.items():
        np.testing.assert_array_equal(out[key], value, err_msg=key)


def test_policy_frames_torque_is_first_substep(backend):
    """With one frame row per policy step, its torque is that of substep 0 (read through the callback)."""
    backend.reset()
    result = backend.step(np.zeros((E, A), np.float32), substep_frames=False)
    np.testing.assert_allclose(result.frames["torque"][0], 1.0)


def test_xyzw_conventions(backend):
    """Isaac Gym xyzw quaternions pass through unchanged; target rotation matrices become xyzw."""
    backend.reset()
    t = backend.env.state.episode_time.numpy().copy()
    result = backend.step(np.zeros((E, A), np.float32), substep_frames=False)
    np.testing.assert_allclose(result.frames["root_quat_xyzw"][0], np.tile(ROOT_QUAT_XYZW, (E, 1)))
    np.testing.assert_allclose(result.pre["ee_quat_xyzw"], np.tile(EE_QUAT_XYZW, (E, 1)))
    np.testing.assert_allclose(result.pre["target_quat_xyzw"], np.tile([0, 0, HALF, HALF], (E, 1)), atol=1e-6)
    np.testing.assert_allclose(result.pre["target_pos"][:, 0], t, atol=1e-6)
    np.testing.assert_allclose(result.pre["target_pos"][:, 1], 2.0 * np.arange(E))
    future = result.frames["target_future_pos"][0]
    np.testing.assert_allclose(future[:, :, 0], t[:, None] + FUTURE_TARGET_OFFSETS_S[None, :], atol=1e-5)
    assert result.frames["target_future_quat_xyzw"].shape == (1, E, 8, 4)


def test_arrays_are_copies(backend):
    """Returned arrays do not alias the sim's in-place tensors."""
    backend.reset()
    first = backend.step(np.zeros((E, A), np.float32), substep_frames=False)
    before = first.frames["root_pos"].copy()
    backend.step(np.zeros((E, A), np.float32), substep_frames=False)
    np.testing.assert_array_equal(first.frames["root_pos"], before)


def test_done_timeout_and_episode_counters(backend):
    """Ended envs bump the episode counter and restart step_in_episode; timeout needs done."""
    backend.reset()  # the stand-in's reset takes one step, so env 0 ends after two more
    zeros = np.zeros((E, A), np.float32)
    r1 = backend.step(zeros, substep_frames=False)
    r2 = backend.step(zeros, substep_frames=False)
    r3 = backend.step(zeros, substep_frames=False)
    assert r1.pre["episode"].tolist() == [0, 0, 0] and r1.pre["step_in_episode"].tolist() == [0, 0, 0]
    assert r2.done.tolist() == [True, False, False] and r2.timeout.tolist() == [True, False, False]
    assert r3.pre["episode"].tolist() == [1, 0, 0] and r3.pre["step_in_episode"].tolist() == [0, 2, 2]
    assert not r3.timeout.any()


def test_substep_frames_without_callback_is_an_error():
    """An env without a per-substep callback refuses substep frames and says to use frames=policy."""
    backend = IsaacGymBackend(env=FakeEnvNoCallback())
    backend.reset()
    with pytest.raises(InputError, match="frames=policy"):
        backend.step(np.zeros((E, A), np.float32), substep_frames=True)
    result = backend.step(np.zeros((E, A), np.float32), substep_frames=False)
    assert result.frames["root_pos"].shape == (1, E, 3)
    np.testing.assert_allclose(result.frames["torque"][0], float(DECIMATION))  # last substep's torque


def test_randomised_decimation_refused():
    """A decimation range (lo != hi) is refused with how to fix it."""
    with pytest.raises(InputError, match="randomises its decimation"):
        IsaacGymBackend(env=FakeEnv(decimation=(3, 5)))


def test_close_is_idempotent(backend):
    """close() calls env.close() once."""
    backend.close()
    backend.close()
    assert backend.env.closed == 1


def test_matrix_to_quat_xyzw_round_trip():
    """Rotation matrices, 180-degree turns included, convert to the right xyzw quaternion with w >= 0."""
    rng = np.random.default_rng(0)
    q = rng.normal(size=(200, 4))
    q[:4] = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]  # 180 degrees about x, y, z; identity
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 3] < 0] *= -1
    x, y, z, w = q.T
    m = np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )
    got = matrix_to_quat_xyzw(m)
    same = np.minimum(np.abs(got - q).max(1), np.abs(got + q).max(1))  # w = 0 leaves the sign free
    assert same.max() < 1e-9


def _sample_config():
    return {
        "seed": 1,
        "env": {
            "_target_": "legged_gym.env.isaacgym.env.IsaacGymEnv",
            "headless": True,
            "seed": 1,
            "sim_device": "cuda:0",
            "graphics_device_id": None,
            "attach_camera": True,
            "dof_pos_reset_range_scale": 0.05,
            "controller": {
                "num_envs": 4096,
                "device": "cuda:0",
                "offset": {"_target_": "torch.tensor", "device": "cuda:0"},
            },
            "tasks": {
                "reaching": {
                    "_partial_": True,
                    "storage_device": "cpu",
                    "sequence_sampler": {"file_path": "old.pkl"},
                }
            },
            "constraints": {"_target_": "collections.OrderedDict", "torque": {"scale": 1.0}},
            "cfg": {
                "env": {"num_envs": 4096, "episode_length_s": 7.0},
                "terrain": {"mode": "perlin"},
                "domain_rand": {"push_robots": True},
                "init_state": {"pos_noise": [0.1, 0.1, 0.0], "euler_noise": [0.1, 0.1, 0.1]},
                "sim": {"dt": 0.005},
            },
        },
    }


def test_config_overrides_on_a_copy():
    """Play overrides are applied to a copy, only where the keys exist (num_envs and device always)."""
    config = _sample_config()
    original = copy.deepcopy(config)
    env_cfg, applied = build_env_config(config, num_envs=2, device="cuda:1", trajectory_path="traj.pkl")
    assert config == original
    assert env_cfg["cfg"]["terrain"] == {"mode": "plane"}
    assert env_cfg["cfg"]["domain_rand"] == {"push_robots": False}  # transport_robots was absent: not created
    assert env_cfg["cfg"]["init_state"] == {"pos_noise": [0.0] * 3, "euler_noise": [0.0] * 3}
    assert env_cfg["dof_pos_reset_range_scale"] == 0.0 and env_cfg["constraints"] == {}
    assert env_cfg["cfg"]["env"]["num_envs"] == 2 and env_cfg["controller"]["num_envs"] == 2
    assert "num_envs" not in env_cfg
    assert env_cfg["sim_device"] == "cuda:1" and env_cfg["controller"]["device"] == "cuda:1"
    assert env_cfg["controller"]["offset"]["device"] == "cuda:1"
    assert env_cfg["tasks"]["reaching"]["storage_device"] == "cpu"
    assert env_cfg["graphics_device_id"] == 1
    assert env_cfg["headless"] is True and env_cfg["attach_camera"] is False
    assert env_cfg["tasks"]["reaching"]["sequence_sampler"]["file_path"] == "traj.pkl"
    assert "cfg.terrain.mode = 'plane' (plane terrain)" in applied
    assert not any("mesh_type" in line or "transport" in line for line in applied)
    assert "tasks.reaching.sequence_sampler.file_path = 'traj.pkl'" in applied


def test_config_required_keys_created():
    """num_envs and the device are set even when the config has no such keys."""
    env_cfg, applied = build_env_config(
        {"env": {"_target_": "x.Y"}}, num_envs=3, device="cpu", visualize=True
    )
    assert env_cfg == {"_target_": "x.Y", "num_envs": 3, "sim_device": "cpu"}
    assert applied == ["num_envs = 3", "sim_device = 'cpu'"]


def test_config_without_env_target():
    """A config with no env _target_ is refused clearly."""
    with pytest.raises(InputError, match="_target_"):
        build_env_config({"runner": {}}, num_envs=1, device="cpu")


def test_missing_isaacgym_message(monkeypatch, tmp_path):
    """Building from config.pkl next to the checkpoint without isaacgym gives the install hint."""
    monkeypatch.setitem(sys.modules, "isaacgym", None)
    with open(tmp_path / "config.pkl", "wb") as f:
        pickle.dump(_sample_config(), f)
    with pytest.raises(InputError) as info:
        IsaacGymBackend(checkpoint_path=tmp_path / "model_100.pt", trajectory_path="t.pkl", device="cpu")
    assert str(info.value) == ISAACGYM_MISSING


def test_malicious_config_refused_before_import(tmp_path):
    """A config.pkl that names code is refused by the restricted unpickler."""
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    with open(tmp_path / "config.pkl", "wb") as f:
        pickle.dump({"env": Evil()}, f)
    with pytest.raises(InputError, match="refused to unpickle"):
        IsaacGymBackend(config_path=tmp_path / "config.pkl")


def test_instantiate_without_hydra(monkeypatch):
    """Without hydra, _target_ dicts are imported and called, nested ones first, _partial_ honoured."""
    monkeypatch.setitem(sys.modules, "hydra", None)
    monkeypatch.setitem(sys.modules, "hydra.utils", None)
    cfg = {
        "_target_": "collections.OrderedDict",
        "a": {"_target_": "builtins.dict", "x": 1},
        "b": {"_target_": "builtins.dict", "_partial_": True, "y": 2},
        "c": [1, {"k": "v"}],
    }
    out = instantiate(cfg, extra=3)
    assert out["a"] == {"x": 1} and out["b"](z=4) == {"y": 2, "z": 4}
    assert out["c"] == [1, {"k": "v"}] and out["extra"] == 3
