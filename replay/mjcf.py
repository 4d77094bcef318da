"""Read the visual geoms of an MJCF robot model with the standard-library XML parser (no mujoco).

Replay draws the robot stored in a log (``Log.model_xml``) without a simulator: every geom becomes
a primitive in its body's frame, and the body's world pose comes from the log's frames/ rows. This
module turns the MJCF text into that list of primitives.

What is understood: ``<compiler angle eulerseq>``; ``<default>`` classes (nested, inherited, the
``class`` of a geom and the ``childclass`` of a body or frame); ``<material rgba>``; ``<frame>``
poses; geom ``type`` (plane, sphere, capsule, ellipsoid, cylinder, box), ``size``, ``fromto``,
``pos`` and the orientations ``quat``, ``axisangle``, ``euler``, ``xyaxes`` and ``zaxis``; ``rgba``;
``group`` (groups 0-2 are drawn, as in MuJoCo's viewer). A plane of size 0 is infinite in MuJoCo:
it is counted in ``RobotModel.infinite_planes`` and left to the viewer's ground grid. Mesh, height-field and SDF geoms need
files the log does not hold: they are counted in ``RobotModel.skipped`` and not drawn. Geoms of
``<worldbody>`` itself (the floor) are world-fixed (body ``""``).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import numpy.typing as npt

from moetape.schema.errors import LogFormatError

PRIMITIVES = ("plane", "sphere", "capsule", "ellipsoid", "cylinder", "box")
DEFAULT_RGBA = (0.5, 0.5, 0.5, 1.0)
VISIBLE_GROUPS = (0, 1, 2)


@dataclass
class Geom:
    """One primitive in its body's frame.

    kind: one of PRIMITIVES. pos float64 (3,) m and quat_xyzw float64 (4,): the geom frame in the
    body frame. size float64 (3,): sphere (r, 0, 0); capsule and cylinder (r, half length, 0), axis =
    geom z; ellipsoid and box half sizes; plane (half x, half y, 0). rgba float (4,) in 0-1.
    """

    body: str
    kind: str
    pos: npt.NDArray[np.float64]
    quat_xyzw: npt.NDArray[np.float64]
    size: npt.NDArray[np.float64]
    rgba: Tuple[float, float, float, float]
    name: str = ""


@dataclass
class RobotModel:
    """The drawable geoms of a model, grouped by body name ("" = world-fixed)."""

    name: str
    geoms: List[Geom] = field(default_factory=list)
    bodies: List[str] = field(default_factory=list)
    skipped: Dict[str, int] = field(default_factory=dict)
    infinite_planes: int = 0

    def by_body(self) -> Dict[str, List[Geom]]:
        out: Dict[str, List[Geom]] = {}
        for g in self.geoms:
            out.setdefault(g.body, []).append(g)
        return out


# ---------------------------------------------------------------------------------------- rotations
def quat_mul(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Return the product a * b of quaternions given as w, x, y, z."""
    w1, x1, y1, z1 = np.asarray(a, dtype=np.float64)
    w2, x2, y2, z2 = np.asarray(b, dtype=np.float64)
    return np.array(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ]
    )


