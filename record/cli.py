"""`moetape record` and `moetape demo`: the legacy play scripts' flags, recording into an event log."""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import sys
from typing import Any, Callable, List, Optional

import click

from moetape.record.runner import FRAMES_CHOICES, RunConfig, StepReport, resolve_device, summary_lines
from moetape.record.runner import record as run_record
from moetape.schema.errors import InputError


def _echo_err(msg: str) -> None:
    click.echo(msg, err=True)


class _Display:
    """Progress on stderr: a bar, or with --show_weights a live line and the legacy every-50-steps print."""

    def __init__(self, num_steps: int, *, show_weights: bool, quiet: bool) -> None:
        self.show_weights = show_weights
        self.live = sys.stderr.isatty()  # the live line rewrites itself: only on a terminal
        self.quiet = quiet
        self.num_steps = num_steps
        self.bar: Any = None  # opened at the first step, so set-up errors are not preceded by a bar
        self.last: Optional[StepReport] = None

    def __call__(self, r: StepReport) -> None:
        if not self.quiet and not self.show_weights:
            if self.bar is None:
                self.bar = click.progressbar(
                    length=self.num_steps, label="recording", file=sys.stderr, show_pos=True, show_eta=True
                )
                self.bar.__enter__()
            self.bar.update(1)
            return
        if not self.show_weights:
            return
        self.last = r
        g0 = r.gate[0]
        if r.step % 50 == 0:
            if self.live and not self.quiet:
                sys.stderr.write("\r\x1b[K")
            click.echo(
                f"Step {r.step}: base weight {float(g0[0]):.3f}, arm weight {float(g0[-1] if len(g0) > 1 else 0.0):.3f}, entropy {float(r.entropy.mean()):.3f}",
                err=True,
            )
        if self.live and not self.quiet:
            sys.stderr.write("\r\x1b[K" + self._line(r, r.n_committed))
            sys.stderr.flush()

    @staticmethod
    def _line(r: StepReport, n_committed: int) -> str:
        g0 = r.gate[0]
        mean = r.gate.mean(axis=0)
        return (
            f"{r.step + 1:>6}/{r.num_steps} {r.steps_per_s:7.1f} steps/s | env0 base {float(g0[0]):.3f} arm {float(g0[-1]):.3f} | mean base {float(mean[0]):.3f} "
            f"arm {float(mean[-1]):.3f} | entropy {float(r.entropy.mean()):.3f} | committed {n_committed}"
        )

    def close(self, n_committed: Optional[int] = None) -> None:
        """End the display; the live line is redrawn with ``n_committed``, the count the log holds at the end."""
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
        elif self.show_weights and self.live and not self.quiet:
            if self.last is not None and n_committed is not None:
                sys.stderr.write("\r\x1b[K" + self._line(self.last, n_committed))
            sys.stderr.write("\n")


def render_video(log_path: str, out: str, *, force: bool, quiet: bool = False) -> None:
    """Render video.mp4 from the log with replay's renderer (a separate command: record never imports replay)."""
    cmd = [sys.executable, "-m", "moetape", "render", log_path, "-o", out]
    if force:
        cmd.append("--force")
    if quiet:
        cmd.append("--quiet")
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise click.ClickException(
            f"the log is complete, but rendering {out} failed; retry with: moetape render {log_path} -o {out}"
        )


def next_commands(log_path: str) -> List[str]:
    """The commands to run on a new log, for the end of a recording."""
    q = shlex.quote(log_path)
    return [f"  moetape info {q}", f"  moetape derive {q}", f"  moetape view {q}"]


def run_and_report(cfg: RunConfig, *, quiet: bool) -> None:
    """Record, display progress, print the summary, where the log is and what to run next.

    Every count printed is the log's committed count (RunResult.steps), never the loop's.
    """
    display = _Display(cfg.num_steps, show_weights=cfg.show_weights, quiet=quiet)
    result = None
    try:
        result = run_record(cfg, on_step=display, notice=_echo_err)
    finally:
        display.close(None if result is None else result.steps)
    if result.status == "interrupted" and not result.log_path:
        _echo_err(f"interrupted before the first step: nothing recorded; {cfg.out} is as it was")
        sys.exit(130)
    if result.status == "interrupted":
        _echo_err(f"interrupted: the log holds the {result.steps} steps committed and is marked interrupted")
    if cfg.show_weights:
        for line in summary_lines(result.summary):
            click.echo(line, err=True)
    _echo_err(f"{result.steps} steps x {cfg.num_envs} envs in {result.seconds:.1f} s -> {result.log_path}")
    if cfg.record_video and result.steps:
        render_video(result.log_path, os.path.join(cfg.out, "video.mp4"), force=cfg.force, quiet=quiet)
    _echo_err("next:")
    for line in next_commands(result.log_path):
        _echo_err(line)
    click.echo(result.log_path)
    if result.status == "interrupted":
        sys.exit(130)


