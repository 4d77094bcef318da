"""Vectorised pose maths for the backends (numpy only) and the EE target table.

Quaternions are float64 (..., 4) **wxyz** (MuJoCo's order) unless a name says ``xyzw``; rotation
matrices are (..., 3, 3) and map body-frame vectors to the world frame.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from moetape.record.backend import FUTURE_TARGET_OFFSETS_S
from moetape.record.trajectory import Trajectories

__all__ = [
    "FUTURE_TARGET_OFFSETS_S",
    "TargetTable",
    "matrix_to_quat_xyzw",
    "quat_angle",
    "quat_mul",
    "quat_to_mat",
    "right_mul_matrix",
    "rotate",
    "rotate_inv",
    "rotvec_to_quat",
    "wxyz_to_xyzw",
    "yaw",
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


def _quat_to_mat_table() -> np.ndarray:
    """(16, 9): row-major R = (q outer q).reshape(16) @ table, for unit wxyz quaternions q."""
    t = np.zeros((4, 4, 9))
    w, x, y, z = range(4)
    for col, square_signs in ((0, (1, 1, -1, -1)), (4, (1, -1, 1, -1)), (8, (1, -1, -1, 1))):
        for a, sign in enumerate(square_signs):  # diagonal: w^2 + x^2 - y^2 - z^2 and its kin
            t[a, a, col] = sign
    for col, a, b, sign in (  # off-diagonal: 2 (a b +- c d), each product taken as q_a q_b + q_b q_a
        (1, x, y, 1), (1, w, z, -1), (2, x, z, 1), (2, w, y, 1),
        (3, x, y, 1), (3, w, z, 1), (5, y, z, 1), (5, w, x, -1),
        (6, x, z, 1), (6, w, y, -1), (7, y, z, 1), (7, w, x, 1),
    ):  # fmt: skip
        t[a, b, col] = t[b, a, col] = sign
    return t.reshape(16, 9)


_QUAT_TO_MAT = _quat_to_mat_table()


def quat_to_mat(q: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) of unit wxyz quaternions (..., 4).

    Every entry is a quadratic form of q, so all of them are one product of q's outer product with
    a constant table: a few numpy calls instead of some thirty, which matters in the per-step loop.
    """
    outer = (q[..., :, None] * q[..., None, :]).reshape(-1, 16)
    return (outer @ _QUAT_TO_MAT).reshape(q.shape[:-1] + (3, 3))


def rotate(mat: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate body-frame vectors v (..., 3) to the world frame with rotation matrices mat (..., 3, 3)."""
    return np.einsum("...ij,...j->...i", mat, v)


def rotate_inv(mat: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate world vectors v (E, 3) into the body frame of rotation matrices mat (E, 3, 3)."""
    return np.einsum("eji,ej->ei", mat, v)


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


def quat_angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle (rad, in [0, pi]) of the rotation between unit wxyz quaternions a and b (..., 4)."""
    dot = np.abs(np.einsum("...i,...i->...", a, b))
    return 2.0 * np.arccos(np.clip(dot, 0.0, 1.0))


def yaw(q: np.ndarray) -> np.ndarray:
    """Heading angle (rad, ZYX Euler yaw) of wxyz quaternions (..., 4)."""
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def rotvec_to_quat(v: np.ndarray) -> np.ndarray:
    """Unit wxyz quaternions (..., 4) of rotation vectors (..., 3), radians."""
    v = np.asarray(v, np.float64)
    angle = np.linalg.norm(v, axis=-1, keepdims=True)
    small = angle < 1e-8
    scale = np.where(small, 0.5 - angle**2 / 48.0, np.sin(angle / 2.0) / np.where(small, 1.0, angle))
    return np.concatenate([np.cos(angle / 2.0), v * scale], axis=-1)


class TargetTable:
    """EE target poses of every trajectory episode, xy-centred on the world origin, looked up in time.

    Positions: each episode's mean xy is subtracted (z kept). Orientations: rotation vectors become
    wxyz quaternions made sign-continuous along time, so interpolation (normalised lerp between the
    two neighbouring 200 Hz samples) never takes the long way round. Times past the end hold the last
    sample; negative times hold the first.
    """

    def __init__(self, trajectories: Trajectories) -> None:
        pos = np.asarray(trajectories.ee_pos, np.float64)
        if pos.ndim != 3 or pos.shape[-1] != 3 or pos.shape[1] < 1:
            raise ValueError(f"trajectories.ee_pos: shape {pos.shape}, expected (N, T, 3) with T >= 1")
        pos = pos.copy()
        pos[..., :2] -= pos[..., :2].mean(axis=1, keepdims=True)
        quat = rotvec_to_quat(trajectories.ee_axis_angle)
        flip = np.sum(quat[:, 1:] * quat[:, :-1], axis=-1) < 0  # (N, T-1)
        sign = np.where(np.cumsum(flip, axis=1) % 2 == 1, -1.0, 1.0)
        quat[:, 1:] *= sign[..., None]
        self.dt_s = float(trajectories.dt_s)
        self._n_episodes, self._n_samples = pos.shape[:2]
        # float64 (N * (T + 1), 7): one row per sample, pose = (pos, wxyz quat), and each episode's
        # last sample once more, so that the right-hand neighbour of any sample is the next row.
        poses = np.concatenate([pos, quat], axis=-1)
        self._rows = np.concatenate([poses, poses[:, -1:]], axis=1).reshape(-1, 7)

    @property
    def n_episodes(self) -> int:
        return int(self._n_episodes)

    def lookup(self, episodes: np.ndarray, times_s: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Target poses of trajectory ``episodes`` int (E,) at ``times_s`` float (E, K).

        Returns:
            pos float64 (E, K, 3) world m, quat float64 (E, K, 4) wxyz (views of one array).
        """
        n_t = self._n_samples
        f = np.asarray(times_s, np.float64) / self.dt_s
        np.minimum(np.maximum(f, 0.0, out=f), n_t - 1, out=f)  # np.clip: same, but slower on small arrays
        i0 = f.astype(np.int64)  # floor, f >= 0
        w = (f - i0)[..., None]  # 0 at the last sample, whose neighbour row repeats it
        row0 = np.asarray(episodes, np.int64)[:, None] * (n_t + 1) + i0  # rows of self._rows
        pose = np.take(self._rows, row0, axis=0)
        pose += (np.take(self._rows, row0 + 1, axis=0) - pose) * w
        quat = pose[..., 3:]
        quat /= np.sqrt(np.einsum("...i,...i->...", quat, quat))[..., None]
        return pose[..., :3], quat
