"""The run's data types: the recording's configuration (RunConfig, resolve_frames), custom metrics,
the per-step display report, the --show_weights gate summary, and how a recording ended (RunResult).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from moetape.record.backend import StepResult
from moetape.schema.errors import InputError

FRAMES_CHOICES = ("auto", "substep", "policy")
POLICY_RATE_BACKENDS = ("warp",)
"""Backends whose ``--frames auto`` is one frame row per policy step: they run thousands of envs, where
substep rows (about 6.4 KB per env-step, 26 MB per policy step at 4096 envs) would swamp the disk."""


def resolve_frames(frames: str, backend: str) -> str:
    """Return the frame rate a run records: ``auto`` is ``policy`` on warp, ``substep`` elsewhere.

    Raises:
        InputError: ``frames`` is not one of FRAMES_CHOICES.
    """
    if frames not in FRAMES_CHOICES:
        raise InputError("--frames {}: expected one of {}".format(frames, ", ".join(FRAMES_CHOICES)))
    if frames != "auto":
        return frames
    return "policy" if backend in POLICY_RATE_BACKENDS else "substep"


@dataclass(frozen=True)
class RunConfig:
    """Everything a recording is made from; stored as JSON in the log (``config_json``)."""

    moe_ckpt_path: str
    trajectory_file_path: str
    out: str
    base_ckpt_path: Optional[str] = None
    arm_ckpt_path: Optional[str] = None
    device: str = "cpu"
    num_envs: int = 1
    num_steps: int = 1000
    backend: str = "mujoco"
    robot: Optional[str] = None
    seed: Optional[int] = None  # None: 0 on MuJoCo, the training's (config.pkl) on Isaac Gym
    flush_seconds: float = 1.0
    frames: str = "auto"  # resolve_frames: policy on warp, substep elsewhere; the log stores the result
    visualize: bool = False
    show_weights: bool = False
    record_video: bool = False
    force: bool = False
    keep_terminations: bool = False  # Isaac Gym: the training's terminate_after_contacts_on
    codebase: Optional[str] = None  # Isaac Gym: folder holding the training code's legged_gym/


@dataclass(frozen=True)
class Metric:
    """A custom per-step metric, declared before the run (the legacy ``state_logs["custom_metric"]``).

    ``compute(backend, result)`` returns an array of shape (E, *shape) for every step, from the
    backend's state after the step and the step's StepResult.
    """

    name: str
    compute: Callable[[Any, StepResult], np.ndarray]
    shape: Tuple[int, ...] = ()
    dtype: str = "float32"


@dataclass
class GateSummary:
    """Running figures of the legacy --show_weights summary (env-0 weights, env-mean entropy)."""

    n: int = 0
    sums: Optional[np.ndarray] = None
    sq_sums: Optional[np.ndarray] = None
    above_half: Optional[np.ndarray] = None
    entropy_sum: float = 0.0

    def update(self, gate: np.ndarray, entropy: np.ndarray) -> None:
        w = gate[0].astype(np.float64)
        if self.sums is None:
            self.sums = np.zeros_like(w)
            self.sq_sums = np.zeros_like(w)
            self.above_half = np.zeros_like(w)
        self.sums += w
        self.sq_sums += w * w  # type: ignore[operator]
        self.above_half += w > 0.5  # type: ignore[operator]
        self.entropy_sum += float(entropy.mean())
        self.n += 1

    def result(self, names: Sequence[str]) -> Dict[str, Any]:
        if self.n == 0 or self.sums is None or self.above_half is None:
            return {"steps": 0}
        mean = self.sums / self.n
        std = np.sqrt(np.maximum(self.sq_sums / self.n - mean**2, 0.0))  # type: ignore[operator]
        return {
            "steps": self.n,
            "experts": {
                n: {
                    "mean": float(mean[k]),
                    "std": float(std[k]),
                    "usage_above_0_5": float(self.above_half[k] / self.n),
                }
                for k, n in enumerate(names)
            },
            "mean_entropy": self.entropy_sum / self.n,
        }


@dataclass
class StepReport:
    """What the display callback sees after each step."""

    step: int
    num_steps: int
    gate: np.ndarray  # float32 (E, K)
    entropy: np.ndarray  # float32 (E,)
    steps_per_s: float
    n_committed: int


@dataclass
class RunResult:
    """How a recording ended."""

    log_path: str
    steps: int
    status: str
    seconds: float
    summary: Dict[str, Any] = field(default_factory=dict)


def summary_lines(summary: Dict[str, Any]) -> List[str]:
    """Format the --show_weights end summary like the legacy script's."""
    if not summary.get("steps"):
        return ["no steps recorded"]
    lines = [
        "Gate weight summary over {} steps (env 0; entropy averaged over envs):".format(summary["steps"])
    ]
    for name, e in summary["experts"].items():
        lines.append(
            "  {:>6}: mean {:.3f} +/- {:.3f}, usage (>0.5) {:.1f}%".format(
                name, e["mean"], e["std"], 100 * e["usage_above_0_5"]
            )
        )
    k = len(summary["experts"])
    lines.append(
        "  mean entropy: {:.4f} (max ln {} = {:.3f})".format(summary["mean_entropy"], k, math.log(max(k, 1)))
    )
    return lines
