"""The rollout loops: one policy step for every env at a time, from the backend into the log writer.

``_loop`` runs a host Backend (observations and actions as numpy arrays); ``_device_loop`` runs a
DeviceBackend, the policy on the device, each step's host copy overlapping the next step's compute.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from moetape.record.backend import Backend, BackendInfo, StepResult
from moetape.record.run_config import GateSummary, Metric, RunConfig, RunResult, StepReport
from moetape.schema import layout
from moetape.schema.writer import LogSpec, LogWriter, gate_entropy


def log_spec(
    info: BackendInfo, expert_names: Sequence[str], *, substep: bool, metrics: Sequence[Metric] = ()
) -> LogSpec:
    """Return the LogSpec of a rollout of this backend: frames at every substep or at the policy rate."""
    return LogSpec(
        n_envs=info.n_envs,
        obs_dim=info.obs_dim,
        action_dim=info.action_dim,
        joint_names=list(info.joint_names),
        body_names=list(info.body_names),
        expert_names=list(expert_names),
        term_names=list(info.term_names),
        metrics={m.name: (tuple(m.shape), m.dtype) for m in metrics},
        sim_dt_s=info.sim_dt_s,
        decimation=info.decimation,
        frames_per_step=info.decimation if substep else 1,
        backend=info.name,
    )


def step_row(
    obs: np.ndarray,
    action: np.ndarray,
    gate: np.ndarray,
    entropy: np.ndarray,
    result: StepResult,
    backend: Any,
    metrics: Sequence[Metric],
) -> Dict[str, np.ndarray]:
    """One policy step's per-env fields, keyed by their log paths under ``steps/``."""
    step: Dict[str, np.ndarray] = {
        "obs": obs,
        "action": action,
        "gate": gate,
        "gate_entropy": entropy,
        "reward": result.reward,
        "done": result.done,
        "timeout": result.timeout,
    }
    step.update(result.pre)
    for name, value in result.terms.items():
        step["terms/" + name] = value
    for m in metrics:
        step["metrics/" + m.name] = np.asarray(m.compute(backend, result), dtype=m.dtype)
    return step


def _loop(
    cfg: RunConfig,
    backend: Backend,
    policy: Any,
    writer: LogWriter,
    metrics: Sequence[Metric],
    substep: bool,
    on_step: Optional[Callable[[StepReport], None]],
    viewer: Any,
    started: Callable[[], None],
) -> RunResult:
    """Run the steps; the writer's context marks the end status (clean, interrupted, failed).

    ``started`` is called once the first step is in the writer (the run folder then drops the run
    it replaces). The result's step count is the writer's committed count after it closed.
    """
    summary = GateSummary()
    status = layout.STATUS_CLEAN
    t0 = time.monotonic()
    s = 0
    with writer:
        try:
            obs = backend.reset()
            for s in range(cfg.num_steps):
                action, gate = policy.policy_step(obs)
                result = backend.step(action, substep_frames=substep, frames_out=writer.frame_rows())
                entropy = gate_entropy(gate)
                step = step_row(obs, action, gate, entropy, result, backend, metrics)
                writer.append(step, result.frames)
                if s == 0:
                    started()
                summary.update(gate, entropy)
                obs = result.obs
                if viewer is not None:
                    if not viewer.is_running():
                        raise KeyboardInterrupt
                    viewer.sync()
                    ahead = (s + 1) * backend.info.sim_dt_s * backend.info.decimation - (
                        time.monotonic() - t0
                    )
                    if ahead > 0:  # show the motion at real-time speed, as it would run on the robot
                        time.sleep(ahead)
                if on_step is not None:
                    elapsed = time.monotonic() - t0
                    on_step(
                        StepReport(
                            s, cfg.num_steps, gate, entropy, (s + 1) / max(elapsed, 1e-9), writer.n_committed
                        )
                    )
            s = cfg.num_steps
        except KeyboardInterrupt:
            status = layout.STATUS_INTERRUPTED
            writer.close(status)
        finally:
            if viewer is not None:
                viewer.close()
    return RunResult(
        writer.path,
        writer.n_committed,  # what the log holds, not what the loop went through
        status,
        time.monotonic() - t0,
        summary.result(list(writer.spec.expert_names)),
    )


class _Launched:
    """A step launched on a DeviceBackend and not yet appended: its index, its PendingStep, and where
    its observation row comes from (the reset's, or the previous step's result, once waited)."""

    __slots__ = ("step", "pending", "source")

    def __init__(self, step: int, pending: Any, source: Any) -> None:
        self.step = step
        self.pending = pending
        self.source = source  # np.ndarray, or the previous _Launched

    def obs(self) -> np.ndarray:
        if isinstance(self.source, _Launched):
            self.source = self.source.pending.wait().obs  # waited already: no device wait here
        return self.source  # type: ignore[no-any-return]


def _device_loop(
    cfg: RunConfig,
    backend: Any,
    policy: Any,
    writer: LogWriter,
    metrics: Sequence[Metric],
    substep: bool,
    on_step: Optional[Callable[[StepReport], None]],
    started: Callable[[], None],
) -> RunResult:
    """``_loop`` for a DeviceBackend (MuJoCo Warp): the policy runs on the observation tensor on the
    device and its action tensor goes back to the backend, with no host round trip.

    Step t + 1 is launched before step t is waited for and appended, so step t's copy to the host
    (pinned memory, a copy stream) overlaps step t + 1's compute. The step's one synchronisation
    point is ``PendingStep.wait()`` in ``append``: the log's rows, then the writer's batch rows.
    With metrics each step is appended before the next is launched (a metric reads the backend's
    state after its own step). Ctrl-C appends the launched steps not yet in the log, then closes it.
    """
    summary = GateSummary()
    status = layout.STATUS_CLEAN
    t0 = time.monotonic()
    ahead = 0 if metrics else 1  # steps launched past the one being appended
    flight: List[_Launched] = []

    def append(item: _Launched) -> None:
        result = item.pending.wait(writer.frame_rows())
        gate = result.kept["gate"]
        entropy = gate_entropy(gate)
        step = step_row(item.obs(), result.kept["action"], gate, entropy, result, backend, metrics)
        writer.append(step, result.frames)
        if item.step == 0:
            started()
        summary.update(gate, entropy)
        if on_step is not None:
            elapsed = time.monotonic() - t0
            on_step(
                StepReport(
                    item.step,
                    cfg.num_steps,
                    gate,
                    entropy,
                    (item.step + 1) / max(elapsed, 1e-9),
                    writer.n_committed,
                )
            )

    with writer:
        try:
            source: Any = backend.reset()
            for s in range(cfg.num_steps):
                action, gate = policy.policy_step_tensor(backend.obs_tensor)
                pending = backend.launch_step(
                    action, substep_frames=substep, keep={"action": action, "gate": gate}
                )
                source = _Launched(s, pending, source)
                flight.append(source)
                while len(flight) > ahead:
                    append(flight[0])
                    del flight[0]
            while flight:
                append(flight[0])
                del flight[0]
        except KeyboardInterrupt:
            status = layout.STATUS_INTERRUPTED
            for item in flight:  # launched before the interrupt: into the log with the rest
                if writer.n_appended == item.step:
                    append(item)
            writer.close(status)
    return RunResult(
        writer.path,
        writer.n_committed,
        status,
        time.monotonic() - t0,
        summary.result(list(writer.spec.expert_names)),
    )
