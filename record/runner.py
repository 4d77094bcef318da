"""The rollout loop: policy -> backend -> event log, one policy step for every env at a time.

For each step the gate weights and the action come from the same observation, before the step;
the backend then applies the action and reports what happened (see record/backend.py for the
timing contract). Rows go to the log's background writer; Ctrl-C ends the run cleanly with every
step flushed and the log marked "interrupted".

The loops themselves are in record/loop.py, the run's data types in record/run_config.py; both are
imported from here too.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shlex
import signal
import socket
import sys
import threading
from dataclasses import asdict
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from moetape.record.backend import Backend
from moetape.record.loop import _device_loop, _Launched, _loop, log_spec, step_row
from moetape.record.run_config import (
    FRAMES_CHOICES,
    POLICY_RATE_BACKENDS,
    GateSummary,
    Metric,
    RunConfig,
    RunResult,
    StepReport,
    resolve_frames,
    summary_lines,
)
from moetape.record.run_folder import LOG_NAME, RunFolder
from moetape.schema.errors import InputError
from moetape.schema.io import sha256_file
from moetape.schema.writer import LogWriter

__all__ = [  # the loops and the data types live in record/loop.py and record/run_config.py
    "FRAMES_CHOICES",
    "POLICY_RATE_BACKENDS",
    "GateSummary",
    "Metric",
    "RunConfig",
    "RunResult",
    "StepReport",
    "_Launched",
    "_device_loop",
    "_loop",
    "step_row",
    "build_backend",
    "check_inputs",
    "prepare_out",
    "provenance",
    "record",
    "resolve_device",
    "resolve_frames",
    "summary_lines",
]

DEVICE_PATTERN = re.compile(r"^(cpu|cuda|cuda:[0-9]+)$")


def resolve_device(requested: Optional[str], *, notice: Callable[[str], None]) -> str:
    """Return the torch device to use: the legacy default cuda:0 falls back to cpu with a notice.

    Raises:
        InputError: not a device name (cpu, cuda, cuda:N), or an explicitly requested CUDA device is
            not available.
    """
    device = requested or "cuda:0"
    if not DEVICE_PATTERN.match(device):
        raise InputError(
            f"--device {device}: not a device name; expected cpu, cuda or cuda:N (N = 0, 1, ...). Pass --device cpu"
        )
    if device == "cpu":
        return device
    import torch

    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if torch.cuda.is_available() and index < torch.cuda.device_count():
        return device
    if requested is None:
        notice("no CUDA device here: running the policy on cpu (pass --device to choose)")
        return "cpu"
    raise InputError(
        f"--device {device}: no such CUDA device here ({torch.cuda.device_count() if torch.cuda.is_available() else 0} visible); expected cpu or an available "
        "cuda:N. Pass --device cpu"
    )


def check_inputs(cfg: RunConfig) -> None:
    """Name every missing input file at once (and any folder given where a file is expected).

    Raises:
        InputError: one line listing each problem with the option that named it.
    """
    inputs = [
        ("--moe_ckpt_path", cfg.moe_ckpt_path),
        ("--trajectory_file_path", cfg.trajectory_file_path),
        ("--base_ckpt_path", cfg.base_ckpt_path),
        ("--arm_ckpt_path", cfg.arm_ckpt_path),
        ("--robot", cfg.robot),
    ]
    problems = []
    for option, path in inputs:
        if path is None:
            continue
        if os.path.isdir(path):
            problems.append(f"{path} ({option}) is a folder, expected a file")
        elif not os.path.exists(path):
            problems.append(f"{path} ({option}): no such file")
    if len(problems) == 1:
        raise InputError(problems[0] + ". Check the path")
    if problems:
        raise InputError(f"{len(problems)} input problems: " + "; ".join(problems) + ". Check the paths")


def prepare_out(out: str, *, force: bool) -> str:
    """Check that ``out`` can take a new recording, make the folder, and return the log path.

    Removes nothing: ``record`` replaces a finished run (with ``force``) once the new one starts.

    Raises:
        OutputExistsError: what RunFolder refuses (a file, a foreign folder, a live run, a
            finished run without ``force``).
    """
    RunFolder(out, force=force).check()
    os.makedirs(out, exist_ok=True)
    return os.path.join(out, LOG_NAME)


def _inputs(cfg: RunConfig) -> List[Optional[str]]:
    """The run's own input files (those inside the run folder stay there when it is replaced)."""
    ckpt_dir = os.path.dirname(os.path.abspath(cfg.moe_ckpt_path))
    return [
        cfg.moe_ckpt_path,
        cfg.trajectory_file_path,
        cfg.base_ckpt_path,
        cfg.arm_ckpt_path,
        cfg.robot,
        os.path.join(ckpt_dir, "config.pkl"),
    ]


