"""The OpenGL backend for headless MuJoCo rendering: choosing it, and an offscreen framebuffer.

Headless by default. Unless the user set MUJOCO_GL, on Linux it is set before mujoco is imported
(``import_mujoco``): "egl" if a child process can render on EGL (probed once, about 0.3 s; a failed
EGL attempt cannot be undone in-process), else "osmesa". If mujoco was imported earlier with
MUJOCO_GL unset, EGL then OSMesa are tried in-process (``create_gl_context``). If nothing works, a
one-line RenderError says so. ``Offscreen`` is a context plus a MuJoCo offscreen framebuffer of one
image size; ``moetape.replay.render`` draws the frames on it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from typing import Any, List, Optional, Tuple

import numpy as np
import numpy.typing as npt

from moetape.schema.errors import LogError


class RenderError(LogError, RuntimeError):
    """Rendering cannot run here (no mujoco, no OpenGL context, a model MuJoCo cannot load)."""


_GL_CHOICE: Optional[str] = None  # MUJOCO_GL when mujoco was imported: the user's, or ours
_EGL_PROBE = """
import mujoco
from mujoco.egl import GLContext
ctx = GLContext(16, 16)
ctx.make_current()
mujoco.MjrContext(mujoco.MjModel.from_xml_string("<mujoco/>"), 100).free()
ctx.free()
"""


def _egl_works() -> bool:
    """Return True if a child process can render with MuJoCo on EGL (about 0.3 s).

    Probed in a child because a failed EGL attempt cannot be undone in this process: PyOpenGL and
    MuJoCo's GL loader stay bound to EGL, and OSMesa then fails too.
    """
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _EGL_PROBE],
            env=dict(os.environ, MUJOCO_GL="egl"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


def import_mujoco() -> Any:
    """Import mujoco for headless rendering and return it.

    Unless the user set MUJOCO_GL, on Linux it is set before the import: "egl" if EGL works, else
    "osmesa". If mujoco was already imported by someone else, its choice stands.

    Raises:
        RenderError: mujoco is not installed.
    """
    global _GL_CHOICE
    if "mujoco" not in sys.modules:
        if importlib.util.find_spec("mujoco") is None:
            raise RenderError("render needs mujoco: pip install mujoco")
        if os.environ.get("MUJOCO_GL") is None and sys.platform.startswith("linux"):
            os.environ["MUJOCO_GL"] = "egl" if _egl_works() else "osmesa"
        _GL_CHOICE = os.environ.get("MUJOCO_GL")
    elif _GL_CHOICE is None:
        _GL_CHOICE = os.environ.get("MUJOCO_GL")
    try:
        import mujoco
    except ImportError as e:
        raise RenderError("render needs mujoco: pip install mujoco") from e
    return mujoco


def gl_backends(choice: Optional[str], platform: str) -> List[str]:
    """Return the OpenGL backends to try in order: MUJOCO_GL alone if set, else egl then osmesa (Linux)."""
    if choice:
        return [choice.lower().strip()]
    if platform.startswith("linux"):
        return ["egl", "osmesa"]
    return ["default"]


def _context_class(backend: str) -> Any:
    if backend == "egl":
        return importlib.import_module("mujoco.egl").GLContext
    if backend == "osmesa":
        if "mujoco.osmesa" not in sys.modules and os.environ.get("PYOPENGL_PLATFORM", "osmesa") != "osmesa":
            # PyOpenGL fixes its platform at first import; EGL failed, so start it again on OSMesa.
            os.environ["PYOPENGL_PLATFORM"] = "osmesa"
            for name in [n for n in sys.modules if n == "OpenGL" or n.startswith("OpenGL.")]:
                del sys.modules[name]
        return importlib.import_module("mujoco.osmesa").GLContext
    if backend == "glfw":
        return importlib.import_module("mujoco.glfw").GLContext
    mujoco = import_mujoco()
    return mujoco.GLContext


def create_gl_context(width: int, height: int) -> Tuple[Any, str]:
    """Create and make current an offscreen OpenGL context; return it and the backend's name.

    Raises:
        RenderError: no backend works (one line naming each backend's failure).
    """
    import_mujoco()
    failures = []
    for backend in gl_backends(_GL_CHOICE, sys.platform):
        try:
            ctx = _context_class(backend)(width, height)
            ctx.make_current()
            return ctx, backend
        except Exception as e:  # any failure of a GL backend means: try the next one
            failures.append(f"{backend}: {first_line(e)}")
    raise RenderError(
        "cannot create an OpenGL context for offscreen rendering ({}). Install EGL or OSMesa "
        "(apt install libegl1 libosmesa6) or set MUJOCO_GL.".format("; ".join(failures))
    )


def first_line(e: BaseException) -> str:
    """Return the first line of an exception's message, or its type's name when it has none."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


class Offscreen:
    """An OpenGL context and a MuJoCo offscreen framebuffer of one image size."""

    def __init__(self, model: Any, width: int, height: int) -> None:
        mujoco = import_mujoco()
        self.width, self.height = width, height
        self.ctx, self.backend = create_gl_context(width, height)
        try:
            self.mjr = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100.value)
            mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN.value, self.mjr)
        except Exception as e:  # mujoco.FatalError("gladLoadGL error") and the like
            self.ctx.free()
            raise RenderError(
                f"MuJoCo cannot render on the {self.backend} OpenGL context ({first_line(e)}). "
                "Try another backend: MUJOCO_GL=egl or MUJOCO_GL=osmesa."
            ) from e
        self.rect = mujoco.MjrRect(0, 0, width, height)
        self._buf = np.empty((height, width, 3), dtype=np.uint8)

    def render(self, scene: Any) -> npt.NDArray[np.uint8]:
        """Render ``scene`` and return a new uint8 (H, W, 3) image, top row first."""
        import mujoco

        self.ctx.make_current()
        mujoco.mjr_render(self.rect, scene, self.mjr)
        mujoco.mjr_readPixels(self._buf, None, self.rect, self.mjr)
        return np.ascontiguousarray(self._buf[::-1])

    def close(self) -> None:
        """Free the framebuffer and the context (idempotent)."""
        if self.mjr is not None:
            self.ctx.make_current()
            self.mjr.free()
            self.mjr = None
            self.ctx.free()
