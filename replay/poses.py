"""EE pose errors and frame axes from positions and (x, y, z, w) quaternions, vectorised (numpy only).

Used by the Rerun export (``rerun_export``, ``rerun_fields``); no rerun import here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def pos_error(ee: npt.NDArray[np.float32], target: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Return |target - ee| per row, m: float32 (...,) for positions (..., 3)."""
    d = np.asarray(target, np.float32) - np.asarray(ee, np.float32)
    return np.sqrt(d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2])


def rot_error(q_ee: npt.NDArray[np.float32], q_target: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Return the rotation angle between two orientations (x, y, z, w) per row, rad in [0, pi]: float32.

    The angle of the relative rotation conj(a) * b = (v, w): 2 atan2(|v|, |w|). It needs no unit
    quaternions (both parts scale alike) and stays accurate for small angles in float32, where
    2 arccos(|a . b|) does not. Two zero quaternions give 0.
    """
    a = np.asarray(q_ee, np.float32)
    b = np.asarray(q_target, np.float32)
    ax, ay, az, aw = a[..., 0], a[..., 1], a[..., 2], a[..., 3]
    bx, by, bz, bw = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    w = aw * bw + ax * bx + ay * by + az * bz
    vx = aw * bx - bw * ax - (ay * bz - az * by)
    vy = aw * by - bw * ay - (az * bx - ax * bz)
    vz = aw * bz - bw * az - (ax * by - ay * bx)
    return 2.0 * np.arctan2(np.sqrt(vx * vx + vy * vy + vz * vz), np.abs(w))


def frame_axes(q_xyzw: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Return the x, y, z axes (the columns of R(q)) of orientations (..., 4) (x, y, z, w): (..., 3, 3), float32.

    ``out[..., k, :]`` is axis k in the world. The quaternions need not be unit; a zero one is the identity.
    """
    q = np.asarray(q_xyzw, np.float32)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    n2 = x * x + y * y + z * z + w * w
    s = np.divide(np.float32(2.0), n2, out=np.zeros_like(n2), where=n2 > 1e-12)
    xx, yy, zz = s * x * x, s * y * y, s * z * z
    xy, xz, yz = s * x * y, s * x * z, s * y * z
    wx, wy, wz = s * w * x, s * w * y, s * w * z
    out = np.empty(q.shape[:-1] + (3, 3), np.float32)
    out[..., 0, 0], out[..., 0, 1], out[..., 0, 2] = 1 - yy - zz, xy + wz, xz - wy
    out[..., 1, 0], out[..., 1, 1], out[..., 1, 2] = xy - wz, 1 - xx - zz, yz + wx
    out[..., 2, 0], out[..., 2, 1], out[..., 2, 2] = xz + wy, yz - wx, 1 - xx - yy
    return out


def rotate_inverse(q_xyzw: npt.NDArray[Any], v: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Return ``v`` (..., 3) in the frame of the orientations ``q_xyzw`` (..., 4): R(q)^T v, float32."""
    return np.einsum("...kj,...j->...k", frame_axes(q_xyzw), np.asarray(v, np.float32))