def build_backend(cfg: RunConfig, trajectories: Any, device: str) -> Backend:
    """Construct the chosen simulator backend."""
    if cfg.backend == "mujoco":
        from moetape.record.mujoco_backend import MujocoBackend

        seed = 0 if cfg.seed is None else cfg.seed
        return MujocoBackend(trajectories, n_envs=cfg.num_envs, robot_xml=cfg.robot, seed=seed)
    if cfg.backend == "isaacgym":
        from moetape.record.isaacgym_backend import IsaacGymBackend

        config_path = os.path.join(os.path.dirname(os.path.abspath(cfg.moe_ckpt_path)), "config.pkl")
        return IsaacGymBackend(
            config_path=config_path,
            checkpoint_path=cfg.moe_ckpt_path,
            trajectory_path=cfg.trajectory_file_path,
            num_envs=cfg.num_envs,
            device=device,
            visualize=cfg.visualize,
            seed=cfg.seed,
            keep_terminations=cfg.keep_terminations,
            codebase=cfg.codebase,
        )
    if cfg.backend == "warp":
        try:
            from moetape.record.warp_backend import WarpBackend
        except ImportError as e:
            raise InputError(
                f"--backend warp needs mujoco-warp and warp-lang ({e}): pip install 'moetape[gpu]'"
            ) from e
        seed = 0 if cfg.seed is None else cfg.seed
        return WarpBackend(
            trajectories,
            n_envs=cfg.num_envs,
            robot_xml=cfg.robot,
            seed=seed,
            device=device,
            notice=lambda msg: print(msg, file=sys.stderr),
        )
    raise InputError(f"--backend {cfg.backend}: unknown backend; expected mujoco, warp or isaacgym")


def provenance(cfg: RunConfig, backend: Backend, policy: Any, device: str) -> Dict[str, Any]:
    """Versions, files and hashes that make the recording reproducible."""
    import h5py
    import torch

    info = backend.info
    prov: Dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "torch": torch.__version__,
        "device": device,
        "seed": getattr(backend, "seed", cfg.seed),
        "backend": info.name,
        "backend_versions": info.versions,
        "policy_kind": policy.kind,
        "policy_notes": list(getattr(policy, "notes", [])),
        "checkpoints": policy.sources,
        "checkpoint_sha256": {s["role"]: s["sha256"] for s in policy.sources},
        "trajectory_file": os.path.abspath(cfg.trajectory_file_path),
        "trajectory_sha256": sha256_file(cfg.trajectory_file_path),
        "model_sha256": info.model_sha256,
        "robot_file": os.path.abspath(cfg.robot) if cfg.robot else None,
        "episode_length_s": info.episode_length_s,
    }
    overrides = getattr(backend, "applied_overrides", None)
    if overrides:
        prov["config_overrides"] = list(overrides)
    return prov


