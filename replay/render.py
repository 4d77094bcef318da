"""Re-render the robot from a log with MuJoCo offscreen, and write it as an H.264 video.

How a frame is made (``FrameRenderer``):
- Scene: the robot model stored in the log (``Log.model_xml``). The state of one frames/ row is set
  as qpos: the model's first free joint gets root_pos and root_quat (the log stores x, y, z, w;
  MuJoCo's free joint wants w, x, y, z), every other joint gets dof_pos of the log joint with the same
  name (joints the model lacks are left at their default pose; when no name matches but the model
  has exactly J hinge/slide joints, they are taken in order). Then mj_forward.
  Logs without a model (Isaac Gym runs) are drawn as a skeleton of frames/body_pos in a floor-only
  scene; see ``moetape.replay.skeleton``.
- Camera: the legacy one, a free camera that follows the base: it sits at root_pos + [0.8, 0.3, 0.3]
  * 1.5 (world frame) and looks at root_pos.
- Decorations: the EE target pose (steps/target_pos, target_quat_xyzw) and the EE pose (steps/ee_pos,
  ee_quat_xyzw) of the row's policy step, each as three short x/y/z capsules, joined by a line.
- Stale rows (logs with the optional ``stale_after_reset`` attribute, Isaac Gym: see
  ``moetape.schema.layout``): on a new episode's first step, frame row 0's body poses and the step's
  EE pose hold the previous episode's last values. Such a row's skeleton is drawn from the step's
  next frame row (substep logs: row 1, fresh) or from the previous fresh row (policy-rate logs),
  root and camera included, so the picture never shows the stale poses; a stale EE pose is not drawn
  (the target is). A log with a stored model draws root and dof state, which are never stale.
- Overlay: a panel in the top-left corner with the step and time, one bar per expert (gate weight,
  labelled with expert_names) and the gate entropy (bar full at ln K); see ``moetape.replay.overlay``.

Quality: "fast" (default) turns off shadows, reflections and multisampling, which is what makes
software rendering (Mesa llvmpipe) reach video rates; "high" keeps the model's settings. The skybox
stays on in both: it cost nothing measurable here, and without it the sky renders black.

Video (``render_video``): output frames are spaced 1/fps apart starting at the first selected step;
each one shows the frames/ row *nearest in time* (row time = row / frame_rate_hz), so a 200 Hz
substep log at 24 fps shows every 8th or 9th row, and a 50 Hz "policy" log repeats none.

OpenGL: headless by default (EGL, else OSMesa, unless MUJOCO_GL is set); see ``moetape.replay.gl``.
If nothing works, a one-line RenderError says so.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from moetape.replay import skeleton
from moetape.replay.gl import Offscreen, RenderError, first_line, import_mujoco
from moetape.replay.gl import create_gl_context as create_gl_context
from moetape.replay.gl import gl_backends as gl_backends
from moetape.replay.overlay import GATE_COLORS as GATE_COLORS
from moetape.replay.overlay import Image, draw_overlay
from moetape.replay.overlay import blit as blit
from moetape.replay.overlay import text_mask as text_mask
from moetape.schema.errors import InputError
from moetape.schema.io import atomic_output, check_output, resolve_output
from moetape.schema.reader import Log, open_log, stale_mask

CAMERA_OFFSET_M = np.array([0.8, 0.3, 0.3]) * 1.5
QUALITIES = ("fast", "high")
VIDEO_NAME = "video.mp4"  # the legacy name; what an -o naming a folder writes into it
MAX_SIDE_PX = 4096
WINDOW_STEPS = 256
STEP_FIELDS = ("gate", "gate_entropy", "ee_pos", "ee_quat_xyzw", "target_pos", "target_quat_xyzw")

SizeArg = Union[str, Tuple[int, int]]
StepsArg = Union[None, str, Tuple[Optional[int], Optional[int]]]
Progress = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------- options
def parse_size(size: SizeArg) -> Tuple[int, int]:
    """Return (width, height) from "640x480" or a pair; both even, 16 to 4096 pixels.

    Raises:
        InputError: bad syntax or out-of-range values.
    """
    if isinstance(size, str):
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", size)
        if not m:
            raise InputError(f"--size {size!r}: expected WIDTHxHEIGHT in pixels, e.g. 640x480.")
        w, h = int(m.group(1)), int(m.group(2))
    else:
        w, h = int(size[0]), int(size[1])
    if not (16 <= w <= MAX_SIDE_PX and 16 <= h <= MAX_SIDE_PX) or w % 2 or h % 2:
        raise InputError(
            f"--size {w}x{h}: width and height must be even numbers from 16 to {MAX_SIDE_PX} "
            "(H.264 needs even sizes), e.g. 640x480."
        )
    return w, h


def parse_steps(steps: StepsArg) -> Tuple[Optional[int], Optional[int]]:
    """Return (start, stop) from "A:B" (either end may be left out) or a pair; None means "all".

    Raises:
        InputError: bad syntax.
    """
    if steps is None:
        return None, None
    if not isinstance(steps, str):
        return (None if steps[0] is None else int(steps[0]), None if steps[1] is None else int(steps[1]))
    m = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", steps)
    if not m:
        raise InputError(
            f"--steps {steps!r}: expected START:STOP policy steps, e.g. 0:500 "
            "(either end may be left out: 100: or :500)."
        )
    return (int(m.group(1)) if m.group(1) else None, int(m.group(2)) if m.group(2) else None)


def resolve_steps(log: Log, steps: StepsArg) -> Tuple[int, int]:
    """Return the policy steps [start, stop) to render, checked against the committed steps."""
    a, b = parse_steps(steps)
    start = 0 if a is None else a
    stop = log.n_steps if b is None else b
    if not 0 <= start < stop <= log.n_steps:
        raise InputError(
            f"{log.path}: --steps {start}:{stop} out of range; the log has {log.n_steps} committed steps (0:{log.n_steps})."
        )
    return start, stop


def check_env(log: Log, env: int) -> int:
    """Return ``env`` if the log has it, else raise InputError."""
    if not 0 <= int(env) < log.n_envs:
        raise InputError(
            f"{log.path}: --env {env} out of range; the log has {log.n_envs} env(s) (0-{log.n_envs - 1})."
        )
    return int(env)


def check_frames(log: Log) -> None:
    """Raise InputError if the log has no committed frames to render."""
    if log.n_steps == 0 or log.n_frames == 0:
        raise InputError(
            f"{log.path}: no committed frames (0 policy steps); nothing to render. "
            "Is the recording still starting?"
        )


def pick_rows(
    start: int, stop: int, frames_per_step: int, frame_rate_hz: float, fps: float
) -> npt.NDArray[np.int64]:
    """Return the frames/ rows of a video at ``fps`` over policy steps [start, stop): nearest row in time.

    Output frame k is at time start_time + k / fps; it shows the row whose time (row / frame_rate_hz)
    is nearest. The video lasts floor(duration * fps) frames, at least one.
    """
    first, last = start * frames_per_step, stop * frames_per_step
    duration_s = (last - first) / float(frame_rate_hz)
    n = max(1, int(math.floor(duration_s * fps + 1e-9)))
    rows = first + np.rint(np.arange(n) / float(fps) * frame_rate_hz).astype(np.int64)
    return np.clip(rows, first, last - 1)


# ---------------------------------------------------------------------------------- robot state
@dataclass(frozen=True)
class JointMap:
    """Where the log's state goes in the model's qpos.

    root_qposadr: qpos address of the first free joint, or None. log_index / qpos_index: int (n,),
    log joint i goes to qpos[qpos_index]. unmatched: log joints the model does not have.
    """

    root_qposadr: Optional[int]
    log_index: npt.NDArray[np.int64]
    qpos_index: npt.NDArray[np.int64]
    unmatched: Tuple[str, ...]


def joint_map(model: Any, joint_names: Sequence[str]) -> JointMap:
    """Map the log's joints to the model's by name (by order if no name matches and counts agree)."""
    import mujoco

    kinds = [int(t) for t in model.jnt_type]  # plain ints: the bindings' enums need not equal numpy ints
    free = [j for j in range(model.njnt) if kinds[j] == int(mujoco.mjtJoint.mjJNT_FREE)]
    scalar = [
        j
        for j in range(model.njnt)
        if kinds[j] in (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))
    ]
    log_idx: List[int] = []
    qpos_idx: List[int] = []
    unmatched: List[str] = []
    for i, name in enumerate(joint_names):
        j = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
        if j >= 0 and j in scalar:
            log_idx.append(i)
            qpos_idx.append(int(model.jnt_qposadr[j]))
        else:
            unmatched.append(name)
    if not log_idx and len(scalar) == len(joint_names):
        log_idx = list(range(len(joint_names)))
        qpos_idx = [int(model.jnt_qposadr[j]) for j in scalar]
        unmatched = []
    return JointMap(
        int(model.jnt_qposadr[free[0]]) if free else None,
        np.asarray(log_idx, dtype=np.int64),
        np.asarray(qpos_idx, dtype=np.int64),
        tuple(unmatched),
    )


def xyzw_to_wxyz(q_xyzw: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Return a quaternion reordered from x, y, z, w (log) to w, x, y, z (MuJoCo), normalised."""
    q = np.asarray(q_xyzw, dtype=np.float64)
    n = float(np.linalg.norm(q))
    if not np.isfinite(n) or n < 1e-9:
        return np.array([1.0, 0.0, 0.0, 0.0])
    return np.array([q[3], q[0], q[1], q[2]]) / n


