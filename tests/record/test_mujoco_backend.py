"""The embedded MuJoCo backend: model, observation layout, frames, episodes, errors."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

mujoco = pytest.importorskip("mujoco")

from moetape.record import kernels, poses  # noqa: E402
from moetape.record.backend import PRE_FIELDS, frame_fields  # noqa: E402
from moetape.record.mujoco_backend import BUNDLED_XML, JOINT_NAMES, MujocoBackend  # noqa: E402
from moetape.record.mujoco_task import OBS, OBS_DIM, OBS_LAYOUT, TERM_NAMES  # noqa: E402
from moetape.record.targets import TargetTable, episode_trajectory  # noqa: E402
from moetape.record.trajectory import Trajectories  # noqa: E402
from moetape.schema.errors import InputError  # noqa: E402

STEPS_PER_EPISODE = 350


def make_trajectories(n_episodes: int = 3, n_samples: int = 1600) -> Trajectories:
    """Circles in front of the robot, each episode offset in xy and z so episodes are told apart."""
    t = np.arange(n_samples) * 0.005
    eps = []
    for k in range(n_episodes):
        eps.append(np.stack([1.0 + 0.1 * np.cos(t), 2.0 + 0.1 * np.sin(t), 0.5 + 0.02 * k + 0 * t], -1))
    rotvec = np.zeros((n_episodes, n_samples, 3))
    rotvec[..., 1] = np.pi / 2 + 0.2 * np.sin(t)
    return Trajectories(np.array(eps, np.float32), rotvec.astype(np.float32))


@pytest.fixture(scope="module")
def trajectories() -> Trajectories:
    return make_trajectories()


def tilt_deg(quat_xyzw: np.ndarray) -> np.ndarray:
    """Angle between the body z axis and world z, degrees, for xyzw quaternions (..., 4)."""
    x, y = quat_xyzw[..., 0], quat_xyzw[..., 1]
    return np.degrees(np.arccos(np.clip(1.0 - 2.0 * (x * x + y * y), -1.0, 1.0)))


def test_model_has_the_18_joints_in_action_order(trajectories):
    """The bundled model loads and exposes the 18 actuated joints in the §5 order, one actuator each."""
    b = MujocoBackend(trajectories, n_envs=1)
    m = b.model
    assert b.info.joint_names == list(JOINT_NAMES) and len(JOINT_NAMES) == 18
    assert (
        JOINT_NAMES[:3] == ("FL_hip_joint", "FL_thigh_joint", "FL_calf_joint") and JOINT_NAMES[-1] == "joint6"
    )
    acted = [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, m.actuator_trnid[a, 0]) for a in range(m.nu)]
    assert acted == list(JOINT_NAMES)
    assert m.opt.timestep == pytest.approx(0.005) and b.info.decimation == 4
    assert 14.0 <= m.body_subtreemass[1] <= 18.0
    assert "world" not in b.info.body_names and b.info.body_names[0] == "trunk"
    assert b.info.term_names == list(TERM_NAMES) and b.info.obs_dim == OBS_DIM == 109
    assert b.info.model_xml == Path(BUNDLED_XML).read_text(encoding="utf-8")
    assert len(b.info.model_sha256) == 64 and b.info.versions == {"mujoco": mujoco.__version__}


def test_obs_is_float32_finite_with_109_columns(trajectories):
    """reset and step return float32 (E, 109) observations with finite values."""
    b = MujocoBackend(trajectories, n_envs=3)
    obs = b.reset()
    assert obs.shape == (3, 109) and obs.dtype == np.float32 and np.isfinite(obs).all()
    r = b.step(np.zeros((3, 18), np.float32), substep_frames=False)
    assert r.obs.shape == (3, 109) and r.obs.dtype == np.float32 and np.isfinite(r.obs).all()
    assert r.reward.dtype == np.float32 and r.done.dtype == bool and r.timeout.dtype == bool


@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("substep", [False, True])
def test_frames_out_receives_the_same_frames(trajectories, substep, strided):
    """step(frames_out=...) writes into the given arrays exactly the frames it would return anew,
    also when they are strided views (rows written straight from MjData need contiguous ones)."""
    a, b = MujocoBackend(trajectories, n_envs=2), MujocoBackend(trajectories, n_envs=2)
    a.reset(), b.reset()
    n_rows = 4 if substep else 1
    for s in range(3):
        action = np.full((2, 18), 0.05 * s, np.float32)
        out = {
            k: np.full((n_rows, 2 + 2 * strided) + shape, np.nan, np.float32)[:, :: 1 + strided]
            for k, (shape, _) in a._fields.items()
        }
        ra = a.step(action, substep_frames=substep, frames_out=out)
        rb = b.step(action, substep_frames=substep)
        assert ra.frames is out and set(out) == set(rb.frames)
        for key, value in rb.frames.items():
            np.testing.assert_array_equal(out[key], value, err_msg=key)
        np.testing.assert_array_equal(ra.obs, rb.obs)


def test_obs_layout_covers_109_columns_in_order():
    """OBS_LAYOUT lists the §5 terms back to back with the documented sizes."""
    sizes = [s.stop - s.start for _, s in OBS_LAYOUT]
    assert sizes == [18, 18, 3, 3] + [3, 6] * 4 + [3, 3, 3, 3, 1, 18]
    assert all(a[1].stop == b[1].start for a, b in zip(OBS_LAYOUT, OBS_LAYOUT[1:]))
    assert OBS_LAYOUT[0][1].start == 0 and OBS_LAYOUT[-1] == ("last_action", slice(91, 109))


def test_obs_terms_at_reset_and_after_a_step(trajectories):
    """Right after reset dof_pos is 0, gravity is -z, commands are 0; last_action echoes the action."""
    b = MujocoBackend(trajectories, n_envs=2)
    obs = b.reset()
    np.testing.assert_allclose(obs[:, OBS["dof_pos"]], 0.0, atol=1e-6)
    np.testing.assert_allclose(obs[:, OBS["dof_vel"]], 0.0)
    np.testing.assert_allclose(obs[:, OBS["projected_gravity"]], [[0, 0, -1]] * 2, atol=1e-6)
    np.testing.assert_allclose(obs[:, OBS["root_pos"]][:, :2], [[-0.5, 0.0]] * 2, atol=1e-6)
    np.testing.assert_allclose(obs[:, OBS["yaw"]], 0.0, atol=1e-6)
    np.testing.assert_allclose(obs[:, 78:84], 0.0)
    np.testing.assert_allclose(obs[:, OBS["last_action"]], 0.0)
    action = np.linspace(-0.3, 0.3, 36, dtype=np.float32).reshape(2, 18)
    r = b.step(action, substep_frames=False)
    np.testing.assert_array_equal(r.obs[:, -18:], action)
    dof = b.qpos[:, 7:25] - b.ix.default_pos
    np.testing.assert_allclose(r.obs[:, OBS["dof_pos"]], dof, atol=1e-6)


def test_obs_target_terms_match_mujoco_ee_frame(trajectories):
    """The EE target terms equal R_ee^T (p_t - p_ee) * 10 and R_ee^T R_t columns 0, 1 * 1.5 (MuJoCo site frame)."""
    b = MujocoBackend(trajectories, n_envs=2)
    b.reset()
    for _ in range(5):
        r = b.step(np.full((2, 18), 0.1, np.float32), substep_frames=False)
    for e in range(2):
        d = b.datas[e]
        mujoco.mj_kinematics(b.model, d)
        r_ee = d.site("end_effector").xmat.reshape(3, 3)
        p_ee = d.site("end_effector").xpos
        t_now = int(b.step_in_episode[e]) * 0.02
        for k, dt in enumerate((0.02, 0.04, 0.06, 1.0)):
            tpos, tquat = b._traj.lookup(b._traj_index[e : e + 1], np.array([[t_now + dt]]))
            r_t = np.zeros(9)
            mujoco.mju_quat2Mat(r_t, tquat[0, 0])
            r_t = r_t.reshape(3, 3)
            block = r.obs[e, 42 + 9 * k : 51 + 9 * k]
            np.testing.assert_allclose(block[:3], r_ee.T @ (tpos[0, 0] - p_ee) * 10, atol=1e-4)
            rel = r_ee.T @ r_t
            np.testing.assert_allclose(block[3:], np.concatenate([rel[:, 0], rel[:, 1]]) * 1.5, atol=1e-4)


def test_obs_base_terms_match_mujoco(trajectories):
    """After a yawed, moving start: gravity, velocities, root position and yaw are MuJoCo's own."""
    b = MujocoBackend(trajectories, n_envs=3)
    b.reset()
    rng = np.random.default_rng(2)
    for e, d in enumerate(b.datas):  # turn each robot and give it a velocity, then let it move
        yaw = 0.6 * (e + 1)
        d.qpos[3:7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
        d.qvel[:6] = rng.normal(size=6)
        mujoco.mj_forward(b.model, d)
    b._refresh_state()
    for _ in range(3):
        r = b.step(rng.normal(scale=0.2, size=(3, 18)).astype(np.float32), substep_frames=False)
    for e, d in enumerate(b.datas):
        quat, inv = d.qpos[3:7], np.zeros(4)
        mujoco.mju_negQuat(inv, quat)
        gravity, lin_vel = np.zeros(3), np.zeros(3)
        mujoco.mju_rotVecQuat(gravity, np.array([0.0, 0.0, -1.0]), inv)
        mujoco.mju_rotVecQuat(lin_vel, d.qvel[:3], inv)
        w, x, y, z = quat
        obs = r.obs[e]
        np.testing.assert_allclose(obs[OBS["projected_gravity"]], gravity, atol=1e-6)
        np.testing.assert_allclose(obs[OBS["base_lin_vel"]], lin_vel, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(obs[OBS["base_ang_vel"]], d.qvel[3:6] * 0.25, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(obs[OBS["dof_vel"]], d.qvel[6:24] * 0.05, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(obs[OBS["root_pos"]], d.qpos[:3], atol=1e-6)
        yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
        np.testing.assert_allclose(obs[OBS["yaw"]], [yaw], atol=1e-5)


def test_quaternions_are_xyzw(trajectories):
    """Root, body and EE quaternions are xyzw: identity is (0, 0, 0, 1) and they match MuJoCo's wxyz."""
    b = MujocoBackend(trajectories, n_envs=1)
    b.reset()
    r = b.step(np.zeros((1, 18), np.float32), substep_frames=False)
    np.testing.assert_allclose(r.frames["root_quat_xyzw"][0, 0], [0, 0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(r.frames["body_quat_xyzw"][0, 0, 0], [0, 0, 0, 1], atol=1e-6)
    for _ in range(10):
        r = b.step(np.full((1, 18), 0.2, np.float32), substep_frames=False)
    d = b.datas[0]
    wxyz = d.qpos[3:7].copy()
    np.testing.assert_allclose(b.qpos[0, 3:7], wxyz)
    mujoco.mj_kinematics(b.model, d)
    ee_wxyz = np.zeros(4)
    mujoco.mju_mat2Quat(ee_wxyz, d.site("end_effector").xmat)
    r2 = b.step(np.zeros((1, 18), np.float32), substep_frames=False)
    np.testing.assert_allclose(r2.frames["root_quat_xyzw"][0, 0], wxyz[[1, 2, 3, 0]], atol=1e-6)
    ee = r2.pre["ee_quat_xyzw"][0]
    assert min(np.abs(ee - ee_wxyz[[1, 2, 3, 0]]).max(), np.abs(ee + ee_wxyz[[1, 2, 3, 0]]).max()) < 1e-5


def test_stands_upright_for_7s_with_zero_action(trajectories):
    """With action 0 both envs keep the base above 0.25 m and tilt under 20 degrees for a whole episode."""
    b = MujocoBackend(trajectories, n_envs=2)
    b.reset()
    heights, tilts = [], []
    for _ in range(STEPS_PER_EPISODE - 1):
        r = b.step(np.zeros((2, 18), np.float32), substep_frames=False)
        assert not r.done.any()
        heights.append(r.frames["root_pos"][0, :, 2])
        tilts.append(tilt_deg(r.frames["root_quat_xyzw"][0]))
    assert np.min(heights) > 0.25, np.min(heights)
    assert np.max(tilts) < 20.0, np.max(tilts)
    weight = b.model.body_subtreemass[1] * 9.81
    support = r.frames["contact_force"][0, :, :, 2].sum(axis=-1)
    np.testing.assert_allclose(support, weight, rtol=0.05)


def test_stays_upright_with_small_random_actions(trajectories):
    """Uniform random actions with |a| <= 0.3 never end an episode early."""
    b = MujocoBackend(trajectories, n_envs=2)
    b.reset()
    rng = np.random.default_rng(1)
    for _ in range(200):
        r = b.step(rng.uniform(-0.3, 0.3, (2, 18)).astype(np.float32), substep_frames=False)
        assert not r.done.any()
        assert tilt_deg(r.frames["root_quat_xyzw"][0]).max() < 30.0


def test_frame_shapes_and_substep_row0_equals_policy_row(trajectories):
    """Substep mode gives 4 rows, policy mode 1 row, equal to substep row 0, for the same seed and actions."""
    fields = None
    subs = MujocoBackend(trajectories, n_envs=2, seed=3, init_noise_rad=0.05)
    pol = MujocoBackend(trajectories, n_envs=2, seed=3, init_noise_rad=0.05)
    np.testing.assert_array_equal(subs.reset(), pol.reset())
    rng = np.random.default_rng(0)
    for _ in range(6):
        a = rng.uniform(-0.3, 0.3, (2, 18)).astype(np.float32)
        rs, rp = subs.step(a, substep_frames=True), pol.step(a, substep_frames=False)
        fields = frame_fields(18, len(subs.info.body_names))
        for name, (shape, dtype) in fields.items():
            assert rs.frames[name].shape == (4, 2) + shape and rs.frames[name].dtype == dtype
            assert rp.frames[name].shape == (1, 2) + shape
            np.testing.assert_array_equal(rs.frames[name][0], rp.frames[name][0], err_msg=name)
        np.testing.assert_array_equal(rs.obs, rp.obs)
        for name, (shape, dtype) in PRE_FIELDS.items():
            assert rp.pre[name].shape == (2,) + shape and rp.pre[name].dtype == dtype
    t = rs.frames["episode_time_s"][:, 0]
    np.testing.assert_allclose(t, 5 * 0.02 + np.arange(4) * 0.005, atol=1e-6)
    assert not np.array_equal(rs.frames["root_pos"][0], rs.frames["root_pos"][3])


@pytest.mark.parametrize("substep", [True, False])
def test_every_frame_row_is_one_instant(trajectories, substep):
    """In every row the trunk's body pose is the root pose: body poses are read before the substep too."""
    b = MujocoBackend(trajectories, n_envs=3)
    b.reset()
    trunk = b.ix.trunk_row
    rng = np.random.default_rng(4)
    for _ in range(5):
        r = b.step(rng.uniform(-0.5, 0.5, (3, 18)).astype(np.float32), substep_frames=substep)
        f = r.frames
        np.testing.assert_allclose(f["body_pos"][:, :, trunk], f["root_pos"], atol=1e-6)
        np.testing.assert_allclose(f["body_quat_xyzw"][:, :, trunk], f["root_quat_xyzw"], atol=1e-6)


@pytest.mark.parametrize("substep", [True, False])
def test_future_targets_are_the_trajectory_at_each_row_time(trajectories, substep):
    """Every frame row's future targets are the trajectory at episode_time_s + linspace(0.05, 1, 8), xyzw."""
    b = MujocoBackend(trajectories, n_envs=3)
    b.reset()
    for s in range(4):
        index = b._traj_index.copy()
        r = b.step(np.full((3, 18), 0.02 * s, np.float32), substep_frames=substep)
        for k in range(4 if substep else 1):
            t = r.frames["episode_time_s"][k].astype(np.float64)
            np.testing.assert_allclose(t, s * 0.02 + k * 0.005, atol=1e-6)
            pos, quat = b._traj.lookup(
                index, s * 0.02 + k * 0.005 + np.zeros((3, 1)) + np.linspace(0.05, 1.0, 8)
            )
            np.testing.assert_allclose(r.frames["target_future_pos"][k], pos, atol=1e-6)
            np.testing.assert_allclose(
                r.frames["target_future_quat_xyzw"][k], quat[..., [1, 2, 3, 0]], atol=1e-6
            )


def test_timeout_after_350_steps_resets_the_episode(trajectories):
    """Step 350 of an episode sets done and timeout; the next step starts episode 1 at step 0."""
    b = MujocoBackend(trajectories, n_envs=2)
    b.reset()
    zeros = np.zeros((2, 18), np.float32)
    for i in range(STEPS_PER_EPISODE):
        r = b.step(zeros, substep_frames=False)
        assert r.pre["step_in_episode"].tolist() == [i, i] and r.pre["episode"].tolist() == [0, 0]
        assert r.done.all() == (i == STEPS_PER_EPISODE - 1)
    assert r.timeout.all() and r.done.all()
    np.testing.assert_allclose(r.obs[:, OBS["dof_pos"]], 0.0, atol=1e-6)
    r = b.step(zeros, substep_frames=False)
    assert r.pre["step_in_episode"].tolist() == [0, 0] and r.pre["episode"].tolist() == [1, 1]
    assert not r.done.any()


def test_trunk_on_the_ground_terminates_without_timeout(trajectories):
    """A trunk dropped onto the floor ends the episode as a termination (done, not timeout) with a penalty."""
    b = MujocoBackend(trajectories, n_envs=2)
    b.reset()
    b.datas[1].qpos[2] = 0.06
    b.datas[1].qpos[3:7] = [0.0, 1.0, 0.0, 0.0]  # upside down
    r = b.step(np.zeros((2, 18), np.float32), substep_frames=False)
    assert r.done.tolist() == [False, True] and not r.timeout.any()
    assert r.terms["reward_termination"][1] < 0 and r.terms["reward_termination"][0] == 0
    assert b.episode.tolist() == [0, 1] and b.step_in_episode.tolist() == [1, 0]


def test_envs_play_drawn_trajectory_episodes_xy_centred(trajectories):
    """Each episode plays the trajectory episode drawn for (seed, env, episode) from its first sample,
    with the trajectory episode's mean xy moved to the origin; a timeout draws the next one."""
    b = MujocoBackend(trajectories, n_envs=2, seed=5)
    b.reset()
    drawn = [episode_trajectory(5, e, 0, trajectories.n_episodes) for e in range(2)]
    assert b.trajectory_index.tolist() == drawn
    r = b.step(np.zeros((2, 18), np.float32), substep_frames=False)
    mean_xy = trajectories.ee_pos[:, :, :2].mean(axis=1)
    for e in range(2):
        expected = trajectories.ee_pos[drawn[e], 0].astype(np.float64)
        expected[:2] -= mean_xy[drawn[e]]
        np.testing.assert_allclose(r.pre["target_pos"][e], expected, atol=1e-5)
    for _ in range(STEPS_PER_EPISODE - 1):
        r = b.step(np.zeros((2, 18), np.float32), substep_frames=False)
    assert r.timeout.all() and b.episode.tolist() == [1, 1]
    drawn = [episode_trajectory(5, e, 1, trajectories.n_episodes) for e in range(2)]
    assert b.trajectory_index.tolist() == drawn
    z = b._traj.lookup(b.trajectory_index, np.zeros((2, 1)))[0][:, 0, 2]
    np.testing.assert_allclose(z, 0.5 + 0.02 * np.array(drawn), atol=1e-6)


def test_deterministic_given_the_seed(trajectories):
    """Same seed gives identical results (1 or 2 physics threads alike); another seed a different start."""
    runs = []
    for seed, threads in ((7, 1), (7, 2), (8, 1)):
        b = MujocoBackend(trajectories, n_envs=2, seed=seed, init_noise_rad=0.05, n_threads=threads)
        out = [b.reset()]
        for _ in range(10):
            out.append(b.step(np.full((2, 18), 0.1, np.float32), substep_frames=False).obs)
        b.close()
        runs.append(np.array(out))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0][0], runs[2][0])


def test_user_mjcf_missing_a_joint_is_a_clear_error(trajectories, tmp_path):
    """An MJCF without joint6 raises InputError naming the file, the joint and the 18 expected joints."""
    xml = Path(BUNDLED_XML).read_text(encoding="utf-8").replace('"joint6"', '"wrist_roll"')
    path = tmp_path / "robot.xml"
    path.write_text(xml)
    with pytest.raises(
        InputError, match=r"robot\.xml: joint 'joint6' missing; expected the 18 joints FL_hip"
    ):
        MujocoBackend(trajectories, robot_xml=str(path))


def test_user_mjcf_that_does_not_load_is_a_clear_error(trajectories, tmp_path):
    """A malformed or non-self-contained MJCF raises InputError naming the file."""
    bad = tmp_path / "bad.xml"
    bad.write_text("<mujoco><worldbody><body></mujoco>")
    with pytest.raises(InputError, match=r"bad\.xml: MuJoCo cannot load it"):
        MujocoBackend(trajectories, robot_xml=str(bad))
    meshy = tmp_path / "meshy.xml"
    meshy.write_text('<mujoco><asset><mesh file="arm.stl"/></asset></mujoco>')
    with pytest.raises(InputError, match=r"meshy\.xml: only self-contained MJCF"):
        MujocoBackend(trajectories, robot_xml=str(meshy))


def test_user_mjcf_with_the_same_joints_runs(trajectories, tmp_path):
    """A user copy of the model (without the default keyframe) loads, uses the built-in default pose and steps."""
    xml = Path(BUNDLED_XML).read_text(encoding="utf-8")
    xml = xml[: xml.index("<keyframe>")] + xml[xml.index("</keyframe>") + len("</keyframe>") :]
    path = tmp_path / "robot.xml"
    path.write_text(xml)
    b = MujocoBackend(trajectories, n_envs=1, robot_xml=str(path))
    obs = b.reset()
    np.testing.assert_allclose(obs[:, OBS["dof_pos"]], 0.0, atol=1e-6)
    assert b.info.model_xml == xml
    assert np.isfinite(b.step(np.zeros((1, 18), np.float32), substep_frames=True).obs).all()


def test_user_mjcf_with_actuators_in_another_order_gives_the_same_frames(trajectories, tmp_path):
    """Actuators listed in another order than the joints: targets and torques still go by joint name."""
    xml = Path(BUNDLED_XML).read_text(encoding="utf-8")
    head, rest = xml.split("<actuator>", 1)
    body, tail = rest.split("</actuator>", 1)
    lines = [ln for ln in body.splitlines() if ln.strip()]
    path = tmp_path / "robot.xml"
    path.write_text(head + "<actuator>\n" + "\n".join(lines[::-1]) + "\n</actuator>" + tail)
    mine, ours = (
        MujocoBackend(trajectories, n_envs=2, robot_xml=str(path)),
        MujocoBackend(trajectories, n_envs=2),
    )
    assert not np.array_equal(mine.ix.act, np.arange(18))
    np.testing.assert_array_equal(mine.reset(), ours.reset())
    rng = np.random.default_rng(5)
    for _ in range(3):
        a = rng.uniform(-0.5, 0.5, (2, 18)).astype(np.float32)
        rm, ro = mine.step(a, substep_frames=True), ours.step(a, substep_frames=True)
        for key, value in ro.frames.items():
            np.testing.assert_allclose(rm.frames[key], value, atol=1e-6, err_msg=key)
        np.testing.assert_allclose(rm.obs, ro.obs, atol=1e-6)


@pytest.mark.parametrize("integrator", ["implicitfast", "RK4"])
@pytest.mark.parametrize("substep", [False, True])
def test_physics_is_plain_mj_step(trajectories, tmp_path, integrator, substep):
    """The backend's split substeps (mj_step2 ... mj_step1; RK4: mj_step and mj_kinematics) give
    bit for bit the state of ``mj_step(m, d, 4)`` from the same start with the same PD targets."""
    xml = Path(BUNDLED_XML).read_text(encoding="utf-8")
    assert 'integrator="implicitfast"' in xml
    path = tmp_path / "robot.xml"
    path.write_text(xml.replace('integrator="implicitfast"', f'integrator="{integrator}"'))
    b = MujocoBackend(trajectories, n_envs=2, robot_xml=str(path))
    b.reset()
    m = b.model
    bare = [copy.copy(d) for d in b.datas]
    rng = np.random.default_rng(9)
    for _ in range(8):
        a = rng.uniform(-0.5, 0.5, (2, 18)).astype(np.float32)
        r = b.step(a, substep_frames=substep)
        assert not r.done.any()
        for i, d in enumerate(bare):
            d.ctrl[b.ix.act] = b.ix.default_pos + 0.25 * a[i].astype(np.float64)
            mujoco.mj_step(m, d, 4)
            np.testing.assert_array_equal(b.datas[i].qpos, d.qpos)
            np.testing.assert_array_equal(b.datas[i].qvel, d.qvel)
    b.close()


def test_terms_are_the_documented_errors_and_rewards(trajectories):
    """Each term, by name, against its formula (REWARD_WEIGHTS' comments), from the next step's pre
    fields (the same instant as a step's terms: after it) and the step's observation."""
    b = MujocoBackend(trajectories, n_envs=3)
    b.reset()
    actions = np.random.default_rng(11).uniform(-0.3, 0.3, (8, 3, 18)).astype(np.float32)
    results = [b.step(a, substep_frames=False) for a in actions]
    b.close()
    for i, r in enumerate(results[:-1]):
        assert not r.done.any()
        after = results[i + 1].pre
        pos_err = np.linalg.norm(after["target_pos"] - after["ee_pos"], axis=-1)
        dot = np.abs(np.sum(after["target_quat_xyzw"] * after["ee_quat_xyzw"], axis=-1))
        ori_err = 2 * np.arccos(np.clip(dot, 0, 1))
        previous_action = actions[i - 1] if i else np.zeros((3, 18), np.float32)
        want = {
            "task_reaching_pos_err": pos_err,
            "task_reaching_ori_err": ori_err,
            "reward_pos": np.exp(-pos_err / 0.1),
            "reward_ori": 0.5 * np.exp(-ori_err / 0.5),
            "reward_upright": -np.sum(r.obs[:, OBS["projected_gravity"]][:, :2] ** 2, axis=-1),
            "reward_action_rate": -0.01 * np.sum((actions[i] - previous_action) ** 2, axis=-1),
            "reward_termination": np.zeros(3),
        }
        want["reward_total"] = sum(v for k, v in want.items() if k.startswith("reward_"))
        assert set(r.terms) == set(TERM_NAMES) == set(want)
        for key, value in want.items():
            assert r.terms[key].dtype == np.float32
            np.testing.assert_allclose(r.terms[key], value, rtol=1e-4, atol=2e-4, err_msg=key)
        np.testing.assert_array_equal(r.reward, r.terms["reward_total"])


def test_torque_is_the_clipped_pd_law(trajectories):
    """Recorded torque = clip(kp (default + 0.25 a - q) - kd qdot) with the §5 gains, at the frame's state."""
    kp = np.array([40.0] * 12 + [100, 100, 100, 20, 20, 5])
    kd = np.array([1.0] * 12 + [3, 3, 3, 2, 1, 0.5])
    limit = np.array([33.5] * 12 + [30, 30, 30, 10, 10, 5])
    b = MujocoBackend(trajectories, n_envs=2)
    b.reset()
    rng = np.random.default_rng(2)
    for _ in range(20):
        a = rng.uniform(-1.0, 1.0, (2, 18)).astype(np.float32)
        r = b.step(a, substep_frames=True)
    f = r.frames
    for k in range(4):
        target = b.ix.default_pos + 0.25 * a.astype(np.float64)
        tau = np.clip(kp * (target - f["dof_pos"][k]) - kd * f["dof_vel"][k], -limit, limit)
        np.testing.assert_allclose(f["torque"][k], tau, atol=1e-3)


def test_pose_helpers_agree_with_mujoco():
    """Rotation vectors, quaternion products and matrices agree with MuJoCo's own functions."""
    rng = np.random.default_rng(4)
    for v in rng.normal(size=(5, 3)):
        q = poses.rotvec_to_quat(v)
        ref = np.zeros(4)
        mujoco.mju_axisAngle2Quat(ref, v / np.linalg.norm(v), np.linalg.norm(v))
        np.testing.assert_allclose(q, ref, atol=1e-12)
        mat = np.zeros(9)
        mujoco.mju_quat2Mat(mat, q)
        mine = np.empty((3, 3))
        kernels._quat_to_mat(q[0], q[1], q[2], q[3], mine)
        np.testing.assert_allclose(mine, mat.reshape(3, 3), atol=1e-12)
        q2, prod = poses.rotvec_to_quat(v[::-1]), np.zeros(4)
        mujoco.mju_mulQuat(prod, q, q2)
        np.testing.assert_allclose(poses.quat_mul(q, q2), prod, atol=1e-12)
        np.testing.assert_allclose(q @ poses.right_mul_matrix(q2), prod, atol=1e-12)
    np.testing.assert_allclose(poses.rotvec_to_quat(np.zeros(3)), [1, 0, 0, 0])


def test_target_lookup_interpolates_and_holds_the_ends():
    """Targets are linear between 200 Hz samples, hold the last sample past the end, and are xy-centred."""
    pos = np.zeros((1, 3, 3), np.float32)
    pos[0, :, 0] = [0.0, 1.0, 2.0]
    pos[0, :, 2] = [0.5, 0.6, 0.7]
    table = TargetTable(Trajectories(pos, np.zeros((1, 3, 3), np.float32)))
    p, q = table.lookup(np.array([0]), np.array([[0.0, 0.0025, 0.0075, 5.0]]))
    np.testing.assert_allclose(p[0, :, 0], [-1.0, -0.5, 0.5, 1.0])
    np.testing.assert_allclose(p[0, :, 2], [0.5, 0.55, 0.65, 0.7], atol=1e-6)
    np.testing.assert_allclose(q[0], [[1, 0, 0, 0]] * 4)