def record(
    cfg: RunConfig,
    *,
    metrics: Sequence[Metric] = (),
    command_line: Optional[str] = None,
    on_step: Optional[Callable[[StepReport], None]] = None,
    notice: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> RunResult:
    """Play the checkpoint against the trajectories and append every step to ``cfg.out``/log.h5.

    Raises:
        InputError: bad checkpoint, trajectory, robot model, device or sizes (one-line messages).
        OutputExistsError: ``cfg.out`` is a file, a folder moetape did not make, a run still
            recording, or a finished run and ``cfg.force`` is False (see record/run_folder.py).
        LogWriteError: the log could not be written (the steps committed before stay readable).
    """
    if cfg.backend == "isaacgym":  # Isaac Gym refuses to load after torch: import it before anything does
        from moetape.record.isaacgym_config import import_isaacgym

        import_isaacgym()
    from moetape.record.policy import load_policy
    from moetape.record.trajectory import load_trajectories

    resolve_frames(cfg.frames, cfg.backend)  # a bad value fails before anything loads
    if cfg.num_envs < 1 or cfg.num_steps < 1:
        raise InputError(f"--num_envs and --num_steps must be >= 1, got {cfg.num_envs} and {cfg.num_steps}")
    check_inputs(cfg)
    device = cfg.device
    trajectories = load_trajectories(cfg.trajectory_file_path)
    policy = load_policy(
        cfg.moe_ckpt_path, base_path=cfg.base_ckpt_path, arm_path=cfg.arm_ckpt_path, device=device
    )
    folder = RunFolder(cfg.out, force=cfg.force, keep=_inputs(cfg))
    with _sigterm_as_interrupt():  # from here a SIGTERM, like Ctrl-C, leaves the folder as it should
        log_path = folder.open()
        try:
            result = _record_into(log_path, folder, cfg, trajectories, policy, metrics, command_line, on_step)
            if not folder.started:  # interrupted before the first step: nothing was recorded
                folder.abort()
                result = RunResult("", 0, result.status, result.seconds)
            return result
        except BaseException:
            with contextlib.suppress(OSError):  # the error that ended the run is the one to report
                folder.abort()  # nothing once the run has its first step: its log is kept
            raise
        finally:
            folder.close()


def _record_into(
    log_path: str,
    folder: RunFolder,
    cfg: RunConfig,
    trajectories: Any,
    policy: Any,
    metrics: Sequence[Metric],
    command_line: Optional[str],
    on_step: Optional[Callable[[StepReport], None]],
) -> RunResult:
    """Build the backend and the log writer, then run the steps into ``log_path``."""
    import torch

    from moetape.record.policy import check_dims

    device = cfg.device
    torch.manual_seed(0 if cfg.seed is None else cfg.seed)
    backend = build_backend(cfg, trajectories, device)
    try:
        info = backend.info
        check_dims(policy, info.obs_dim, info.action_dim, info.name)
        frames = resolve_frames(cfg.frames, cfg.backend)
        substep = frames == "substep"
        spec = log_spec(info, policy.expert_names, substep=substep, metrics=metrics)
        if info.name == "warp":  # at thousands of envs: what the run will write, before it starts
            from moetape.record.warp_backend import log_size_line

            why = " (--frames auto: policy rate on warp; --frames substep for every substep)"
            print(log_size_line(spec, cfg.num_steps) + (why if cfg.frames == "auto" else ""), file=sys.stderr)
        meta = {
            "command_line": command_line
            if command_line is not None
            else " ".join(shlex.quote(a) for a in sys.argv),
            "config": dict(asdict(cfg), device=device, frames=frames),
            "provenance": provenance(cfg, backend, policy, device),
        }
        traj = (trajectories.ee_pos, trajectories.ee_axis_angle, trajectories.dt_s)
        viewer = _open_viewer(backend) if cfg.visualize and info.name == "mujoco" else None
        try:
            writer = LogWriter(
                log_path,
                spec,
                meta=meta,
                model_xml=info.model_xml,
                model_source=os.path.abspath(cfg.robot) if cfg.robot else "bundled",
                trajectory=traj,
                flush_seconds=cfg.flush_seconds,
                process=True,  # h5py holds the GIL while writing: a writer thread would pause the rollout
                stale_after_reset=getattr(info, "stale_after_reset", ()),
            )
        except BaseException:
            if viewer is not None:
                viewer.close()
            raise
        if hasattr(backend, "launch_step"):  # a DeviceBackend: the policy stays on the device
            return _device_loop(cfg, backend, policy, writer, metrics, substep, on_step, folder.start)
        return _loop(cfg, backend, policy, writer, metrics, substep, on_step, viewer, folder.start)
    finally:
        backend.close()


def _open_viewer(backend: Any) -> Any:
    """Open MuJoCo's passive viewer on env 0, or explain why it cannot open."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise InputError(
            "--visualize: no display here (DISPLAY is not set). Record headless and watch it with "
            "--record_video or `moetape view LOG` on a machine with a screen"
        )
    import mujoco.viewer

    return mujoco.viewer.launch_passive(backend.model, backend.datas[0])


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (kill, a cluster's time limit) like Ctrl-C: flush and mark the log interrupted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