def quat_rotate(q_wxyz: npt.ArrayLike, v: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Rotate the vector ``v`` by the unit quaternion ``q_wxyz``."""
    q = np.asarray(q_wxyz, dtype=np.float64)
    p = np.concatenate([[0.0], np.asarray(v, dtype=np.float64)])
    conj = q * np.array([1.0, -1.0, -1.0, -1.0])
    return quat_mul(quat_mul(q, p), conj)[1:]


def _axis_angle(axis: npt.ArrayLike, angle: float) -> npt.NDArray[np.float64]:
    a = np.asarray(axis, dtype=np.float64)
    n = float(np.linalg.norm(a))
    if n < 1e-12:
        return np.array([1.0, 0.0, 0.0, 0.0])
    a = a / n
    return np.concatenate([[math.cos(angle / 2)], math.sin(angle / 2) * a])


def _mat_to_quat(m: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Return w, x, y, z of a rotation matrix (columns = the frame's axes)."""
    tr = float(np.trace(m))
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    out = np.array(q)
    return out / np.linalg.norm(out)


def _z_to(vec: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Return the minimal rotation (w, x, y, z) taking +z to ``vec``."""
    v = np.asarray(vec, dtype=np.float64)
    n = float(np.linalg.norm(v))
    if n < 1e-12:
        return np.array([1.0, 0.0, 0.0, 0.0])
    v = v / n
    z = np.array([0.0, 0.0, 1.0])
    c = float(np.dot(z, v))
    if c < -1 + 1e-12:
        return np.array([0.0, 1.0, 0.0, 0.0])
    axis = np.cross(z, v)
    q = np.concatenate([[1.0 + c], axis])
    return q / np.linalg.norm(q)


def wxyz_to_xyzw(q: npt.ArrayLike) -> npt.NDArray[np.float64]:
    a = np.asarray(q, dtype=np.float64)
    return np.array([a[1], a[2], a[3], a[0]])


# ---------------------------------------------------------------------------------------- parsing
class _Ctx:
    def __init__(self, root: ET.Element, where: str) -> None:
        self.where = where
        compiler = root.find("compiler")
        angle = compiler.get("angle", "degree") if compiler is not None else "degree"
        self.angle_scale = math.pi / 180.0 if angle == "degree" else 1.0
        self.eulerseq = compiler.get("eulerseq", "xyz") if compiler is not None else "xyz"
        self.classes: Dict[str, Dict[str, str]] = {}
        for top in root.findall("default"):
            self._read_defaults(top, {}, "main")
        self.materials: Dict[str, str] = {}
        for asset in root.findall("asset"):
            for mat in asset.findall("material"):
                if mat.get("name") and mat.get("rgba"):
                    self.materials[mat.get("name", "")] = mat.get("rgba", "")

    def _read_defaults(self, node: ET.Element, inherited: Dict[str, str], fallback: str) -> None:
        name = node.get("class", fallback)
        attrs = dict(inherited)
        geom = node.find("geom")
        if geom is not None:
            attrs.update(geom.attrib)
        self.classes[name] = attrs
        for child in node.findall("default"):
            self._read_defaults(child, attrs, name)

    def floats(self, text: Optional[str], n: int, what: str) -> npt.NDArray[np.float64]:
        try:
            vals = [float(x) for x in (text or "").split()]
        except ValueError:
            raise LogFormatError(
                f"{self.where}: the stored robot model has a bad {what} {text!r}; expected numbers."
            ) from None
        return np.array((vals + [0.0] * n)[:n] if len(vals) < n else vals[:n])

    def orientation(self, a: Dict[str, str]) -> npt.NDArray[np.float64]:
        """Return the w, x, y, z orientation an element's attributes give (identity if none)."""
        if "quat" in a:
            q = self.floats(a["quat"], 4, "quat")
            n = float(np.linalg.norm(q))
            return q / n if n > 1e-12 else np.array([1.0, 0.0, 0.0, 0.0])
        if "axisangle" in a:
            v = self.floats(a["axisangle"], 4, "axisangle")
            return _axis_angle(v[:3], v[3] * self.angle_scale)
        if "euler" in a:
            e = self.floats(a["euler"], 3, "euler") * self.angle_scale
            q = np.array([1.0, 0.0, 0.0, 0.0])
            for ch, ang in zip(self.eulerseq, e):
                axis = {"x": [1, 0, 0], "y": [0, 1, 0], "z": [0, 0, 1]}[ch.lower()]
                r = _axis_angle(axis, float(ang))
                q = quat_mul(q, r) if ch.islower() else quat_mul(r, q)
            return q
        if "xyaxes" in a:
            v = self.floats(a["xyaxes"], 6, "xyaxes")
            x = v[:3] / max(float(np.linalg.norm(v[:3])), 1e-12)
            y = v[3:] - np.dot(v[3:], x) * x
            y = y / max(float(np.linalg.norm(y)), 1e-12)
            return _mat_to_quat(np.stack([x, y, np.cross(x, y)], axis=1))
        if "zaxis" in a:
            return _z_to(self.floats(a["zaxis"], 3, "zaxis"))
        return np.array([1.0, 0.0, 0.0, 0.0])


def _geom(ctx: _Ctx, el: ET.Element, cls: str, body: str, frame: Tuple[np.ndarray, np.ndarray]) -> Geom:
    a = dict(ctx.classes.get(el.get("class", cls), ctx.classes.get("main", {})))
    a.update(el.attrib)
    kind = a.get("type", "sphere")
    size = ctx.floats(a.get("size"), 3, "geom size")
    if "fromto" in a and kind in ("capsule", "cylinder", "box", "ellipsoid"):
        ft = ctx.floats(a["fromto"], 6, "fromto")
        p0, p1 = ft[:3], ft[3:]
        pos = (p0 + p1) / 2
        quat = _z_to(p1 - p0)
        half = float(np.linalg.norm(p1 - p0)) / 2
        size = (
            np.array([size[0], half, 0.0])
            if kind in ("capsule", "cylinder")
            else np.array([size[0], size[1] if size[1] else size[0], half])
        )
    else:
        pos = ctx.floats(a.get("pos"), 3, "geom pos")
        quat = ctx.orientation(a)
    if kind == "plane":
        size = np.array([size[0], size[1], 0.0])
    fpos, fquat = frame
    pos = fpos + quat_rotate(fquat, pos)
    quat = quat_mul(fquat, quat)
    if "rgba" in a:
        rgba = ctx.floats(a["rgba"], 4, "rgba")
    elif a.get("material") in ctx.materials:
        rgba = ctx.floats(ctx.materials[a["material"]], 4, "material rgba")
    else:
        rgba = np.array(DEFAULT_RGBA)
    return Geom(
        body,
        kind,
        pos,
        wxyz_to_xyzw(quat),
        size,
        (float(rgba[0]), float(rgba[1]), float(rgba[2]), float(rgba[3])),
        a.get("name", ""),
    )


def _group(ctx: _Ctx, el: ET.Element, cls: str) -> int:
    a = dict(ctx.classes.get(el.get("class", cls), {}))
    a.update(el.attrib)
    try:
        return int(a.get("group", "0"))
    except ValueError:
        return 0


def _walk(
    ctx: _Ctx,
    node: ET.Element,
    body: str,
    cls: str,
    frame: Tuple[np.ndarray, np.ndarray],
    model: RobotModel,
) -> None:
    for el in node:
        if el.tag == "geom":
            kind = dict(ctx.classes.get(el.get("class", cls), {}), **el.attrib).get("type", "sphere")
            if kind not in PRIMITIVES:
                model.skipped[kind] = model.skipped.get(kind, 0) + 1
                continue
            if _group(ctx, el, cls) in VISIBLE_GROUPS:
                geom = _geom(ctx, el, cls, body, frame)
                if kind == "plane" and not (geom.size[0] > 0 and geom.size[1] > 0):
                    model.infinite_planes += 1  # drawn by viewers as their ground grid
                    continue
                model.geoms.append(geom)
        elif el.tag == "body":
            name = el.get("name", "")
            model.bodies.append(name)
            identity = (np.zeros(3), np.array([1.0, 0.0, 0.0, 0.0]))
            _walk(ctx, el, name, el.get("childclass", cls), identity, model)
        elif el.tag == "frame":
            fpos = ctx.floats(el.get("pos"), 3, "frame pos")
            fquat = ctx.orientation(el.attrib)
            pos = frame[0] + quat_rotate(frame[1], fpos)
            _walk(ctx, el, body, el.get("childclass", cls), (pos, quat_mul(frame[1], fquat)), model)


def parse_mjcf(xml: str, *, where: str = "model/mjcf") -> RobotModel:
    """Return the drawable geoms of an MJCF model, each in its body's frame.

    Raises:
        LogFormatError: the text is not XML or has no <mujoco><worldbody>.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise LogFormatError(f"{where}: the stored robot model is not valid XML ({e}).") from None
    world = root.find("worldbody")
    if root.tag != "mujoco" or world is None:
        raise LogFormatError(
            f"{where}: the stored robot model is not MJCF (expected <mujoco> with a <worldbody>, got <{root.tag}>)."
        )
    ctx = _Ctx(root, where)
    model = RobotModel(root.get("model", ""))
    _walk(ctx, world, "", "main", (np.zeros(3), np.array([1.0, 0.0, 0.0, 0.0])), model)
    return model
