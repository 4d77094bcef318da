"""Benchmark moetape's FrameRenderer against a bare mujoco.Renderer loop on the same model, in one run.

Both render 640x480 frames of the same model with the same settings: our default quality "fast"
(no shadows, reflections or multisampling). Ours does everything a video frame needs (read the row
from the log, set qpos, mj_forward, follow camera, EE/target axes, update the scene, render, read
pixels, gate overlay); the bare loop does update_scene + render of a fixed state. The ratio says what
moetape adds on top of MuJoCo. ``bare_renderer_model_fps`` is the bare loop with the model's own
settings (shadows, reflections, MSAA), for reference.

Usage: python bench/render.py [LOG] [--frames 200] [--json]
Without LOG a small synthetic log with a 18-joint test robot is written to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from typing import Any, Dict

import numpy as np

SIZE = (640, 480)
ROUNDS = 4
LEGS = ("FL", "FR", "RL", "RR")
JOINTS = [f"{leg}_{part}_joint" for leg in LEGS for part in ("hip", "thigh", "calf")] + [
    f"joint{i}" for i in range(1, 7)
]


def robot_mjcf() -> str:
    """Return a small self-contained MJCF: a free-joint trunk, 4 legs x 3 hinges and a 6-hinge arm."""
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
            '<body name="link{0}" pos="0 0 0.05"><joint name="joint{0}" axis="{1}"/>'
            '<geom type="capsule" fromto="0 0 0 0 0 0.05" size="0.02"/>'
        ).format(i, "0 0 1" if i % 3 == 1 else "0 1 0")
    arm += '<site name="end_effector" pos="0 0 0.06"/>' + "</body>" * 7
    return f"""<mujoco model="bench_robot">
  <visual><global offwidth="640" offheight="480"/><quality shadowsize="2048"/></visual>
  <asset>
    <texture name="sky" type="skybox" builtin="gradient" rgb1=".55 .7 .9" rgb2=".1 .15 .25" width="64" height="384"/>
    <texture name="grid" type="2d" builtin="checker" rgb1=".82 .82 .8" rgb2=".62 .64 .66" width="256" height="256"/>
    <material name="floor" texture="grid" texrepeat="8 8" texuniform="true" reflectance="0.15"/>
  </asset>
  <worldbody>
    <light pos="0 0 4" dir="0 0 -1" directional="true"/>
    <geom type="plane" size="0 0 0.05" material="floor"/>
    <body name="trunk" pos="0 0 0.4"><freejoint name="root"/><geom type="box" size="0.2 0.08 0.05" rgba=".95 .55 .15 1"/>
      {legs}{arm}
    </body>
  </worldbody>
