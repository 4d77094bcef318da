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
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # legacy_play beside this file
from legacy_play import RecordFn, add_common_args, parse, run_record  # noqa: E402
from legacy_play import record_command as _record_command  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p, out_help="run folder for log.h5 and moe_results.pkl [runs/play_moe_simple-<time>]")
    p.add_argument("--show_weights", action="store_true")
    p.add_argument(
        "--record_video", action="store_true", help="accepted and ignored, as in the legacy script"
    )
    return parse(p, argv, "play_moe_simple")


def record_command(args: argparse.Namespace) -> List[str]:
    """The `moetape record` command line for these legacy flags (one frame row per policy step).

    On Isaac Gym the training's terminations stay, as the simple script did not relax them.
    """
    keep = ["--keep-terminations"] if args.backend == "isaacgym" else []
    return _record_command(args, frames="policy", extra=keep, flags=("show_weights",))


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
