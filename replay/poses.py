"""EE pose errors and frame axes from positions and (x, y, z, w) quaternions, vectorised (numpy only).

Used by the Rerun export (``rerun_export``, ``rerun_fields``); no rerun import here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def pos_error(ee: npt.NDArray[np.float32], target: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Return |target - ee| per row, m: float64 (n,)."""
    return np.linalg.norm(np.asarray(target, np.float64) - np.asarray(ee, np.float64), axis=-1)


def rot_error(q_ee: npt.NDArray[np.float32], q_target: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Return the rotation angle between two orientations (x, y, z, w) per row, rad in [0, pi]."""
    a = np.asarray(q_ee, np.float64)
    b = np.asarray(q_target, np.float64)
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    dot = np.abs(np.sum(a * b, axis=-1)) / np.maximum(na * nb, 1e-12)
    return 2.0 * np.arccos(np.clip(dot, 0.0, 1.0))


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
