"""Write demo EE target trajectories as a legacy trajectory .pkl (list of dicts, 200 Hz).

Example: python scripts/make_demo_trajectory.py --out demo/trajectory_demo.pkl --seed 0
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    """Parse the arguments, write the trajectory file, print its path; return the exit code."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="trajectory path to write (.pkl)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the path jitter and phases (default 0)")
    parser.add_argument("--n_episodes", type=int, default=4, help="number of episodes (default 4)")
    parser.add_argument("--duration_s", type=float, default=8.0, help="episode length in seconds (default 8)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = parser.parse_args(argv)
    if os.path.exists(args.out) and not args.force:
        print(
            f"Error: {args.out}: exists; expected a new path, got an existing file. Pass --force to overwrite",
            file=sys.stderr,
        )
        return 1
    if args.n_episodes < 1 or args.duration_s <= 0:
        parser.error("--n_episodes must be >= 1 and --duration_s > 0")
    from moetape.record.demo import make_demo_trajectory

    print(
        make_demo_trajectory(args.out, seed=args.seed, n_episodes=args.n_episodes, duration_s=args.duration_s)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
