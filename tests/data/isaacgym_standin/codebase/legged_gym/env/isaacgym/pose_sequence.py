"""SequenceSampler: the EE target sequences of a trajectory file, drawn per reset from a seed."""

from __future__ import annotations

import pickle

import numpy as np
import torch


def _axis_angle_to_matrix(v: np.ndarray) -> np.ndarray:
    angle = np.linalg.norm(v, axis=-1, keepdims=True)
    axis = v / np.maximum(angle, 1e-12)
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    c, s = np.cos(angle[..., 0]), np.sin(angle[..., 0])
    C = 1 - c
    return np.stack(
        [
            np.stack([c + x * x * C, x * y * C - z * s, x * z * C + y * s], -1),
            np.stack([y * x * C + z * s, c + y * y * C, y * z * C - x * s], -1),
            np.stack([z * x * C - y * s, z * y * C + x * s, c + z * z * C], -1),
        ],
        -2,
    )


class SequenceSampler:
    def __init__(self, file_path: str, episode_length: int, dt: float, device: str = "cpu"):
        with open(file_path, "rb") as f:
            episodes = pickle.load(f)
        self.pos = [np.asarray(e["ee_pos"], np.float64) for e in episodes]
        self.rot = [_axis_angle_to_matrix(np.asarray(e["ee_axis_angle"], np.float64)) for e in episodes]
        self.episode_length = int(episode_length)
        self.dt = float(dt)
        self.device = device

    def sample(self, seed: int, batch_size: int):
        rs = np.random.RandomState(seed % (2**32 - 1))
        pos = np.zeros((batch_size, self.episode_length, 3))
        rot = np.zeros((batch_size, self.episode_length, 3, 3))
        for b in range(batch_size):
            k = rs.randint(len(self.pos))
            idx = np.minimum(np.arange(self.episode_length), len(self.pos[k]) - 1)
            pos[b], rot[b] = self.pos[k][idx], self.rot[k][idx]
        return torch.tensor(pos, dtype=torch.float32), torch.tensor(rot, dtype=torch.float32)
