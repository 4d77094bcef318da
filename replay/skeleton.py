"""Decorations drawn into a MuJoCo scene: pose axes, lines, and the skeleton of model-less logs.

Logs recorded without a robot model (Isaac Gym runs store no MJCF) are re-rendered from the
recorded rigid-body poses (frames/body_pos) as a skeleton: one sphere per body and one capsule from
each body to its parent, in a scene that holds only a floor and a light (``SKELETON_MJCF``).

The log does not store the kinematic tree, so parents are inferred from the body names and the first
frame (``infer_parents``): consecutive bodies whose names share a stem (the text before the first
"_", without trailing digits: "FL_thigh" -> "fl", "link3" -> "link") form a chain; a body that starts
a new stem is joined to whichever is nearest, in the first frame, of the root body (index 0) and the
last body of each earlier chain. For the usual depth-first body order of legged robots (base, FL
hip/thigh/calf/foot, FR ..., arm links) this recovers the legs and the arm.

mujoco is imported by the caller (``moetape.replay.render``), which sets up the OpenGL backend first.
"""

from __future__ import annotations

import re
from typing import Any, List, Sequence, Tuple

import numpy as np
import numpy.typing as npt

Rgba = Tuple[float, float, float, float]

AXIS_COLORS: Tuple[Rgba, Rgba, Rgba] = (
    (0.9, 0.15, 0.15, 1.0),
    (0.15, 0.8, 0.15, 1.0),
    (0.2, 0.35, 0.95, 1.0),
)
LINE_RGBA: Rgba = (1.0, 0.85, 0.1, 1.0)
BODY_RGBA: Rgba = (0.95, 0.55, 0.15, 1.0)
LINK_RGBA: Rgba = (0.3, 0.3, 0.33, 1.0)

# A floor, a light and no robot: the scene of the skeleton mode. offwidth/offheight are raised to
# the requested image size by the renderer.
SKELETON_MJCF = """<mujoco model="moetape_skeleton">
  <visual>
    <global offwidth="640" offheight="480"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.5 0.5 0.5" specular="0.1 0.1 0.1"/>
  </visual>
  <asset>
    <texture name="skybox" type="skybox" builtin="gradient" rgb1="0.55 0.7 0.9" rgb2="0.1 0.15 0.25"
             width="64" height="384"/>
    <texture name="grid" type="2d" builtin="checker" rgb1="0.82 0.82 0.8" rgb2="0.62 0.64 0.66"
             width="256" height="256"/>
    <material name="floor" texture="grid" texrepeat="8 8" texuniform="true" reflectance="0.1"/>
  </asset>
  <worldbody>
    <light pos="0 0 4" dir="0 0 -1" directional="true"/>
    <geom name="floor" type="plane" size="0 0 0.05" material="floor"/>
  </worldbody>
</mujoco>
"""

SPHERE_RADIUS_M = 0.03
ROOT_RADIUS_M = 0.06
LINK_RADIUS_M = 0.012
AXIS_LENGTH_M = 0.08
LINE_WIDTH_PX = 3.0


