"""A batch of rows being filled: one preallocated array per dataset, in shared memory for the
writer process (schema/writer_process.py reads them there)."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from moetape.schema import layout
from moetape.schema.commit import filled_rows


class Batch:
    """Rows of up to ``capacity`` steps, preallocated per dataset; in one shared-memory block when
    ``shared`` (the writer process reads them there: see writer_process.py)."""

    def __init__(
        self, specs: Mapping[str, Tuple[Tuple[int, ...], str]], capacity: int, fps: int, shared: bool = False
    ) -> None:
        self.n = 0
        self.capacity = capacity
        self.fps = fps
        self.first_row_t = 0.0
        self.arrays: Dict[str, np.ndarray] = {}
        self.shm: Any = None
        self.unlinked = False
        self.table: List[Tuple[str, int, Tuple[int, ...], str]] = []  # path, byte offset, shape, dtype
        offset = 0
        for path, (shape, dtype) in specs.items():
            rows = capacity * fps if layout.stream_of(path) == 1 else capacity
            self.table.append((path, offset, (rows,) + tuple(shape), np.dtype(dtype).str))
            nbytes = rows * int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            offset += -(-nbytes // 64) * 64  # 64-byte aligned, like numpy's own allocations
        if shared:
            from multiprocessing import shared_memory

            self.shm = shared_memory.SharedMemory(create=True, size=max(1, offset))
        try:
            for path, off, shape, dtype in self.table:
                if self.shm is None:
                    self.arrays[path] = np.empty(shape, dtype=dtype)
                else:
                    self.arrays[path] = np.ndarray(shape, dtype=dtype, buffer=self.shm.buf, offset=off)
                self.arrays[path].fill(0)  # touch every page now, not during the rollout's first batches
        except BaseException:
            self.release()  # a block left open is reported leaked at exit
            raise

        self.in_order = list(self.arrays.values())  # the specs' order, which LogWriter._fields follows
        # Per row, once: LogWriter.frame_rows()'s views (by key, and per field or None).
        self.row_views: List[Optional[Tuple[Dict[str, np.ndarray], List[Any]]]] = [None] * capacity

    def view(self) -> Dict[str, np.ndarray]:
        """Return the filled rows of every dataset."""
        return filled_rows(self.arrays, self.n, self.fps)

    def unlink(self) -> None:
        """Remove the shared-memory block's name (the writer process has mapped it): after this no
        crash of either process can leave it behind in /dev/shm; the memory goes with the last map."""
        if self.shm is not None and not self.unlinked:
            self.shm.unlink()
            self.unlinked = True

    def release(self) -> None:
        """Free the shared-memory block (the arrays viewing it go first: numpy pins the buffer)."""
        if self.shm is not None:
            self.arrays, self.in_order, self.row_views = {}, [], []
            self.unlink()
            self.shm.close()
            self.shm = None