def apply_state(
    qpos: npt.NDArray[np.float64],
    jmap: JointMap,
    root_pos: npt.ArrayLike,
    root_quat_xyzw: npt.ArrayLike,
    dof_pos: npt.ArrayLike,
) -> None:
    """Write one frames/ row (root_pos (3,), root_quat_xyzw (4,), dof_pos (J,)) into ``qpos`` in place."""
    if jmap.root_qposadr is not None:
        a = jmap.root_qposadr
        qpos[a : a + 3] = np.asarray(root_pos, dtype=np.float64)
        qpos[a + 3 : a + 7] = xyzw_to_wxyz(root_quat_xyzw)
    if len(jmap.log_index):
        qpos[jmap.qpos_index] = np.asarray(dof_pos, dtype=np.float64)[jmap.log_index]


def follow_camera(cam: Any, root_pos: npt.ArrayLike) -> None:
    """Point a free MjvCamera at ``root_pos`` from root_pos + CAMERA_OFFSET_M (world frame)."""
    import mujoco

    off = CAMERA_OFFSET_M
    cam.type = mujoco.mjtCamera.mjCAMERA_FREE
    cam.lookat[:] = np.asarray(root_pos, dtype=np.float64)
    cam.distance = float(np.linalg.norm(off))
    # MuJoCo places a free camera at lookat - distance * forward(azimuth, elevation).
    cam.azimuth = math.degrees(math.atan2(-off[1], -off[0]))
    cam.elevation = math.degrees(math.asin(-off[2] / np.linalg.norm(off)))


