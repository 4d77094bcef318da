"""Subprocess for the write-failure test: record until the OS refuses to grow the file (RLIMIT_FSIZE)."""

import os
import resource
import signal
import sys

from moetape.schema.errors import LogWriteError
from moetape.schema.synthetic import small_spec, synthetic_step
from moetape.schema.writer import LogWriter


def main(path: str, limit: int, process: bool) -> int:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG, like a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    spec = small_spec(2, frames_per_step=4)
    try:
        with LogWriter(path, spec, batch_steps=4, chunk_bytes=4096, process=process) as log:
            for s in range(100000):
                log.append(*synthetic_step(spec, s, 0))
    except LogWriteError as e:
        print(str(e), flush=True)
        return 3
    return 0


if __name__ == "__main__":
    # os._exit: after a failed write, h5py 3.16 / HDF5 2.0 can crash while freeing its objects at
    # interpreter exit (reproduced with plain h5py, no moetape code); the log on disk is unaffected.
    os._exit(main(sys.argv[1], int(sys.argv[2]), sys.argv[3:] == ["process"]))
