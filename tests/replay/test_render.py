"""Video re-render, frame renderer, skeleton mode, overlay, errors, and the viewer's drawing (Agg)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

mujoco = pytest.importorskip("mujoco")

from click.testing import CliRunner  # noqa: E402

from moetape.cli import cli  # noqa: E402
from moetape.replay import render as rd  # noqa: E402
from moetape.replay import skeleton  # noqa: E402
from moetape.schema.errors import InputError, OutputExistsError  # noqa: E402
from moetape.schema.reader import open_log  # noqa: E402
from moetape.schema.synthetic import synthetic_step  # noqa: E402
from moetape.schema.writer import LogSpec, LogWriter  # noqa: E402

FPS = 4  # frames per policy step (200 Hz rows)
LEGS = ("FL", "FR", "RL", "RR")
JOINTS = [f"{leg}_{p}_joint" for leg in LEGS for p in ("hip", "thigh", "calf")] + [
    f"joint{i}" for i in range(1, 7)
]
BODIES = [
    "trunk",
    "FL_hip",
    "FL_thigh",
    "FL_calf",
    "FR_hip",
    "FR_thigh",
    "FR_calf",
    "arm_base",
    "link1",
    "link2",
]
BODY_OFFSETS = np.float32(
    [
        [0, 0, 0],
        [0.18, 0.12, 0],
        [0.18, 0.12, -0.15],
        [0.18, 0.12, -0.3],
        [0.18, -0.12, 0],
        [0.18, -0.12, -0.15],
        [0.18, -0.12, -0.3],
        [0.1, 0, 0.06],
        [0.1, 0, 0.15],
        [0.1, 0, 0.25],
    ]
)
YAW90_XYZW = np.float32([0, 0, np.sqrt(0.5), np.sqrt(0.5)])


def robot_mjcf():
    """A small MJCF: free-joint trunk, four 3-hinge legs, a 6-hinge arm with an end_effector site."""
    legs = ""
    for leg, x, y in (("FL", 0.18, 0.08), ("FR", 0.18, -0.08), ("RL", -0.18, 0.08), ("RR", -0.18, -0.08)):
        legs += (
            f'<body name="{leg}_hip" pos="{x} {y} 0"><joint name="{leg}_hip_joint" axis="1 0 0"/>'
            f'<geom type="sphere" size="0.04"/><body name="{leg}_thigh" pos="0 {y / 2} 0">'
            f'<joint name="{leg}_thigh_joint" axis="0 1 0"/><geom type="capsule" fromto="0 0 0 0 0 -0.2" size="0.025"/>'
            f'<body name="{leg}_calf" pos="0 0 -0.2"><joint name="{leg}_calf_joint" axis="0 1 0"/>'
            '<geom type="capsule" fromto="0 0 0 0 0 -0.2" size="0.02"/></body></body></body>'
        )
    arm = '<body name="arm_base" pos="0.1 0 0.06">'
    for i in range(1, 7):
        arm += (
            f'<body name="link{i}" pos="0 0 0.05"><joint name="joint{i}" axis="0 1 0"/>'
            '<geom type="capsule" fromto="0 0 0 0 0 0.05" size="0.02"/>'
        )
    arm += '<site name="end_effector" pos="0 0 0.06"/>' + "</body>" * 7
    return (
        '<mujoco model="test_robot"><visual><quality shadowsize="1024"/></visual><worldbody>'
        '<light pos="0 0 3" dir="0 0 -1" directional="true"/><geom type="plane" size="0 0 0.05" rgba=".7 .7 .7 1"/>'
        '<body name="trunk" pos="0 0 0.4"><freejoint name="root"/>'
        '<geom type="box" size="0.2 0.08 0.05" rgba=".95 .55 .15 1"/>'
        + legs
        + arm
        + "</body></worldbody></mujoco>"
    )


def root_at(row):
    """Root position of frame row ``row`` in the test logs: walking along +x."""
    return np.float32([0.01 * row, 0.0, 0.35])


def write_robot_log(path, n_steps=12, *, model=True, n_envs=2):
    """Write a log whose state is known: root_at(row), yaw 90 deg, dof_pos[j] = 0.01 * j + 0.001 * row."""
    spec = LogSpec(
        n_envs=n_envs,
        obs_dim=8,
        action_dim=18,
        joint_names=JOINTS,
        body_names=BODIES,
        frames_per_step=FPS,
        term_names=["task_reaching_pos_err"],
        backend="synthetic",
    )
    with LogWriter(
        str(path), spec, meta={"command_line": "test"}, model_xml=robot_mjcf() if model else None
    ) as log:
        for s in range(n_steps):
            steps, frames = synthetic_step(spec, s, 0)
            rows = s * FPS + np.arange(FPS)
            root = np.stack([root_at(r) for r in rows])[:, None, :].repeat(n_envs, axis=1)
            frames["root_pos"] = root
            frames["root_quat_xyzw"] = np.tile(YAW90_XYZW, (FPS, n_envs, 1))
            frames["dof_pos"] = (
                0.01 * np.arange(18)[None, None, :]
                + 0.001 * rows[:, None, None]
                + np.zeros((FPS, n_envs, 18))
            ).astype(np.float32)
            frames["body_pos"] = (root[:, :, None, :] + BODY_OFFSETS).astype(np.float32)
            steps["ee_pos"] = root[0] + np.float32([0.1, 0, 0.4])
            steps["target_pos"] = steps["ee_pos"] + np.float32([0.05, 0.05, 0])
            steps["ee_quat_xyzw"] = steps["target_quat_xyzw"] = np.tile(np.float32([0, 0, 0, 1]), (n_envs, 1))
            log.append(steps, frames)
    return str(path)


@pytest.fixture(scope="module")
def robot_log(tmp_path_factory):
    """A 12-step, 2-env log with the test robot model stored."""
    return write_robot_log(tmp_path_factory.mktemp("render") / "robot.h5")


@pytest.fixture(scope="module")
def skeleton_log(tmp_path_factory):
    """The same states without a stored model (like an Isaac Gym run)."""
    return write_robot_log(tmp_path_factory.mktemp("render") / "skel.h5", model=False)


# ------------------------------------------------------------------------------------ video
def test_render_video_writes_h264_with_frame_count_and_size(robot_log, tmp_path):
    """render_video writes an mp4 whose frames, size and rate match the request (nearest rows at 24 fps)."""
    import imageio_ffmpeg

    out = tmp_path / "v.mp4"
    calls = []
    result = rd.render_video(
        robot_log, str(out), env=1, size=(160, 120), progress=lambda d, t: calls.append((d, t))
    )
    expected = int(np.floor(12 * FPS / 200.0 * 24 + 1e-9))  # 0.24 s of rows at 24 fps
    assert result["frames"] == expected and result["mode"] == "model" and result["unmatched_joints"] == []
    assert calls[-1] == (expected, expected)
    # decode with ffmpeg itself (imageio-ffmpeg's reader leaves pipes open, which pytest reports)
    proc = subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-v",
            "info",
            "-i",
            str(out),
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ],
        capture_output=True,
        check=True,
    )
    assert len(proc.stdout) == expected * 120 * 160 * 3
    info = proc.stderr.decode()
    assert re.search(r"Video: h264.*160x120.*24 fps", info), info
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_pick_rows_takes_the_nearest_row_in_time():
    """Video frame k shows the frames/ row nearest to k / fps, within the selected steps."""
    rows = rd.pick_rows(10, 20, 4, 200.0, 24)
    assert rows[0] == 40 and len(rows) == 4  # 40 rows = 0.2 s -> 4 frames at 24 fps
    assert list(rows) == [40 + round(k / 24 * 200) for k in range(4)]
    assert list(rd.pick_rows(0, 3, 1, 50.0, 100)) == [
        0,
        0,
        1,
        2,
        2,
        2,
    ]  # upsampling repeats, clipped to the range


def test_cli_render_and_output_exists(robot_log, tmp_path):
    """`moetape render` writes the video; a second run without --force fails with one line, exit 1."""
    out = str(tmp_path / "cli.mp4")
    args = ["render", robot_log, "-o", out, "--size", "64x48", "--steps", "2:6", "--quiet"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert os.path.getsize(out) > 0 and "wrote" in res.stderr
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1 and res.stderr.startswith("Error: ") and "--force" in res.stderr
    assert CliRunner().invoke(cli, args + ["--force"]).exit_code == 0
    assert "Example:" in CliRunner().invoke(cli, ["render", "--help"]).output


# ------------------------------------------------------------------------------------ state and camera
def test_state_goes_into_qpos_with_xyzw_to_wxyz(robot_log):
    """The base lands where frames/root_pos says, turned by root_quat (xyzw -> wxyz), joints by name."""
    with open_log(robot_log) as log, rd.FrameRenderer(log, env=0, size=(64, 48)) as fr:
        fr.set_row(9)
        trunk = mujoco.mj_name2id(fr.model, mujoco.mjtObj.mjOBJ_BODY, "trunk")
        np.testing.assert_allclose(fr.data.xpos[trunk], root_at(9), atol=1e-6)
        np.testing.assert_allclose(fr.data.xquat[trunk], [np.sqrt(0.5), 0, 0, np.sqrt(0.5)], atol=1e-6)
        # yaw 90 deg: the trunk's x axis points along world +y
        np.testing.assert_allclose(fr.data.xmat[trunk].reshape(3, 3)[:, 0], [0, 1, 0], atol=1e-6)
        for j, name in enumerate(JOINTS):
            jid = mujoco.mj_name2id(fr.model, mujoco.mjtObj.mjOBJ_JOINT, name)
            assert fr.data.qpos[fr.model.jnt_qposadr[jid]] == pytest.approx(0.01 * j + 0.009, abs=1e-6)


def test_joints_map_by_name_not_order():
    """Log joints are matched to model joints by name; names the model lacks are reported."""
    model = mujoco.MjModel.from_xml_string(robot_mjcf())
    jmap = rd.joint_map(model, ["joint6", "nope", "FL_hip_joint"])
    assert jmap.unmatched == ("nope",)
    qpos = np.zeros(model.nq)
    rd.apply_state(qpos, jmap, [1, 2, 3], [0, 0, 0, 2], [0.6, 9.0, 0.1])
    assert list(qpos[:7]) == [1, 2, 3, 1, 0, 0, 0]  # normalised, w first
    assert qpos[model.jnt_qposadr[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, "joint6")]] == 0.6
    assert qpos[model.jnt_qposadr[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, "FL_hip_joint")]] == 0.1


def test_camera_follows_the_base_from_the_legacy_offset(robot_log):
    """The camera sits at root + [0.8, 0.3, 0.3] * 1.5 (world) and looks at the root."""
    with open_log(robot_log) as log, rd.FrameRenderer(log, env=0, size=(64, 48)) as fr:
        fr.render_row(30)
        eye = (np.asarray(fr.scene.camera[0].pos) + np.asarray(fr.scene.camera[1].pos)) / 2
        np.testing.assert_allclose(eye, root_at(30) + np.array([1.2, 0.45, 0.45]), atol=1e-4)
        forward = np.asarray(fr.scene.camera[0].forward)
        np.testing.assert_allclose(
            forward, -np.array([0.8, 0.3, 0.3]) / np.linalg.norm([0.8, 0.3, 0.3]), atol=1e-4
        )


def test_rendered_image_changes_with_the_state_and_overlay(robot_log):
    """Frames differ when the pose differs; the overlay panel paints the top-left corner."""
    with open_log(robot_log) as log:
        with rd.FrameRenderer(log, env=0, size=(160, 120)) as fr:
            a, b = fr.render_row(0), fr.render_row(47)
            assert a.shape == (120, 160, 3) and a.dtype == np.uint8
            assert np.abs(a.astype(int) - b.astype(int)).sum() > 0
            fr.overlay = False
            plain = fr.render_row(0)
        corner = (slice(0, 20), slice(0, 60))
        assert np.abs(a[corner].astype(int) - plain[corner].astype(int)).mean() > 10
        assert np.abs(a[100:, 140:].astype(int) - plain[100:, 140:].astype(int)).max() == 0


def test_overlay_draws_one_bar_per_expert_and_entropy():
    """draw_overlay: bar lengths follow the weights, in the expert colours, with the entropy bar below."""
    img = np.zeros((480, 640, 3), np.uint8)
    w, h = rd.draw_overlay(
        img, names=["base", "arm"], weights=[0.25, 0.75], entropy=np.log(2), caption="step 3"
    )
    assert 100 < w < 640 and 60 < h < 200
    for k, weight in enumerate([0.25, 0.75]):
        color = np.array(rd.GATE_COLORS[k])
        count = np.sum(np.all(img == color, axis=-1))
        bar_h = 19 - 2 * (19 // 5)  # row height minus margins at 480 px
        assert count == pytest.approx(round(weight * 110) * bar_h, rel=0.02)
    assert np.sum(np.all(img == 235, axis=-1)) == pytest.approx(110 * 13, rel=0.02)  # full entropy bar
    assert img[h + 5 :, w + 5 :].max() == 0  # nothing outside the panel


# ------------------------------------------------------------------------------------ skeleton
def test_skeleton_mode_without_model(skeleton_log, tmp_path):
    """Logs without a model draw body_pos as spheres and links; the video renders too."""
    with open_log(skeleton_log) as log, rd.FrameRenderer(log, env=0, size=(160, 120), overlay=False) as fr:
        assert fr.mode == "skeleton" and fr.jmap is None
        img = fr.render(3)
        sphere_ids = [
            i for i in range(fr.scene.ngeom) if fr.scene.geoms[i].type == int(mujoco.mjtGeom.mjGEOM_SPHERE)
        ]
        assert len(sphere_ids) == len(BODIES)
        np.testing.assert_allclose(fr.scene.geoms[sphere_ids[0]].pos, root_at(12), atol=1e-5)
        orange = (img[..., 0] > 150) & (img[..., 1] > 60) & (img[..., 1] < 160) & (img[..., 2] < 80)
        assert orange.sum() > 20
    result = rd.render_video(skeleton_log, str(tmp_path / "s.mp4"), size=(64, 48), steps="0:4")
    assert result["mode"] == "skeleton" and result["frames"] == 1


def test_infer_parents_recovers_legs_and_arm():
    """Same-stem bodies chain; a new stem joins the nearest of the root and earlier chain ends."""
    names = ["trunk", "FL_hip", "FL_thigh", "FR_hip", "FR_thigh", "arm_base", "link1", "link2"]
    pos = np.array(
        [
            [0, 0, 0],
            [0.2, 0.1, 0],
            [0.2, 0.1, -0.2],
            [0.2, -0.1, 0],
            [0.2, -0.1, -0.2],
            [0.1, 0, 0.06],
            [0.1, 0, 0.1],
            [0.1, 0, 0.2],
        ]
    )
    assert skeleton.infer_parents(names, pos) == [-1, 0, 1, 0, 3, 0, 5, 6]


# ------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"env": 2}, "--env 2 out of range; the log has 2 env(s)"),
        ({"size": "640by480"}, "expected WIDTHxHEIGHT"),
        ({"size": "641x480"}, "must be even"),
        ({"steps": "1-3"}, "expected START:STOP"),
        ({"steps": "5:99"}, "--steps 5:99 out of range; the log has 12 committed steps"),
        ({"steps": "6:6"}, "out of range"),
        ({"fps": 0}, "--fps 0"),
    ],
)
def test_bad_input_is_one_line_input_error(robot_log, tmp_path, kwargs, message):
    """Bad env, size, steps and fps raise InputError with one line that names the problem."""
    with pytest.raises(InputError) as e:
        rd.render_video(robot_log, str(tmp_path / "x.mp4"), **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not os.listdir(tmp_path)


def test_output_exists_and_empty_log(robot_log, tmp_path):
    """An existing output needs force; a log with no committed frames is refused."""
    out = tmp_path / "x.mp4"
    out.write_bytes(b"keep")
    with pytest.raises(OutputExistsError):
        rd.render_video(robot_log, str(out))
    assert out.read_bytes() == b"keep"
    empty = str(tmp_path / "empty.h5")
    spec = LogSpec(n_envs=1, obs_dim=4, action_dim=18, joint_names=JOINTS, body_names=["trunk"])
    LogWriter(empty, spec).close()
    with pytest.raises(InputError, match="no committed frames"):
        rd.render_video(empty, str(tmp_path / "y.mp4"))


def test_missing_mujoco_is_a_one_line_error(monkeypatch):
    """Without mujoco, rendering says how to install it."""
    monkeypatch.setitem(sys.modules, "mujoco", None)
    with pytest.raises(rd.RenderError, match=r"^render needs mujoco: pip install mujoco$"):
        rd.import_mujoco()


def test_gl_backend_order():
    """EGL first, then OSMesa, unless the user chose MUJOCO_GL."""
    assert rd.gl_backends(None, "linux") == ["egl", "osmesa"]
    assert rd.gl_backends("osmesa", "linux") == ["osmesa"]


# ------------------------------------------------------------------------------------ viewer (Agg)
@pytest.fixture
def agg_figure(monkeypatch):
    """A matplotlib Figure on the Agg canvas (no window)."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 5))
    FigureCanvasAgg(fig)
    return fig


