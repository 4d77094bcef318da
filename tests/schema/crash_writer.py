"""Subprocess for the crash tests: append synthetic steps forever, print each committed count.

Usage: crash_writer.py PATH SEED thread|process (the LogWriter's writer thread or writer process).
"""

import sys
import time

from moetape.schema.synthetic import small_spec, synthetic_step
from moetape.schema.writer import LogWriter


def main(path: str, seed: int, mode: str) -> None:
    spec = small_spec(3, frames_per_step=4)
    printed = -1
    with LogWriter(
        path, spec, batch_steps=1 + seed % 7, flush_seconds=0.05, chunk_bytes=4096, process=mode == "process"
    ) as log:
        s = 0
        while True:
            step, frames = synthetic_step(spec, s, seed)
            if s % 2:  # odd steps' frames written in place, as moetape record's backends do
                rows = log.frame_rows()
                for key in rows:
                    rows[key][...] = frames[key]
                frames = rows
            log.append(step, frames)
            s += 1
            if log.n_committed != printed:
                printed = log.n_committed
                print(printed, flush=True)
            if s % 50 == 0:
                time.sleep(0.001)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
