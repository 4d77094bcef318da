#!/usr/bin/env python3
"""play_moe_simple.py on moetape: the legacy flags, moe_results.pkl, and a crash-safe log beside it.

Runs ``moetape record`` with the same flags (a subprocess of this Python, one frame row per policy
step: the simple script kept only env 0's state before each step), then derives moe_results.pkl
exactly as the legacy script wrote it: weight_stats and moe_weights are filled with --show_weights
and left empty without it. The legacy script accepted --record_video but never recorded a video;
so does this one. Files go to --out (default runs/play_moe_simple-<time>) instead of the wandb folder.

    python scripts/play_moe_simple.py --moe_ckpt_path model.pt --trajectory_file_path traj.pkl \\
        --num_envs 4 --num_steps 500 --show_weights
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Callable, List, Optional

RecordFn = Callable[[List[str]], str]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--moe_ckpt_path", type=str, required=True, help="MoE checkpoint")
    p.add_argument("--trajectory_file_path", type=str, required=True, help="EE target trajectories")
    p.add_argument(
        "--device", type=str, default=None, help="torch device [legacy default cuda:0; cpu without CUDA]"
    )
    p.add_argument("--num_envs", type=int, default=1)
    p.add_argument("--num_steps", type=int, default=1000)
    p.add_argument("--visualize", action="store_true")
    p.add_argument("--show_weights", action="store_true")
    p.add_argument(
        "--record_video", action="store_true", help="accepted and ignored, as in the legacy script"
    )
    p.add_argument(
        "--out",
        "--output_dir",
        dest="out",
        default=None,
        help="run folder for log.h5 and moe_results.pkl [runs/play_moe_simple-<time>]",
    )
    p.add_argument("--force", action="store_true", help="overwrite files in --out")
    args = p.parse_args(argv)
    if args.visualize:
        args.num_envs = 1  # as the legacy script did
    if args.out is None:
        args.out = os.path.join("runs", "play_moe_simple-" + time.strftime("%Y%m%d-%H%M%S"))
    return args


def record_command(args: argparse.Namespace) -> List[str]:
    """The `moetape record` command line for these legacy flags."""
    cmd = [
        sys.executable,
        "-m",
        "moetape",
        "record",
        "--moe_ckpt_path",
        args.moe_ckpt_path,
        "--trajectory_file_path",
        args.trajectory_file_path,
        "--num_envs",
        str(args.num_envs),
        "--num_steps",
        str(args.num_steps),
        "--frames",
        "policy",
        "--out",
        args.out,
    ]
    if args.device is not None:
        cmd += ["--device", args.device]
    for flag in ("visualize", "show_weights", "force"):
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


def main(argv: Optional[List[str]] = None, *, record: RecordFn = run_record) -> int:
    args = parse_args(argv)
    log_path = record(record_command(args))
    from moetape.replay.export import export_results
    from moetape.schema.errors import LogError

    out = os.path.join(args.out, "moe_results.pkl")
    try:
        export_results(log_path, out, weights=args.show_weights, force=args.force)
    except LogError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
