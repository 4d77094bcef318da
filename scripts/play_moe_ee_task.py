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

`moetape demo` writes files to try it on (the MoE, its two experts alone, a trajectory file) and
prints this command on them.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # legacy_play beside this file
from legacy_play import RecordFn, add_common_args, parse, run_record  # noqa: E402
from legacy_play import record_command as _record_command  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p, out_help="run folder for log.h5 and the derived files [runs/play_moe_ee_task-<time>]")
    p.add_argument("--base_ckpt_path", type=str, required=True, help="base expert checkpoint")
    p.add_argument("--arm_ckpt_path", type=str, required=True, help="arm expert checkpoint")
    p.add_argument("--record_video", action="store_true")
    p.add_argument(
        "--show_weights", action="store_true", help="weight stats (weight_stats.pkl) and live display"
    )
    return parse(p, argv, "play_moe_ee_task")


def record_command(args: argparse.Namespace) -> List[str]:
    """The `moetape record` command line for these legacy flags (every physics substep logged)."""
    experts = ["--base_ckpt_path", args.base_ckpt_path, "--arm_ckpt_path", args.arm_ckpt_path]
    return _record_command(args, frames="substep", extra=experts, flags=("show_weights", "record_video"))


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
