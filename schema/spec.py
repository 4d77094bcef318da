"""What a log holds (LogSpec), how its datasets are chunked and batched, and the gate entropy.

Fixed when a log is created: HDF5 SWMR cannot add datasets while writing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np

from moetape.schema import layout
from moetape.schema.errors import LogFormatError

CHUNK_TARGET_BYTES = 512 * 1024
BATCH_TARGET_BYTES = 16 * 1024 * 1024
MAX_BATCH_STEPS = 256
MAX_CHUNK_ROWS = 1024
ENTROPY_EPS = 1e-8


@dataclass(frozen=True)
class LogSpec:
    """Sizes and names of a log; fixed when the file is created (datasets cannot be added later)."""

    n_envs: int
    obs_dim: int
    action_dim: int
    joint_names: List[str]
    body_names: List[str]
    expert_names: List[str] = field(default_factory=lambda: ["base", "arm"])
    term_names: List[str] = field(default_factory=list)
    metrics: Dict[str, Tuple[Tuple[int, ...], str]] = field(default_factory=dict)
    sim_dt_s: float = 0.005
    decimation: int = 4
    frames_per_step: int = 1
    backend: str = "mujoco"

    @property
    def sizes(self) -> Dict[str, int]:
        """Return the symbol sizes of layout.field_specs."""
        return {
            "E": self.n_envs,
            "O": self.obs_dim,
            "A": self.action_dim,
            "K": len(self.expert_names),
            "J": len(self.joint_names),
            "B": len(self.body_names),
        }

    def datasets(self) -> Dict[str, Tuple[Tuple[int, ...], str]]:
        """Return every dataset path -> (row shape, dtype)."""
        return layout.field_specs(self.sizes, list(self.term_names), dict(self.metrics))

    def validate(self) -> None:
        """Raise LogFormatError if sizes or names are unusable."""
        problems = []
        for name in ("n_envs", "obs_dim", "action_dim", "decimation"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.frames_per_step not in (1, self.decimation):
            problems.append(
                f"frames_per_step must be 1 or decimation ({self.decimation}), got {self.frames_per_step}"
            )
        if len(self.expert_names) < 1:
            problems.append("at least one expert name is needed")
        for group, names in (("terms", self.term_names), ("metrics", list(self.metrics))):
            for n in names:  # "/" nests groups (legacy term names such as "task/reaching/pos_err")
                if not n or n != n.strip() or "" in n.split("/") or n.startswith("."):
                    problems.append(f"{group} name {n!r} is not a usable name")
                elif any(o.startswith(n + "/") for o in names):
                    problems.append(f"{group} name {n!r} is also a prefix of another name")
            if len(set(names)) != len(names):
                problems.append(f"{group} names repeat: {names}")
        if problems:
            raise LogFormatError("log spec: " + "; ".join(problems))


def gate_entropy(gate: np.ndarray) -> np.ndarray:
    """Return -sum_k w_k ln(w_k + 1e-8) over the last axis; gate float32 (..., K) -> float32 (...)."""
    g = np.asarray(gate, dtype=np.float32)
    return (-(g * np.log(g + np.float32(ENTROPY_EPS))).sum(axis=-1)).astype(np.float32)


def chunk_shape(
    row_shape: Tuple[int, ...],
    itemsize: int,
    target: int = CHUNK_TARGET_BYTES,
    max_rows: int = MAX_CHUNK_ROWS,
) -> Tuple[int, ...]:
    """Chunk a growable dataset: about ``target`` bytes, rows a power of two dividing ``max_rows``.

    ``max_rows`` is the writer's batch size (a power of two), so a full batch writes whole chunks
    and no chunk is rewritten by the next batch. Envs are split across chunks only when one row of
    all envs exceeds the target.
    """
    inner = int(np.prod(row_shape, dtype=np.int64)) * itemsize if row_shape else itemsize
    rows = pow2_floor(max(1, min(max_rows, MAX_CHUNK_ROWS, target // max(1, inner))))
    if not row_shape:
        return (rows,)
    per_env = max(1, inner // max(1, row_shape[0]))
    env_chunk = int(min(row_shape[0], max(1, target // (rows * per_env))))
    return (rows, env_chunk) + tuple(row_shape[1:])


def pow2_floor(n: int) -> int:
    """Return the largest power of two <= n (n >= 1)."""
    return 1 << (int(n).bit_length() - 1)
