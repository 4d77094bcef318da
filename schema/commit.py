"""The commit of one batch to an open log: shared by the writer thread and the writer process.

The commit order readers rely on: the rows (chunks and extents), flush, ``n_committed``, flush.
"""

from __future__ import annotations

import datetime
from typing import Any, Dict, Mapping

import h5py
import numpy as np

from moetape.schema import layout


def utc_now() -> str:
    """Return the current UTC time as ISO 8601 with seconds."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def filled_rows(arrays: Mapping[str, np.ndarray], n: int, fps: int) -> Dict[str, np.ndarray]:
    """Return the rows of ``n`` steps of each batch array (frames/ arrays hold ``fps`` rows per step)."""
    return {p: a[: n * fps] if layout.stream_of(p) == 1 else a[:n] for p, a in arrays.items()}


def write_batch(
    f: h5py.File, dsids: Mapping[str, Any], rows_by_path: Mapping[str, np.ndarray], s0: int, n: int, fps: int
) -> int:
    """Append ``n`` steps after step ``s0``: resize, write the rows, raise n_committed, flush; return s0 + n.

    This is the commit order readers rely on. Uses h5py's low-level dataset API: the high-level
    ``ds[a:b] = x`` costs about 4x more per call (and h5py holds the GIL while it works).
    """
    s1 = s0 + n
    for path, rows in rows_by_path.items():
        dsid = dsids[path]
        start = s0 * fps if layout.stream_of(path) else s0
        shape = (start + rows.shape[0],) + rows.shape[1:]
        dsid.set_extent(shape)
        fspace = dsid.get_space()
        fspace.select_hyperslab((start,) + (0,) * (rows.ndim - 1), rows.shape)
        dsid.write(h5py.h5s.create_simple(rows.shape), fspace, np.ascontiguousarray(rows))
    # Rows (chunks and extents) reach the file before the counter that vouches for them: the
    # counter is raw data and could otherwise land on disk before the extents' metadata.
    f.flush()
    f[layout.N_COMMITTED][...] = np.array([s1, s1 * fps], dtype=np.int64)
    f.flush()
    return s1


def mark_end(f: h5py.File, status: str) -> None:
    """Record the run's end status and time; a failure (disk full) is ignored, the rows stay readable."""
    try:
        f[layout.RUN_STATUS][()] = np.bytes_(status)
        f[layout.END_TIME][()] = np.bytes_(utc_now())
        f.flush()
    except Exception:  # noqa: BLE001 - disk full; the committed rows stay readable
        pass