def quat_xyzw_to_mat(q_xyzw: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Return the 3x3 rotation matrix of a unit quaternion given as x, y, z, w (normalised here).

    A zero quaternion gives the identity.
    """
    q = np.asarray(q_xyzw, dtype=np.float64)
    n = float(np.linalg.norm(q))
    if not np.isfinite(n) or n < 1e-9:
        return np.eye(3)
    x, y, z, w = q / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _stem(name: str) -> str:
    return re.sub(r"\d+$", "", name.split("_")[0]).lower()


def infer_parents(body_names: Sequence[str], body_pos: npt.ArrayLike) -> List[int]:
    """Return each body's inferred parent index (-1 for the root, body 0); see the module docstring.

    Args:
        body_names: B names in the log's order.
        body_pos: float (B, 3), the bodies' positions in one frame (used to join new chains).
    """
    pos = np.asarray(body_pos, dtype=np.float64)
    parents: List[int] = []
    chain_ends: List[int] = []  # last body of each earlier chain
    for i, name in enumerate(body_names):
        if i == 0:
            parents.append(-1)
            continue
        if i > 1 and _stem(name) == _stem(body_names[i - 1]):
            parents.append(i - 1)
            continue
        if i > 1:
            chain_ends.append(i - 1)
        candidates = [0] + chain_ends
        dist = [
            float(np.linalg.norm(pos[i] - pos[c])) if np.all(np.isfinite(pos[[i, c]])) else np.inf
            for c in candidates
        ]
        parents.append(candidates[int(np.argmin(dist))])
    return parents


def _next_geom(scene: Any) -> Any:
    """Return the next free geom of ``scene`` (and count it), or None when the scene is full."""
    if scene.ngeom >= scene.maxgeom:
        return None
    geom = scene.geoms[scene.ngeom]
    scene.ngeom += 1
    return geom


def add_sphere(scene: Any, pos: npt.ArrayLike, radius: float, rgba: Rgba) -> None:
    """Add a sphere decoration to ``scene`` (after mjv_updateScene)."""
    import mujoco

    geom = _next_geom(scene)
    if geom is None:
        return
    mujoco.mjv_initGeom(
        geom,
        mujoco.mjtGeom.mjGEOM_SPHERE,
        np.array([radius, 0.0, 0.0]),
        np.asarray(pos, dtype=np.float64),
        np.eye(3).ravel(),
        np.asarray(rgba, dtype=np.float32),
    )
    geom.category = mujoco.mjtCatBit.mjCAT_DECOR


def add_connector(
    scene: Any, a: npt.ArrayLike, b: npt.ArrayLike, *, width: float, rgba: Rgba, kind: str = "capsule"
) -> None:
    """Add a capsule (width = radius, m) or a line (width in pixels) from ``a`` to ``b``."""
    import mujoco

    pa = np.asarray(a, dtype=np.float64)
    pb = np.asarray(b, dtype=np.float64)
    if not (np.all(np.isfinite(pa)) and np.all(np.isfinite(pb))) or np.linalg.norm(pb - pa) < 1e-9:
        return
    geom = _next_geom(scene)
    if geom is None:
        return
    gtype = mujoco.mjtGeom.mjGEOM_LINE if kind == "line" else mujoco.mjtGeom.mjGEOM_CAPSULE
    mujoco.mjv_initGeom(
        geom, gtype, np.zeros(3), np.zeros(3), np.eye(3).ravel(), np.asarray(rgba, dtype=np.float32)
    )
    mujoco.mjv_connector(geom, gtype, float(width), pa, pb)
    geom.category = mujoco.mjtCatBit.mjCAT_DECOR


def add_axes(
    scene: Any,
    pos: npt.ArrayLike,
    quat_xyzw: npt.ArrayLike,
    *,
    length: float = AXIS_LENGTH_M,
    radius: float = 0.006,
    alpha: float = 1.0,
) -> None:
    """Add a pose as three short capsules along its x (red), y (green) and z (blue) axes."""
    p = np.asarray(pos, dtype=np.float64)
    rot = quat_xyzw_to_mat(quat_xyzw)
    for k in range(3):
        r, g, b, _ = AXIS_COLORS[k]
        add_connector(scene, p, p + length * rot[:, k], width=radius, rgba=(r, g, b, alpha))


def add_skeleton(scene: Any, body_pos: npt.ArrayLike, parents: Sequence[int]) -> None:
    """Add one sphere per body and a capsule from each body to its parent.

    Args:
        body_pos: float (B, 3) world positions of one frame.
        parents: B parent indices from ``infer_parents`` (-1 = none).
    """
    pos = np.asarray(body_pos, dtype=np.float64)
    for i, parent in enumerate(parents):
        if parent >= 0:
            add_connector(scene, pos[parent], pos[i], width=LINK_RADIUS_M, rgba=LINK_RGBA)
    for i in range(len(pos)):
        if np.all(np.isfinite(pos[i])):
            add_sphere(scene, pos[i], ROOT_RADIUS_M if i == 0 else SPHERE_RADIUS_M, BODY_RGBA)


def decoration_budget(n_bodies: int) -> int:
    """Return how many scene geoms the decorations of one frame may need (skeleton, 2 poses, line)."""
    return 2 * n_bodies + 2 * 3 + 1 + 8