# ----------------------------------------------------------------------------- reading the log
class StepWindow:
    """Some fields of one env for a window of policy steps, re-read when a step falls outside it."""

    def __init__(self, log: Log, env: int, fields: Sequence[str], span: int = WINDOW_STEPS) -> None:
        self.log, self.env, self.fields, self.span = log, env, list(fields), span
        self.start = self.stop = 0
        self.data: Dict[str, np.ndarray] = {}

    def _load(self, step: int) -> None:
        self.start = max(0, step - self.span // 4)  # keep a little history for scrubbing back
        self.stop = min(self.log.n_steps, self.start + self.span)
        self.data = {f: self.log.read(f, self.start, self.stop, env=self.env) for f in self.fields}

    def step(self, step: int) -> Dict[str, np.ndarray]:
        """Return each field's row of policy step ``step``."""
        if not self.start <= step < self.stop:
            self._load(step)
        return {f: v[step - self.start] for f, v in self.data.items()}

    def row(self, row: int) -> Dict[str, np.ndarray]:
        """Return each frames/ field's row ``row`` (frames_per_step rows per step)."""
        fps = self.log.frames_per_step
        step = row // fps
        if not self.start <= step < self.stop:
            self._load(step)
        return {f: v[row - self.start * fps] for f, v in self.data.items()}


class StaleWindow:
    """Which policy steps of one env are stale after a reset (``schema.reader.stale_mask``), windowed."""

    def __init__(self, log: Log, env: int, field: str, span: int = WINDOW_STEPS) -> None:
        self.log, self.env, self.field, self.span = log, env, field, span
        self.start = self.stop = 0
        self.mask = np.zeros(0, dtype=bool)
        self.declared = field in log.stale_after_reset

    def __call__(self, step: int) -> bool:
        """Return True if ``step``'s rows of the field are stale."""
        if not self.declared:
            return False
        if not self.start <= step < self.stop:
            self.start = max(0, step - self.span // 2)
            self.stop = min(self.log.n_steps, self.start + self.span)
            self.mask = stale_mask(self.log, self.start, self.stop, env=self.env, field=self.field)
        return bool(self.mask[step - self.start])


def fresh_row(log: Log, row: int, stale: Callable[[int], bool]) -> Optional[int]:
    """Return the frames/ row whose rigid-body poses stand for row ``row``; None if no fresh row exists.

    A stale row (row 0 of a stale step) stands in for the step's next row (substep logs) or the
    previous fresh row (policy-rate logs: one row per step; the next one if none precedes it).
    """
    fps = log.frames_per_step
    step = row // fps
    if row % fps or not stale(step):
        return row
    if fps > 1:
        return row + 1
    for s in list(range(step - 1, -1, -1)) + list(range(step + 1, log.n_steps)):
        if not stale(s):
            return s
    return None


# ------------------------------------------------------------------------------- frame renderer
class FrameRenderer:
    """Render frames of one env of a log; used by the video writer and the viewer.

    Example:
        with open_log("run.h5") as log, FrameRenderer(log, env=0, size=(640, 480)) as fr:
            img = fr.render(10)          # uint8 (480, 640, 3), first frame row of policy step 10
    """

    def __init__(
        self,
        log: Log,
        *,
        env: int = 0,
        size: SizeArg = (640, 480),
        quality: str = "fast",
        overlay: bool = True,
    ) -> None:
        mujoco = import_mujoco()
        self.log = log
        self.env = check_env(log, env)
        self.width, self.height = parse_size(size)
        if quality not in QUALITIES:
            raise InputError("--quality {!r}: expected one of {}.".format(quality, ", ".join(QUALITIES)))
        self.quality, self.overlay = quality, overlay
        xml = log.model_xml
        self.mode = "model" if xml else "skeleton"
        self.model = self._load_model(mujoco, xml or skeleton.SKELETON_MJCF)
        self.data = mujoco.MjData(self.model)
        self._qpos0 = np.array(self.model.qpos0, dtype=np.float64)
        self.jmap = joint_map(self.model, log.joint_names) if xml else None
        self._parents: Optional[List[int]] = None
        n_bodies = len(log.body_names)
        self.scene = mujoco.MjvScene(
            self.model, maxgeom=self.model.ngeom + skeleton.decoration_budget(n_bodies) + 64
        )
        if quality == "fast":
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION):
                self.scene.flags[flag] = 0
        self.option = mujoco.MjvOption()
        self.camera = mujoco.MjvCamera()
        frame_fields = ["frames/root_pos", "frames/root_quat_xyzw"]
        frame_fields.append("frames/dof_pos" if xml else "frames/body_pos")
        self._frames = StepWindow(log, self.env, frame_fields)
        self._steps = StepWindow(log, self.env, STEP_FIELDS)
        self._stale_body = StaleWindow(log, self.env, "frames/body_pos")
        self._stale_ee = StaleWindow(log, self.env, "steps/ee_pos")
        self.gl = Offscreen(self.model, self.width, self.height)

    def _load_model(self, mujoco: Any, xml: str) -> Any:
        try:
            model = mujoco.MjModel.from_xml_string(xml)
        except Exception as e:  # mujoco raises ValueError with the XML error
            raise RenderError(
                f"{self.log.path}: the robot model stored in the log does not load in MuJoCo {mujoco.__version__} ({first_line(e)})"
            ) from e
        model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), self.width)
        model.vis.global_.offheight = max(int(model.vis.global_.offheight), self.height)
        if self.quality == "fast":
            model.vis.quality.shadowsize = 0
            model.vis.quality.offsamples = 0
        return model

    @property
    def backend(self) -> str:
        """The OpenGL backend in use ("egl", "osmesa", ...)."""
        return str(self.gl.backend)

    def set_row(self, row: int) -> Dict[str, np.ndarray]:
        """Put the simulator state of frames/ row ``row`` into ``self.data``; return the row's fields."""
        import mujoco

        frame = self._frames.row(row)
        if self.jmap is not None:
            qpos = self._qpos0.copy()
            apply_state(
                qpos,
                self.jmap,
                frame["frames/root_pos"],
                frame["frames/root_quat_xyzw"],
                frame["frames/dof_pos"],
            )
            self.data.qpos[:] = qpos
        mujoco.mj_forward(self.model, self.data)
        return frame

    def render_row(self, row: int) -> Image:
        """Render frames/ row ``row`` (0 <= row < n_frames); return uint8 (H, W, 3)."""
        import mujoco

        if not 0 <= row < self.log.n_steps * self.log.frames_per_step:
            raise InputError(
                f"{self.log.path}: frame row {row} out of range (0-{self.log.n_steps * self.log.frames_per_step - 1})."
            )
        frame = self.set_row(row)
        step_idx = row // self.log.frames_per_step
        step = self._steps.step(step_idx)
        ee_stale = self._stale_ee(step_idx)
        if self.jmap is None and row != fresh_row(self.log, row, self._stale_body):
            src = fresh_row(self.log, row, self._stale_body)
            frame = self._frames.row(src) if src is not None else dict(frame, **{"frames/body_pos": None})
        follow_camera(self.camera, frame["frames/root_pos"])
        mujoco.mjv_updateScene(
            self.model,
            self.data,
            self.option,
            None,
            self.camera,
            mujoco.mjtCatBit.mjCAT_ALL.value,
            self.scene,
        )
        if self.jmap is None and frame["frames/body_pos"] is not None:
            body_pos = frame["frames/body_pos"]
            if self._parents is None:
                self._parents = skeleton.infer_parents(self.log.body_names, body_pos)
            skeleton.add_skeleton(self.scene, body_pos, self._parents)
        skeleton.add_axes(self.scene, step["target_pos"], step["target_quat_xyzw"], radius=0.007)
        if not ee_stale:  # a stale EE pose is the previous episode's: not drawn
            skeleton.add_axes(self.scene, step["ee_pos"], step["ee_quat_xyzw"], radius=0.005, alpha=0.7)
            skeleton.add_connector(
                self.scene,
                step["ee_pos"],
                step["target_pos"],
                width=skeleton.LINE_WIDTH_PX,
                rgba=skeleton.LINE_RGBA,
                kind="line",
            )
        img = self.gl.render(self.scene)
        if self.overlay:
            caption = f"step {step_idx}  t {row / self.log.frame_rate_hz:.2f} s  env {self.env}"
            draw_overlay(
                img,
                names=self.log.expert_names,
                weights=step["gate"],
                entropy=float(step["gate_entropy"]),
                caption=caption,
            )
        return img

    def set_env(self, env: int) -> None:
        """Render env ``env`` from now on."""
        self.env = check_env(self.log, env)
        for window in (self._frames, self._steps, self._stale_body, self._stale_ee):
            window.env, window.start, window.stop = self.env, 0, 0

    def ee_stale(self, step: int) -> bool:
        """Return True if policy step ``step``'s EE pose is stale (first step after a reset)."""
        return self._stale_ee(int(step))

    def render(self, step: int) -> Image:
        """Render the first frame row of policy step ``step``; return uint8 (H, W, 3)."""
        return self.render_row(int(step) * self.log.frames_per_step)

    def close(self) -> None:
        """Free the OpenGL resources (idempotent)."""
        self.gl.close()

    def __enter__(self) -> FrameRenderer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------------------- video
