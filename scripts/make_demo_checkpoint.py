"""Write the trained demo MoE checkpoint (rsl_rl variant B layout; scripts/train_demo_policy.py made it).

Example: python scripts/make_demo_checkpoint.py --out demo/model_demo.pt
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    """Parse the arguments, write the checkpoint, print its path; return the exit code."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="checkpoint path to write (.pt)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = parser.parse_args(argv)
    if os.path.exists(args.out) and not args.force:
        print(
            f"Error: {args.out}: exists; expected a new path, got an existing file. Pass --force to overwrite",
            file=sys.stderr,
        )
        return 1
    from moetape.record.demo import make_demo_checkpoint

    print(make_demo_checkpoint(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
