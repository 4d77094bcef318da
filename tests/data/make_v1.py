"""Write tests/data/v1_minimal.h5, the golden file of format_version 1. Run once; never regenerate.

The file is locked by tests/data/SHA256SUMS. Its contents are the deterministic synthetic steps
of moetape.schema.synthetic (seed 1), so reader tests can compare every value.
"""

import os
import sys

import numpy as np

from moetape.schema.synthetic import small_spec, synthetic_step
from moetape.schema.writer import LogWriter

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "v1_minimal.h5")
N_STEPS = 12
SEED = 1
MODEL_XML = (
    '<mujoco model="golden"><worldbody><body name="body0"><geom size="0.1"/></body></worldbody></mujoco>'
)


def main() -> int:
    if os.path.exists(OUT):
        print(f"{OUT} exists; golden files are written once and never regenerated.", file=sys.stderr)
        return 1
    spec = small_spec(2, frames_per_step=4, n_bodies=3)
    traj = (
        np.linspace(0, 1, 2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3),
        np.zeros((2, 5, 3), np.float32),
        0.005,
    )
    meta = {
        "command_line": "python tests/data/make_v1.py",
        "config": {"golden": 1, "seed": SEED},
        "provenance": {"seed": SEED, "purpose": "golden file of format_version 1"},
    }
    with LogWriter(
        OUT,
        spec,
        meta=meta,
        model_xml=MODEL_XML,
        model_source="inline",
        trajectory=traj,
        batch_steps=5,
        chunk_bytes=2048,
    ) as log:
        for s in range(N_STEPS):
            log.append(*synthetic_step(spec, s, SEED))
    print("wrote", OUT, os.path.getsize(OUT), "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
