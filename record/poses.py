"""Vectorised pose maths for the backends (numpy only).

Quaternions are float64 (..., 4) **wxyz** (MuJoCo's order) unless a name says ``xyzw``; rotation
matrices are (..., 3, 3) and map body-frame vectors to the world frame.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = [
    "matrix_to_quat_xyzw",
    "quat_mul",
    "right_mul_matrix",
    "rotvec_to_quat",
    "wxyz_to_xyzw",
]


def wxyz_to_xyzw(q: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Reorder quaternions (..., 4) from wxyz to xyzw, into ``out`` (same shape, cast on the way) if
    given. Two slice copies: cheaper than a fancy index, which matters in the per-step loop."""
    if out is None:
        out = np.empty(q.shape, q.dtype)
    out[..., :3] = q[..., 1:]
    out[..., 3] = q[..., 0]
    return out


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of wxyz quaternions (..., 4), broadcast."""
    aw, ax, ay, az = a[..., 0], a[..., 1], a[..., 2], a[..., 3]
    bw, bx, by, bz = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def right_mul_matrix(b: np.ndarray) -> np.ndarray:
    """The (4, 4) matrix M with quat_mul(a, b) == a @ M for any a (..., 4): a fixed right factor."""
    return np.stack([quat_mul(e, b) for e in np.eye(4)])


def matrix_to_quat_xyzw(matrix: np.ndarray) -> np.ndarray:
    """Convert rotation matrices float (..., 3, 3) to unit quaternions float64 (..., 4), xyzw, w >= 0."""
    m = np.asarray(matrix, np.float64)
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # Shepperd: pick the largest of 4w^2, 4x^2, 4y^2, 4z^2 as the pivot for stability.
    cand = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    pivot = np.argmax(cand, axis=-1)
    s = np.sqrt(np.maximum(np.take_along_axis(cand, pivot[..., None], -1)[..., 0], 1e-300)) * 2
    w = np.where(pivot == 0, s / 4, 0.0)
    x = np.where(pivot == 1, s / 4, 0.0)
    y = np.where(pivot == 2, s / 4, 0.0)
    z = np.where(pivot == 3, s / 4, 0.0)
    d21, d02, d10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    s01, s02, s12 = m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1]
    x = np.where(pivot == 0, d21 / s, np.where(pivot == 2, s01 / s, np.where(pivot == 3, s02 / s, x)))
    y = np.where(pivot == 0, d02 / s, np.where(pivot == 1, s01 / s, np.where(pivot == 3, s12 / s, y)))
    z = np.where(pivot == 0, d10 / s, np.where(pivot == 1, s02 / s, np.where(pivot == 2, s12 / s, z)))
    w = np.where(pivot == 1, d21 / s, np.where(pivot == 2, d02 / s, np.where(pivot == 3, d10 / s, w)))
    q = np.stack([x, y, z, w], -1)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., 3:4] < 0, -q, q)


def rotvec_to_quat(v: np.ndarray) -> np.ndarray:
    """Unit wxyz quaternions (..., 4) of rotation vectors (..., 3), radians."""
    v = np.asarray(v, np.float64)
    angle = np.linalg.norm(v, axis=-1, keepdims=True)
    small = angle < 1e-8
    scale = np.where(small, 0.5 - angle**2 / 48.0, np.sin(angle / 2.0) / np.where(small, 1.0, angle))
    return np.concatenate([np.cos(angle / 2.0), v * scale], axis=-1)