</mujoco>"""


def write_synthetic_log(path: str, n_steps: int = 100) -> str:
    """Write a 2-env synthetic log whose robot walks forward and moves its joints; return ``path``."""
    from moetape.schema.synthetic import synthetic_step
    from moetape.schema.writer import LogSpec, LogWriter

    fps = 4
    spec = LogSpec(
        n_envs=2,
        obs_dim=109,
        action_dim=18,
        joint_names=JOINTS,
        body_names=["trunk"],
        frames_per_step=fps,
        backend="synthetic",
    )
    with LogWriter(path, spec, meta={"command_line": "bench/render.py"}, model_xml=robot_mjcf()) as log:
        for s in range(n_steps):
            steps, frames = synthetic_step(spec, s, 0)
            t = (s * fps + np.arange(fps)) * spec.sim_dt_s
            root = np.zeros((fps, 2, 3), np.float32)
            root[..., 0], root[..., 2] = 0.5 * t[:, None], 0.35
            frames["root_pos"] = root
            frames["root_quat_xyzw"] = np.tile(np.float32([0, 0, 0, 1]), (fps, 2, 1))
            frames["dof_pos"] = np.broadcast_to(
                0.3 * np.sin(5 * t[:, None, None] + np.arange(18)), (fps, 2, 18)
            ).astype(np.float32)
            steps["ee_pos"] = root[0] + np.float32([0.1, 0, 0.4])
            steps["target_pos"] = steps["ee_pos"] + np.float32([0.05, 0.05, 0])
            steps["ee_quat_xyzw"] = steps["target_quat_xyzw"] = np.tile(np.float32([0, 0, 0, 1]), (2, 1))
            log.append(steps, frames)
    return path


def measure_render_fps(log_path: str, n_frames: int = 200) -> Dict[str, Any]:
    """Time our FrameRenderer (640x480, default quality) and a bare mujoco.Renderer loop on the same model.

    Returns:
        {"render_fps", "bare_renderer_fps", "ratio" (ours / bare), "bare_renderer_model_fps",
        "frames", "size", "gl_backend", "mode", "cpu_count", "machine"}.
    """
    from moetape.replay import skeleton
    from moetape.replay.render import FrameRenderer, follow_camera, import_mujoco
    from moetape.schema.reader import open_log

    mujoco = import_mujoco()

    def bare_renderer(xml: str, fast: bool) -> Any:
        model = mujoco.MjModel.from_xml_string(xml)
        model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), SIZE[0])
        model.vis.global_.offheight = max(int(model.vis.global_.offheight), SIZE[1])
        if fast:
            model.vis.quality.shadowsize = 0
            model.vis.quality.offsamples = 0
        data = mujoco.MjData(model)
        mujoco.mj_forward(model, data)
        renderer = mujoco.Renderer(model, SIZE[1], SIZE[0])
        if fast:
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        return renderer, data

    # The two loops alternate in ROUNDS blocks and each reports its median block, so load from
    # other processes on a shared machine hits both alike.
    with open_log(log_path) as log:
        n_rows = log.n_steps * log.frames_per_step
        xml = log.model_xml or skeleton.SKELETON_MJCF
        cam = mujoco.MjvCamera()
        follow_camera(cam, log.read("frames/root_pos", 0, 1, env=0)[0])
        with FrameRenderer(log, env=0, size=SIZE, quality="fast") as fr:
            renderer, data = bare_renderer(xml, fast=True)
            block = max(1, n_frames // ROUNDS)
            ours_fps, bare_fps = [], []
            for row in range(min(5, n_rows)):
                fr.render_row(row)
                renderer.update_scene(data, cam)
                renderer.render()
            for _ in range(ROUNDS):
                t0 = time.perf_counter()
                for i in range(block):
                    fr.render_row(i % n_rows)
                ours_fps.append(block / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                for _ in range(block):
                    renderer.update_scene(data, cam)
                    renderer.render()
                bare_fps.append(block / (time.perf_counter() - t0))
            renderer.close()
            backend, mode = fr.backend, fr.mode
    renderer, data = bare_renderer(xml, fast=False)
    count = max(10, n_frames // 10)
    t0 = time.perf_counter()
    for _ in range(count):
        renderer.update_scene(data, cam)
        renderer.render()
    bare_model = count / (time.perf_counter() - t0)
    renderer.close()
    ours, bare_fast = float(np.median(ours_fps)), float(np.median(bare_fps))
    return {
        "render_fps": ours,
        "bare_renderer_fps": bare_fast,
        "ratio": ours / bare_fast,
        "bare_renderer_model_fps": bare_model,
        "frames": n_frames,
        "size": list(SIZE),
        "gl_backend": backend,
        "mode": mode,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log", nargs="?", help="a moetape log; default: a synthetic one")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.log or write_synthetic_log(os.path.join(tmp, "bench_render.h5"))
        result = measure_render_fps(path, args.frames)
    result["log"] = args.log or "synthetic"
    if args.json:
        print(json.dumps(result))
    else:
        print(
            "ours {render_fps:.1f} fps, bare mujoco.Renderer {bare_renderer_fps:.1f} fps (ratio {ratio:.2f}); "
            "bare with the model's shadows/reflections/MSAA {bare_renderer_model_fps:.1f} fps "
            "[{gl_backend}, {mode}, {cpu_count} CPUs]".format(**result),
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
