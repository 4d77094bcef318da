"""What the two legacy play wrappers share: their common flags, the `moetape record` call, its result.

Imported by play_moe_ee_task.py and play_moe_simple.py (their own folder is on sys.path when run).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Callable, List, Optional, Sequence

RecordFn = Callable[[List[str]], str]


def add_common_args(p: argparse.ArgumentParser, *, out_help: str) -> None:
    """Add the flags both legacy scripts have, with their legacy spellings and defaults."""
    p.add_argument("--moe_ckpt_path", type=str, required=True, help="MoE checkpoint")
    p.add_argument("--trajectory_file_path", type=str, required=True, help="EE target trajectories")
    p.add_argument(
        "--device", type=str, default=None, help="torch device [legacy default cuda:0; cpu without CUDA]"
    )
    p.add_argument("--num_envs", type=int, default=1)
    p.add_argument("--num_steps", type=int, default=1000)
    p.add_argument("--visualize", action="store_true")
    p.add_argument("--out", "--output_dir", dest="out", default=None, help=out_help)
    p.add_argument("--force", action="store_true", help="overwrite files in --out")
    p.add_argument(
        "--backend",
        choices=["mujoco", "isaacgym"],
        default="mujoco",
        help="simulator [mujoco]; isaacgym as legacy",
    )
    p.add_argument(
        "--codebase", default=None, help="Isaac Gym: the training codebase (folder holding legged_gym/)"
    )


def finish_args(args: argparse.Namespace, script: str) -> argparse.Namespace:
    """Apply the legacy scripts' rules: --visualize plays one env; the default --out is timestamped."""
    if args.visualize:
        args.num_envs = 1  # as the legacy scripts did
    if args.out is None:
        args.out = os.path.join("runs", script + "-" + time.strftime("%Y%m%d-%H%M%S"))
    return args


def record_command(
    args: argparse.Namespace, *, frames: str, extra: Sequence[str] = (), flags: Sequence[str] = ()
) -> List[str]:
    """The `moetape record` command line for the common flags, ``extra`` arguments and set ``flags``."""
    cmd = [sys.executable, "-m", "moetape", "record", "--moe_ckpt_path", args.moe_ckpt_path]
    cmd += list(extra)
    cmd += ["--trajectory_file_path", args.trajectory_file_path, "--num_envs", str(args.num_envs)]
    cmd += ["--num_steps", str(args.num_steps), "--frames", frames, "--out", args.out]
    if args.device is not None:
        cmd += ["--device", args.device]
    if args.backend != "mujoco":
        cmd += ["--backend", args.backend]
    if args.codebase is not None:
        cmd += ["--codebase", args.codebase]
    for flag in ("visualize",) + tuple(flags) + ("force",):
        if getattr(args, flag):
            cmd.append("--" + flag)
    return cmd


def run_record(cmd: List[str]) -> str:
    """Run `moetape record`; return the log path it prints last on stdout. Exits with its status on failure."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(proc.returncode)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return lines[-1].strip() if lines else os.path.join(cmd[cmd.index("--out") + 1], "log.h5")


def parse(p: argparse.ArgumentParser, argv: Optional[List[str]], script: str) -> argparse.Namespace:
    """Parse ``argv`` and apply finish_args."""
    return finish_args(p.parse_args(argv), script)
