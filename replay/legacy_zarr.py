"""A zarr v2 directory store writer for the legacy ``logs.zarr``: rows streamed into chunk files.

``ZarrV2Writer`` streams arrays of a known final shape into a zarr v2 directory store (what zarr
2.16 reads): metadata is created with zarr (``zarr_format=2``), chunks are compressed with the
zarr 2 default compressor (Blosc lz4, level 5, byte shuffle) and written as files as soon as their
rows are complete. Edge chunks are padded with the fill value, as zarr pads them. Writing chunk
files directly keeps the legacy one-row chunks of 2-D arrays affordable. ``tree_sha256`` is the
digest of a folder that ``ZarrV2Writer.tree_digest`` reports.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

# zarr 2.16 defaults: normalize_chunks(None) -> guess_chunks; Blosc(lz4, clevel 5, SHUFFLE, blocksize 0).
_CHUNK_BASE = 256 * 1024
_CHUNK_MIN = 128 * 1024
_CHUNK_MAX = 64 * 1024 * 1024
BLOSC_CONFIG = {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1, "blocksize": 0}


def legacy_default_chunks(shape: Sequence[int], itemsize: int) -> Tuple[int, ...]:
    """Return zarr 2.16's default chunks for ``shape`` (its ``guess_chunks``), independent of zarr's version."""
    ndims = len(shape)
    if ndims == 0:
        return ()
    chunks = np.maximum(np.array(shape, dtype="=f8"), 1)
    dset_size = float(np.prod(chunks)) * itemsize
    target = _CHUNK_BASE * (2 ** np.log10(dset_size / (1024.0 * 1024)))
    target = min(max(target, _CHUNK_MIN), _CHUNK_MAX)
    idx = 0
    while True:
        chunk_bytes = float(np.prod(chunks)) * itemsize
        if (chunk_bytes < target or abs(chunk_bytes - target) / target < 0.5) and chunk_bytes < _CHUNK_MAX:
            break
        if np.prod(chunks) == 1:
            break
        chunks[idx % ndims] = math.ceil(chunks[idx % ndims] / 2.0)
        idx += 1
    return tuple(int(x) for x in chunks)


def legacy_chunks(shape: Sequence[int], itemsize: int) -> Tuple[int, ...]:
    """Return the legacy script's chunks: ``(1, E)`` for 2-D arrays, zarr 2.16's default otherwise."""
    if len(shape) == 2:
        return (1, int(shape[1]))
    return legacy_default_chunks(shape, itemsize)


class _ArrayStream:
    """Rows of one zarr v2 array, cut into chunk files as soon as a band of chunks[0] rows is complete.

    A band holds every chunk of its rows: for the legacy default chunks of a long log that is tens
    of MB per array (``obs`` of 64 envs: 54 MB at 1M env-steps, and it grows with the log, up to
    zarr's 64 MB per chunk times the chunks per band). So when a band has more than one chunk,
    each incoming block of rows is cut into its chunks' pieces, which are written to a spill file
    at their chunk's region (C order: the region ends up holding the chunk's bytes exactly), and a
    complete band is compressed one chunk at a time from there. Memory stays at a few chunks
    whatever the log length. A band of one chunk (1-D arrays, the legacy (1, E) rows) is buffered.
    """

    def __init__(
        self,
        directory: str,
        shape: Tuple[int, ...],
        chunks: Tuple[int, ...],
        dtype: np.dtype,
        codec: Any,
        pool: _Pool,
        lane: int,
        spill_path: str,
    ) -> None:
        self.pool, self.lane = pool, lane
        self.dir = directory
        self.shape = shape
        self.chunks = chunks
        self.dtype = dtype
        self.codec = codec
        self.rows_done = 0  # rows handed to chunk files
        self.fill = 0  # rows of the current band received
        self.buf: Optional[np.ndarray] = None  # the current band, when it is one chunk
        self.inner = list(_product([range(0, max(1, n), c) for n, c in zip(shape[1:], chunks[1:])]))
        self.n_bands = -(-shape[0] // chunks[0]) if shape[0] else 0
        # sha256 (32 bytes) and size of every chunk file, by band then inner chunk (for tree_digest).
        self.digests = bytearray(32 * max(1, self.n_bands * len(self.inner)))
        self.bytes_written = 0
        self.spill_fd: Optional[int] = None
        if len(self.inner) > 1:
            self.region = chunks[0] * int(np.prod(chunks[1:], dtype=np.int64)) * dtype.itemsize
            self.spill_fd = os.open(spill_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    def append(self, rows: np.ndarray) -> None:
        """Take rows (n, ...) in order; complete bands go to the pool (views, no copy)."""
        if rows.shape[1:] != self.shape[1:]:
            raise ValueError(f"rows of shape {rows.shape} do not fit an array of shape {self.shape}")
        if self.rows_done + self.fill + rows.shape[0] > self.shape[0]:
            raise ValueError(f"more rows than the array's {self.shape[0]} were appended")
        rows = np.asarray(rows, dtype=self.dtype)
        c0, i, n = self.chunks[0], 0, rows.shape[0]
        while i < n:
            if self.spill_fd is not None:
                take = min(n - i, c0 - self.fill)
                self.pool.submit(
                    self.lane, rows[i : i + take].nbytes, self._spill, rows[i : i + take], self.fill
                )
            elif self.fill == 0 and n - i >= c0:
                take = (n - i) // c0 * c0  # whole bands, handed over as one view (no copy)
                self._submit_bands(rows[i : i + take])
                i += take
                continue
            else:
                if self.buf is None:
                    self.buf = np.empty((c0,) + self.shape[1:], dtype=self.dtype)
                take = min(n - i, c0 - self.fill)
                self.buf[self.fill : self.fill + take] = rows[i : i + take]
            self.fill += take
            i += take
            if self.fill == c0:
                self._end_band()

    def _end_band(self) -> None:
        """Hand the current band (``fill`` rows) to the pool."""
        if self.fill == 0:
            return
        if self.spill_fd is not None:
            self.pool.submit(
                self.lane, 0, self._write_spilled_band, self.rows_done // self.chunks[0], self.fill
            )
            self.rows_done += self.fill
        else:
            assert self.buf is not None
            self._submit_bands(self.buf[: self.fill])
        self.buf, self.fill = None, 0  # the writer threads still hold the old buffer

    def _submit_bands(self, rows: np.ndarray) -> None:
        """Queue whole bands of one chunk each (or the array's last rows) as one task."""
        self.pool.submit(self.lane, rows.nbytes, self._write_bands, rows, self.rows_done // self.chunks[0])
        self.rows_done += rows.shape[0]

    def _write_bands(self, rows: np.ndarray, first: int) -> None:
        """(writer thread) Compress and write bands of one chunk each; band index starts at ``first``."""
        c0 = self.chunks[0]
        for k, r in enumerate(range(0, rows.shape[0], c0)):
            self._write_chunk(rows[r : r + c0], first + k, 0)

    def _spill(self, rows: np.ndarray, at_row: int) -> None:
        """(writer thread) Write each chunk's piece of ``rows`` (band rows from ``at_row``) to its region."""
        assert self.spill_fd is not None
        for j, offsets in enumerate(self.inner):
            piece = np.ascontiguousarray(rows[self._inner_index(offsets)])
            row_bytes = piece[:1].nbytes if len(piece) else 0
            _pwrite_all(
                self.spill_fd,
                piece.reshape(-1).view(np.uint8).data,
                j * self.region + at_row * row_bytes,
            )

    def _write_spilled_band(self, band: int, n_rows: int) -> None:
        """(writer thread) Read each chunk of a complete band back from the spill file; compress and write it."""
        assert self.spill_fd is not None
        for j, offsets in enumerate(self.inner):
            block_shape = (n_rows,) + tuple(
                min(c, n - o) for o, c, n in zip(offsets, self.chunks[1:], self.shape[1:])
            )
            nbytes = int(np.prod(block_shape, dtype=np.int64)) * self.dtype.itemsize
            data = os.pread(self.spill_fd, nbytes, j * self.region)
            if len(data) != nbytes:
                raise OSError(f"{self.dir}: spill file returned {len(data)} of {nbytes} bytes")
            self._write_chunk(np.frombuffer(data, dtype=self.dtype).reshape(block_shape), band, j)

    def _inner_index(self, offsets: Tuple[int, ...]) -> Tuple[slice, ...]:
        return (slice(None),) + tuple(slice(o, o + c) for o, c in zip(offsets, self.chunks[1:]))

    def _write_chunk(self, band_rows: np.ndarray, band: int, j: int) -> None:
        """Compress and write chunk ``j`` of ``band``; ``band_rows`` is the band (j == 0, one chunk) or the chunk."""
        offsets = self.inner[j]
        block = band_rows if len(self.inner) > 1 else band_rows[self._inner_index(offsets)]
        if block.shape != self.chunks:
            padded = np.zeros(self.chunks, dtype=self.dtype)  # fill value 0 / False, as zarr pads
            padded[tuple(slice(0, n) for n in block.shape)] = block
            block = padded
        key = self._key(band, j)
        data = self.codec.encode(np.ascontiguousarray(block))
        index = band * len(self.inner) + j
        self.digests[32 * index : 32 * index + 32] = hashlib.sha256(data).digest()
        self.bytes_written += len(data)
        fd = os.open(os.path.join(self.dir, key), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _pwrite_all(fd, memoryview(data), 0)
        finally:
            os.close(fd)

    def chunk_digests(self) -> Iterator[Tuple[str, bytes]]:
        """(after close) Yield (chunk key, sha256) of every chunk file."""
        for band in range(self.n_bands):
            for j in range(len(self.inner)):
                index = band * len(self.inner) + j
                yield self._key(band, j), bytes(self.digests[32 * index : 32 * index + 32])

    def _key(self, band: int, j: int) -> str:
        """Return the file name of chunk ``j`` of ``band`` ("3.0.1")."""
        return ".".join(
            str(i) for i in (band,) + tuple(o // c for o, c in zip(self.inner[j], self.chunks[1:]))
        )

    def close(self) -> None:
        self._end_band()
        if self.rows_done != self.shape[0]:
            raise ValueError(f"{self.dir}: {self.rows_done} rows written, the array has {self.shape[0]}")

    def release(self) -> None:
        """Close the spill file (after the pool has drained or stopped)."""
        if self.spill_fd is not None:
            os.close(self.spill_fd)
            self.spill_fd = None


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class _Pool:
    """Compress and write chunk files on a few threads (file creation dominates for one-row chunks).

    Each array has a lane (a one-thread executor), so files of one folder are created by one
    thread and the lanes work on different folders in parallel. At most ``max_pending_bytes`` of
    chunks wait, so memory stays bounded; the first failure is re-raised. Each file's bytes depend
    only on its chunk, so the order of writes changes nothing.
    """

    def __init__(self, lanes: int = 4, max_pending_bytes: int = 16 << 20) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.lanes = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="moetape-zarr") for _ in range(lanes)
        ]
        self.pending: collections.deque[Tuple[Any, int]] = collections.deque()
        self.pending_bytes = 0
        self.max_pending_bytes = max_pending_bytes

    def submit(self, lane: int, nbytes: int, fn: Callable[..., None], *args: Any) -> None:
        """Run fn(*args) on a lane (args hold ``nbytes`` of rows); wait for the oldest tasks while too
        many bytes are queued."""
        fut = self.lanes[lane % len(self.lanes)].submit(fn, *args)
        self.pending.append((fut, nbytes))
        self.pending_bytes += nbytes
        while self.pending_bytes > self.max_pending_bytes or len(self.pending) > 65536:
            self._pop()

    def _pop(self) -> None:
        fut, nbytes = self.pending.popleft()
        self.pending_bytes -= nbytes
        fut.result()

    def drain(self) -> None:
        while self.pending:
            self._pop()

    def shutdown(self) -> None:
        for fut, _ in self.pending:
            fut.cancel()
        for ex in self.lanes:
            ex.shutdown(wait=True)
        self.pending.clear()
        self.pending_bytes = 0


def _product(ranges: Sequence[range]) -> Iterator[Tuple[int, ...]]:
    if not ranges:
        yield ()
        return
    for head in ranges[0]:
        for tail in _product(ranges[1:]):
            yield (head,) + tail


class ZarrV2Writer:
    """Create a zarr v2 group at ``path`` and stream rows into arrays of known shape.

    Example:
        w = ZarrV2Writer(tmp_dir)
        w.create("obs", (N, E, O), "float32")
        w.append("obs", rows)             # any number of rows at a time, in order
        w.close(attrs={"policy_dt_s": 0.02})
    """

    def __init__(self, path: str) -> None:
        import zarr

        self.path = path
        if int(zarr.__version__.split(".")[0]) >= 3:
            self._group = zarr.open_group(store=path, mode="w-", zarr_format=2)
        else:  # zarr 2 (installed on Python < 3.11) writes format v2 and has no zarr_format keyword
            self._group = zarr.open_group(store=path, mode="w-")
        self._arrays: Dict[str, _ArrayStream] = {}
        self._codec = _blosc()
        self._pool = _Pool()
        self._lane_count = [0, 0]
        # Spill files of multi-chunk bands (see _ArrayStream), beside the store on the same disk.
        self._spill_dir = tempfile.mkdtemp(
            prefix=".moetape-spill-", dir=os.path.dirname(os.path.abspath(path))
        )

    def create(
        self, name: str, shape: Sequence[int], dtype: npt.DTypeLike, chunks: Optional[Sequence[int]] = None
    ) -> None:
        """Create array ``name`` (legacy chunks unless given); its rows must then all be appended."""
        dt = np.dtype(dtype)
        shape_t = tuple(int(n) for n in shape)
        chunks_t = tuple(int(c) for c in (chunks or legacy_chunks(shape_t, dt.itemsize)))
        fill = False if dt.kind == "b" else 0
        if hasattr(self._group, "create_array"):  # zarr 3
            self._group.create_array(
                name,
                shape=shape_t,
                chunks=chunks_t,
                dtype=dt,
                compressors=self._codec,
                fill_value=fill,
                order="C",
                config={"write_empty_chunks": True},
            )
        else:  # zarr 2 (installed on Python < 3.11)
            self._group.create_dataset(
                name,
                shape=shape_t,
                chunks=chunks_t,
                dtype=dt,
                compressor=self._codec,
                fill_value=fill,
                order="C",
                write_empty_chunks=True,
            )
        self._arrays[name] = _ArrayStream(
            os.path.join(self.path, name),
            shape_t,
            chunks_t,
            dt,
            self._codec,
            self._pool,
            self._next_lane(chunks_t[0] == 1),
            os.path.join(self._spill_dir, str(len(self._arrays))),
        )

    def _next_lane(self, one_row_chunks: bool) -> int:
        """Spread the arrays with one-row chunks (one file per row) over the lanes first."""
        kind = int(one_row_chunks)
        self._lane_count[kind] += 1
        return self._lane_count[kind] - 1 + (0 if one_row_chunks else 2)

    def append(self, name: str, rows: np.ndarray) -> None:
        """Append rows (n, ...) to array ``name``; whole chunks are compressed and written at once."""
        self._arrays[name].append(rows)

    def close(self, *, attrs: Optional[Dict[str, Any]] = None) -> None:
        """Write the last partial chunks and the group's attributes (sorted keys: the same bytes each time)."""
        try:
            for arr in self._arrays.values():
                arr.close()
            self._pool.drain()
        finally:
            self._pool.shutdown()
            self._remove_spill()
        for name in list(self._arrays) + [""]:
            empty = os.path.join(self.path, name, ".zattrs")  # zarr 2 wrote no empty .zattrs
            if os.path.exists(empty):
                with open(empty, encoding="utf-8") as f:
                    if json.loads(f.read() or "{}") == {}:
                        os.remove(empty)
        if attrs:
            with open(os.path.join(self.path, ".zattrs"), "w", encoding="utf-8") as f:
                f.write(json.dumps(attrs, indent=4, sort_keys=True, ensure_ascii=True))

    def tree_digest(self) -> Dict[str, Any]:
        """After close: {"sha256", "bytes", "files"} of the store, as ``tree_sha256`` computes them.

        Chunk digests come from the writer threads; only the small metadata files are read back.
        """
        entries: Dict[str, str] = {}
        size = 0
        for name, arr in self._arrays.items():
            for key, digest in arr.chunk_digests():
                entries[f"{name}/{key}"] = digest.hex()
            size += arr.bytes_written
        n_chunks = len(entries)
        for root, _dirs, files in os.walk(self.path):
            for fname in files:
                if not fname.startswith("."):  # a chunk file; metadata are .zarray, .zattrs, .zgroup
                    n_chunks -= 1
                    continue
                full = os.path.join(root, fname)
                with open(full, "rb") as f:
                    data = f.read()
                entries[os.path.relpath(full, self.path).replace(os.sep, "/")] = hashlib.sha256(
                    data
                ).hexdigest()
                size += len(data)
        if n_chunks != 0:
            raise RuntimeError(
                f"{self.path}: chunk files on disk differ from the chunks written by {n_chunks}"
            )
        return {"sha256": tree_sha256(entries), "bytes": size, "files": len(entries)}

    def abort(self) -> None:
        """Stop the writer threads after a failure (the caller removes the partial store)."""
        self._pool.shutdown()
        self._remove_spill()

    def _remove_spill(self) -> None:
        for arr in self._arrays.values():
            arr.release()
        shutil.rmtree(self._spill_dir, ignore_errors=True)


def tree_sha256(entries: Dict[str, str]) -> str:
    """Digest of a folder: sha256 of the lines "<sha256>  <relative path>\\n" sorted by path."""
    text = "".join(f"{entries[rel]}  {rel}\n" for rel in sorted(entries))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _blosc() -> Any:
    from numcodecs import Blosc

    cfg = dict(BLOSC_CONFIG)
    cfg.pop("id")
    return Blosc(**cfg)