def test_viewer_draws_step_cursor_and_image(robot_log, agg_figure):
    """The viewer shows the step's image, moves the cursors, scrubs, switches env and plays."""
    from moetape.replay import viewer as vw

    with open_log(robot_log) as log:
        v = vw.Viewer(agg_figure, log, env=0, size=(64, 48))
        try:
            v.show(5)
            assert [c.get_xdata()[0] for c in v.view.cursors] == [5, 5, 5]
            assert v.slider.val == 5 and "step 5/11" in v.view.title.get_text()
            assert v.view.image.get_array().shape == (48, 64, 3)
            gate = log.read("gate", env=1)
            v.set_env(1)
            np.testing.assert_allclose(v.view.gate_lines[1].get_ydata(), gate[:, 1])
            err = log.read("terms/task_reaching_pos_err", env=1)
            np.testing.assert_allclose(v.view.err_line.get_ydata(), err)
            v.slider.set_val(8)
            assert v.step == 8
            v.toggle_play()
            v.tick()  # 50 Hz policy at 24 fps: about 2 steps per tick
            assert v.step == 10 and v.playing
            v.tick()
            v.tick()
            assert v.step == 11 and not v.playing  # stops at the last step
            agg_figure.canvas.draw()
        finally:
            v.close()


def test_viewer_follow_picks_up_new_steps(robot_log, agg_figure):
    """poll() extends the curves and the slider when a live log has committed more steps."""
    from moetape.replay import viewer as vw

    with open_log(robot_log) as log:
        v = vw.Viewer(agg_figure, log, env=0, size=(64, 48), follow=True)
        try:
            v.series = vw.load_series(log, 0, 0, 7)  # as if only 7 steps were committed at start
            v.slider.valmax = 6
            v.show(6)
            assert v.poll() is True
            assert len(v.series) == 12 and v.slider.valmax == 11 and v.step == 11
            assert len(v.view.ent_line.get_xdata()) == 12
            assert v.poll() is False
        finally:
            v.close()


def test_viewer_without_display_points_to_render():
    """No DISPLAY on Linux: a one-line error that suggests `moetape render`."""
    from moetape.replay import viewer as vw

    with pytest.raises(rd.RenderError, match="moetape render"):
        vw.check_display({}, "linux")
    vw.check_display({"DISPLAY": ":0"}, "linux")
    vw.check_display({}, "darwin")
