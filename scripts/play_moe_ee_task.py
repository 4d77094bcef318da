#!/usr/bin/env python3
"""play_moe_ee_task.py on moetape: the legacy flags, the legacy files, and a crash-safe log beside them.

Runs ``moetape record`` with the same flags (a subprocess of this Python), then derives from its
log exactly the files the legacy script wrote for those flags:

    logs.zarr, logs.pkl    always; every physics substep headless, about 24 rows per simulated second
                           with --visualize (as the legacy render callback logged them)
    weight_stats.pkl       with --show_weights (without it the weight lists in logs.* stay empty)
    video.mp4              with --record_video (rendered from the log by `moetape record`)

The legacy script wrote into its wandb run folder; here it is --out (default
runs/play_moe_ee_task-<time>), which also keeps log.h5, the source of every file.

    python scripts/play_moe_ee_task.py --moe_ckpt_path model.pt --base_ckpt_path base.pt \\
        --arm_ckpt_path arm.pt --trajectory_file_path traj.pkl --num_envs 1 --show_weights
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
    p.add_argument("--base_ckpt_path", type=str, required=True, help="base expert checkpoint")
    p.add_argument("--arm_ckpt_path", type=str, required=True, help="arm expert checkpoint")
    p.add_argument("--visualize", action="store_true")
    p.add_argument("--record_video", action="store_true")
    p.add_argument(
        "--device", type=str, default=None, help="torch device [legacy default cuda:0; cpu without CUDA]"
    )
    p.add_argument("--trajectory_file_path", type=str, required=True)
    p.add_argument("--num_envs", type=int, default=1)
    p.add_argument("--num_steps", type=int, default=1000)
    p.add_argument(
        "--show_weights", action="store_true", help="weight stats (weight_stats.pkl) and live display"
    )
    p.add_argument(
        "--out",
        "--output_dir",
        dest="out",
        default=None,
        help="run folder for log.h5 and the derived files [runs/play_moe_ee_task-<time>]",
    )
    p.add_argument("--force", action="store_true", help="overwrite files in --out")
    args = p.parse_args(argv)
    if args.visualize:
        args.num_envs = 1  # as the legacy script did
    if args.out is None:
        args.out = os.path.join("runs", "play_moe_ee_task-" + time.strftime("%Y%m%d-%H%M%S"))
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
        "--base_ckpt_path",
        args.base_ckpt_path,
        "--arm_ckpt_path",
        args.arm_ckpt_path,
        "--trajectory_file_path",
        args.trajectory_file_path,
        "--num_envs",
        str(args.num_envs),
        "--num_steps",
        str(args.num_steps),
        "--frames",
        "substep",
        "--out",
        args.out,
    ]
    if args.device is not None:
        cmd += ["--device", args.device]
    for flag in ("visualize", "show_weights", "record_video", "force"):
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
    from moetape.replay.export import export_many
    from moetape.schema.errors import LogError

    outputs = {"zarr": os.path.join(args.out, "logs.zarr"), "pkl": os.path.join(args.out, "logs.pkl")}
    if args.show_weights:
        outputs["weight_stats"] = os.path.join(args.out, "weight_stats.pkl")
    try:
        result = export_many(
            log_path,
            outputs,
            rows="video" if args.visualize else "auto",
            weights=args.show_weights,
            force=args.force,
        )
    except LogError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    for info in result.values():
        print(info["path"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