def render_video(
    log_path: str,
    out_path: str,
    *,
    env: int = 0,
    fps: float = 24,
    size: SizeArg = (640, 480),
    steps: StepsArg = None,
    quality: str = "fast",
    force: bool = False,
    progress: Optional[Progress] = None,
) -> Dict[str, Any]:
    """Re-render policy steps of one env of a log to an H.264 mp4 (written to a temporary name, then renamed).

    Args:
        out_path: the mp4; a folder (or a path ending in "/") gets video.mp4 inside it.
        steps: "A:B" or (A, B) policy steps [A, B); None renders every committed step.
        progress: called as progress(frames_done, frames_total) after each frame.
    Returns:
        {"out", "frames", "fps", "seconds", "render_fps" (frames per wall second achieved, encoding
        included), "env", "steps": [A, B], "size": [W, H], "mode" ("model" | "skeleton"),
        "gl_backend", "unmatched_joints"}.
    Raises:
        InputError: bad env, size, steps, fps or quality, or a log without frames.
        OutputExistsError: ``out_path`` exists and ``force`` is False.
        RenderError: mujoco or OpenGL unavailable, or the stored model does not load.
    """
    width, height = parse_size(size)
    if not (isinstance(fps, (int, float)) and 0 < fps <= 1000):
        raise InputError(f"--fps {fps}: expected a number of frames per second above 0, e.g. 24.")
    out_path = resolve_output(out_path, VIDEO_NAME)
    check_output(out_path, force=force)
    import imageio_ffmpeg

    t0 = time.perf_counter()
    with open_log(log_path) as log:
        check_env(log, env)
        check_frames(log)
        start, stop = resolve_steps(log, steps)
        rows = pick_rows(start, stop, log.frames_per_step, log.frame_rate_hz, fps)
        with FrameRenderer(log, env=env, size=(width, height), quality=quality) as fr, atomic_output(
            out_path, force=force, suffix=".mp4"
        ) as tmp:
            # imageio-ffmpeg's generator, not imageio.get_writer: the temporary name does not end in
            # .mp4, so the container is named explicitly.
            writer = imageio_ffmpeg.write_frames(
                tmp,
                (width, height),
                fps=fps,
                codec="libx264",
                quality=9 if quality == "high" else 7,
                macro_block_size=2,
                output_params=["-f", "mp4"],
            )
            writer.send(None)
            try:
                for i, row in enumerate(rows):
                    writer.send(fr.render_row(int(row)))
                    if progress is not None:
                        progress(i + 1, len(rows))
            finally:
                writer.close()
            info = {
                "mode": fr.mode,
                "gl_backend": fr.backend,
                "unmatched_joints": list(fr.jmap.unmatched) if fr.jmap else [],
            }
    seconds = time.perf_counter() - t0
    return dict(
        info,
        out=os.fspath(out_path),
        frames=int(len(rows)),
        fps=float(fps),
        seconds=seconds,
        render_fps=len(rows) / max(seconds, 1e-9),
        env=int(env),
        steps=[start, stop],
        size=[width, height],
    )