def _legacy_option(name: str, **kwargs: Any) -> Callable[[Any], Any]:
    """A click option spelled as the legacy scripts do (``--num_envs``), also accepted as ``--num-envs``."""
    return click.option("--" + name, "--" + name.replace("_", "-"), name, **kwargs)


def _frames_help() -> str:
    return (
        "rate of the simulator-state stream: substep = every physics substep (4 rows per policy step, "
        "like the legacy headless logs.zarr), policy = one row per step (4x smaller, for thousands of envs), "
        "auto = policy on --backend warp, substep on mujoco and isaacgym"
    )


@click.command()
@_legacy_option(
    "moe_ckpt_path",
    required=True,
    type=click.Path(),
    help="MoE checkpoint (rsl_rl dict, variant A or B).",
)
@_legacy_option(
    "trajectory_file_path",
    required=True,
    type=click.Path(),
    help="EE target trajectories (.pkl legacy list of dicts, or .npz).",
)
@_legacy_option(
    "base_ckpt_path",
    type=click.Path(),
    help="Replace the base expert's weights with this rsl_rl expert.",
)
@_legacy_option(
    "arm_ckpt_path",
    type=click.Path(),
    help="Replace the arm expert's weights with this rsl_rl expert.",
)
@click.option(
    "--device", default=None, help="Torch device of the policy [legacy default cuda:0; cpu when no CUDA]."
)
@_legacy_option("num_envs", default=1, show_default=True, type=int)
@_legacy_option("num_steps", default=1000, show_default=True, type=int)
@click.option(
    "--visualize",
    is_flag=True,
    help="Show the simulator's viewer (needs a display): MuJoCo's on env 0; Isaac Gym's, drawn every step, one env.",
)
@_legacy_option(
    "show_weights",
    is_flag=True,
    help="Live gate-weight line, the legacy every-50-steps print and a summary at the end.",
)
@_legacy_option(
    "record_video",
    is_flag=True,
    help="After the run, render video.mp4 into the run folder from the log.",
)
@click.option(
    "--backend",
    type=click.Choice(["mujoco", "warp", "isaacgym"]),
    default="mujoco",
    show_default=True,
    help="mujoco (CPU), warp (MuJoCo Warp on --device cuda:N; cpu for tests) or isaacgym.",
)
@click.option(
    "--robot", type=click.Path(), help="MJCF of the robot (same joint names); default: the bundled model."
)
@click.option(
    "--out",
    "-o",
    default=None,
    type=click.Path(),
    help="Run folder for log.h5 [runs/<checkpoint name>-<time>]; a new folder, or one moetape made.",
)
@click.option(
    "--seed",
    default=None,
    type=int,
    help="MuJoCo: picks the trajectory episode each env plays on each of its episodes (drawn at every "
    "reset, uniformly, as the legacy sequence sampler; played from its first sample) and any reset "
    "noise; the same seed gives the same log [0]. Isaac Gym: replaces the training's seed in config.pkl "
    "(kept when not given, as the legacy scripts) and seeds torch/numpy.",
)
@click.option(
    "--keep-terminations",
    "--keep_terminations",
    "keep_terminations",
    is_flag=True,
    help="Isaac Gym: keep the training's cfg.asset.terminate_after_contacts_on (as play_moe_simple.py); "
    "default: episodes end only on base contact, as play_moe_ee_task.py.",
)
@click.option(
    "--codebase",
    type=click.Path(),
    default=None,
    metavar="DIR",
    help="Isaac Gym: the training codebase (the folder holding legged_gym/), put first on the import path "
    "for the env's _target_, as the legacy setup_path.py did.",
)
@click.option(
    "--flush-seconds",
    "--flush_seconds",
    "flush_seconds",
    default=1.0,
    show_default=True,
    type=float,
    help="Commit buffered steps at least this often: a killed run loses at most this much (0: every step).",
)
@click.option(
    "--frames", type=click.Choice(FRAMES_CHOICES), default="auto", show_default=True, help=_frames_help()
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace a finished run in --out as a whole (never a run still recording, nor a folder moetape did not make).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
def record(
    moe_ckpt_path: str,
    trajectory_file_path: str,
    base_ckpt_path: Optional[str],
    arm_ckpt_path: Optional[str],
    device: Optional[str],
    num_envs: int,
    num_steps: int,
    visualize: bool,
    show_weights: bool,
    record_video: bool,
    backend: str,
    robot: Optional[str],
    out: Optional[str],
    seed: Optional[int],
    keep_terminations: bool,
    codebase: Optional[str],
    flush_seconds: float,
    frames: str,
    force: bool,
    quiet: bool,
) -> None:
    """Play an MoE checkpoint on MuJoCo or Isaac Gym, every step into a log.

    Writes OUT/log.h5 (and OUT/video.mp4 with --record_video). The legacy flag
    spellings of play_moe_ee_task.py / play_moe_simple.py work as they are.

    \b
    Example:
      moetape record --moe_ckpt_path model.pt --trajectory_file_path traj.pkl \\
          --num_envs 4 --num_steps 500 --device cpu --out runs/try1
    """
    if not (math.isfinite(flush_seconds) and flush_seconds >= 0):
        raise InputError(
            f"--flush-seconds {flush_seconds:g}: expected a number of seconds >= 0 (0 commits every step)"
        )
    if out is None:
        import time

        stem = os.path.splitext(os.path.basename(moe_ckpt_path))[0]
        out = os.path.join("runs", "{}-{}".format(stem, time.strftime("%Y%m%d-%H%M%S")))
    if backend == "isaacgym":  # Isaac Gym refuses to load after torch: before resolve_device imports it
        from moetape.record.isaacgym_config import import_isaacgym

        import_isaacgym()
    dev = resolve_device(device, notice=_echo_err)
    cfg = RunConfig(
        moe_ckpt_path=moe_ckpt_path,
        trajectory_file_path=trajectory_file_path,
        out=out,
        base_ckpt_path=base_ckpt_path,
        arm_ckpt_path=arm_ckpt_path,
        device=dev,
        num_envs=num_envs,
        num_steps=num_steps,
        backend=backend,
        robot=robot,
        seed=seed,
        keep_terminations=keep_terminations,
        codebase=codebase,
        flush_seconds=flush_seconds,
        frames=frames,
        visualize=visualize,
        show_weights=show_weights,
        record_video=record_video,
        force=force,
    )
    run_and_report(cfg, quiet=quiet)


@click.command()
@click.option(
    "--out",
    "-o",
    default=os.path.join("runs", "demo"),
    show_default=True,
    type=click.Path(),
    help="Run folder for the demo checkpoint, trajectory and log.",
)
@_legacy_option("num_envs", default=4, show_default=True, type=int)
@_legacy_option("num_steps", default=500, show_default=True, type=int)
@_legacy_option("record_video", is_flag=True, help="Also render video.mp4.")
@click.option("--force", is_flag=True, help="Overwrite an existing demo in --out.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
def demo(out: str, num_envs: int, num_steps: int, record_video: bool, force: bool, quiet: bool) -> None:
    """Make the demo checkpoint, its two experts and the trajectory, then record 4 envs x 500 steps.

    The demo policy is a trained MoE (variant B layout, committed with the package, trained
    by scripts/train_demo_policy.py with PPO): the robot stands, its arm tracks the EE
    target, and the learned gate shares the action between the base and arm experts.
    Its experts are also written alone (demo_base_expert.pt, demo_arm_expert.pt), plain
    rsl_rl expert checkpoints, and the demo plays them as --base_ckpt_path / --arm_ckpt_path
    (same weights, same actions); at the end it prints the legacy full script's command on
    these files.

    \b
    Example:
      moetape demo --out runs/demo && moetape info runs/demo/log.h5
    """
    import shlex

    from moetape.record.demo import make_demo_checkpoint, make_demo_expert_checkpoint, make_demo_trajectory
    from moetape.record.runner import prepare_out

    prepare_out(out, force=force)  # fail before making anything if a demo log is there
    ckpt = os.path.join(out, "demo_moe_checkpoint.pt")
    traj = os.path.join(out, "demo_trajectory.pkl")
    experts = {role: os.path.join(out, f"demo_{role}_expert.pt") for role in ("base", "arm")}
    for path in (ckpt, traj) + tuple(experts.values()):
        if os.path.exists(path):
            os.remove(path)
    make_demo_checkpoint(ckpt)
    for role, path in experts.items():
        make_demo_expert_checkpoint(path, role)
    make_demo_trajectory(traj, seed=0)
    legacy = ["python", os.path.join("scripts", "play_moe_ee_task.py"), "--moe_ckpt_path", ckpt]
    legacy += ["--base_ckpt_path", experts["base"], "--arm_ckpt_path", experts["arm"]]
    legacy += ["--trajectory_file_path", traj, "--device", "cpu", "--num_envs", "1"]
    cfg = RunConfig(  # the MoE with its experts given again, as the legacy full script takes them
        moe_ckpt_path=ckpt,
        trajectory_file_path=traj,
        base_ckpt_path=experts["base"],
        arm_ckpt_path=experts["arm"],
        out=out,
        device="cpu",
        num_envs=num_envs,
        num_steps=num_steps,
        seed=0,
        record_video=record_video,
        force=force,
    )
    run_and_report(cfg, quiet=quiet)
    _echo_err("the legacy full script on these files (from the repository root):")
    _echo_err("  " + " ".join(shlex.quote(a) for a in legacy))
