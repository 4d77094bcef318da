"""Writers for the legacy file formats: numpy-1.x-loadable pickles and zarr v2 directory stores.

Pickles. numpy 2 pickles arrays as ``numpy._core.multiarray._reconstruct``, a module numpy 1.x
does not have ("No module named 'numpy._core'"), under every protocol. ``write_pickle`` emits
the opcodes itself (protocol 3) for plain data only, and references the names numpy 1.x wrote
and numpy 2 still loads without a warning:

    ndarray     numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b') + __setstate__
                (1, shape, dtype, False, raw C-order bytes)       [what ndarray.__reduce__ gave in 1.x]
    np scalar   numpy.core.multiarray.scalar(dtype, raw bytes)
    dtype       numpy.dtype('f4', False, True) + __setstate__ (3, '<', None, None, None, -1, -1, 0)

Accepted values: None, bool, int, float, str, bytes, list, tuple, dict, numpy arrays (numeric or
bool), numpy scalars, and ``RowList`` (a list stored as blocks of rows, emitted as a plain list of
per-row arrays or floats, so a large list needs no Python object per row). Anything else raises
TypeError: nothing that runs code when loaded can get in. The output depends only on the value,
so writing the same value twice gives the same bytes.

Zarr v2. ``ZarrV2Writer`` streams arrays of a known final shape into a zarr v2 directory store
(what zarr 2.16 reads): metadata is created with zarr (``zarr_format=2``), chunks are compressed
with the zarr 2 default compressor (Blosc lz4, level 5, byte shuffle) and written as files as soon
as their rows are complete. Edge chunks are padded with the fill value, as zarr pads them.
Writing chunk files directly keeps the legacy one-row chunks of 2-D arrays affordable.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import struct
from typing import IO, Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

# ---------------------------------------------------------------------------------------- pickle

_PROTO = b"\x80\x03"
_STOP = b"."
_MARK = b"("
_EMPTY_LIST = b"]"
_EMPTY_DICT = b"}"
_EMPTY_TUPLE = b")"
_APPENDS = b"e"
_SETITEMS = b"u"
_TUPLE = b"t"
_TUPLES = {1: b"\x85", 2: b"\x86", 3: b"\x87"}
_REDUCE = b"R"
_BUILD = b"b"
_NONE = b"N"
_TRUE = b"\x88"
_FALSE = b"\x89"
_BATCH = 1000  # items per APPENDS/SETITEMS, as the C pickler batches

_RECONSTRUCT = ("numpy.core.multiarray", "_reconstruct")
_SCALAR = ("numpy.core.multiarray", "scalar")
_NDARRAY = ("numpy", "ndarray")
_DTYPE = ("numpy", "dtype")


class RowList:
    """A list given as blocks of rows: pickled exactly like ``[row for block in blocks for row in block]``.

    Args:
        blocks: arrays whose first axis is the row axis; rows are the items.
        as_float: emit each row (0-d) as a Python float instead of a numpy array.
    """

    def __init__(self, blocks: Iterable[np.ndarray] = (), *, as_float: bool = False) -> None:
        self.blocks: List[np.ndarray] = list(blocks)
        self.as_float = as_float

    def append_block(self, block: np.ndarray) -> None:
        """Add the rows of ``block`` (shape (n, ...)) at the end."""
        self.blocks.append(block)

    def __len__(self) -> int:
        return sum(int(b.shape[0]) for b in self.blocks)

    def __iter__(self) -> Iterator[Any]:
        for block in self.blocks:
            if self.as_float:
                yield from (float(v) for v in block.tolist())
            else:
                yield from block

    def to_list(self) -> List[Any]:
        """Return the items as a plain list (floats, or per-row numpy arrays)."""
        return list(self)


def _check_dtype(dt: np.dtype) -> None:
    if dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None:
        raise TypeError(f"legacy pickle: dtype {dt} is not plain numeric/bool data")


class _Emitter:
    """Emit pickle opcodes for plain data; globals and dtypes are memoized on first use."""

    def __init__(self, write: Callable[[Any], Any]) -> None:
        self.w = write
        self.memo: Dict[Any, int] = {}

    # -- memo
    def _get(self, key: Any) -> bool:
        idx = self.memo.get(key)
        if idx is None:
            return False
        self.w(b"h" + bytes([idx]) if idx < 256 else b"j" + struct.pack("<I", idx))
        return True

    def _put(self, key: Any) -> None:
        idx = len(self.memo)
        self.memo[key] = idx
        self.w(b"q" + bytes([idx]) if idx < 256 else b"r" + struct.pack("<I", idx))

    def _global(self, ref: Tuple[str, str]) -> None:
        if not self._get(ref):
            self.w(b"c" + ref[0].encode() + b"\n" + ref[1].encode() + b"\n")
            self._put(ref)

    # -- scalars
    def _int(self, v: int) -> None:
        if 0 <= v < 256:
            self.w(b"K" + bytes([v]))
        elif 0 <= v < 65536:
            self.w(b"M" + struct.pack("<H", v))
        elif -(2**31) <= v < 2**31:
            self.w(b"J" + struct.pack("<i", v))
        else:
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.w(b"\x8a" + bytes([len(raw)]) + raw)

    def _str(self, v: str) -> None:
        raw = v.encode("utf-8", "surrogatepass")
        self.w(b"X" + struct.pack("<I", len(raw)) + raw)

    def _bytes_header(self, n: int) -> None:
        if n > 0xFFFFFFFF:
            raise ValueError("legacy pickle: one bytes value over 4 GiB cannot be written with protocol 3")
        self.w(b"C" + bytes([n]) if n < 256 else b"B" + struct.pack("<I", n))

    def _bytes(self, v: bytes) -> None:
        self._bytes_header(len(v))
        self.w(v)

    def _tuple(self, items: Sequence[Any]) -> None:
        if not items:
            self.w(_EMPTY_TUPLE)
            return
        if len(items) <= 3:
            for it in items:
                self.emit(it)
            self.w(_TUPLES[len(items)])
            return
        self.w(_MARK)
        for it in items:
            self.emit(it)
        self.w(_TUPLE)

    # -- numpy
    def _dtype(self, dt: np.dtype) -> None:
        key = ("dtype", dt.str)
        if self._get(key):
            return
        _check_dtype(dt)
        reduced: Any = dt.__reduce__()  # (numpy.dtype, ("f4", False, True), (3, "<", None, ...))
        _cls, args, state = reduced
        self._global(_DTYPE)
        self._tuple(args)
        self.w(_REDUCE)
        self._tuple(state)
        self.w(_BUILD)
        self._put(key)

    def _array(self, a: np.ndarray) -> None:
        _check_dtype(a.dtype)
        self._array_head(a.shape, a.dtype, a.nbytes)
        self.w(np.ascontiguousarray(a).tobytes())
        self.w(_TUPLE + _BUILD)

    def _array_head(self, shape: Tuple[int, ...], dtype: np.dtype, nbytes: int) -> None:
        """Everything of an array's pickle before its raw bytes (``_TUPLE + _BUILD`` follows them)."""
        self._global(_RECONSTRUCT)
        if not self._get("args0"):
            self._global(_NDARRAY)
            self._tuple((0,))
            self._bytes(b"b")
            self.w(_TUPLES[3])
            self._put("args0")
        self.w(_REDUCE + _MARK)
        self._int(1)
        self._tuple(tuple(int(n) for n in shape))
        self._dtype(dtype)
        self.w(_FALSE)
        self._bytes_header(nbytes)

    def _row_arrays(self, block: np.ndarray) -> None:
        """Emit each row of ``block`` as an array; after the first, rows share one precomputed head."""
        if block.shape[0] == 0:
            return
        _check_dtype(block.dtype)
        if any(k not in self.memo for k in (_RECONSTRUCT, "args0", ("dtype", block.dtype.str))):
            self._array(block[0])  # defines the memo entries the shared head refers to
            block = block[1:]
        n = block.shape[0]
        if n == 0:
            return
        row_shape, nb = block.shape[1:], block[0].nbytes
        parts: List[bytes] = []
        w, self.w = self.w, parts.append
        try:
            self._array_head(row_shape, block.dtype, nb)
        finally:
            self.w = w
        head, tail = b"".join(parts), _TUPLE + _BUILD
        out = np.empty((n, len(head) + nb + len(tail)), dtype=np.uint8)
        out[:, : len(head)] = np.frombuffer(head, dtype=np.uint8)
        out[:, len(head) : len(head) + nb] = np.ascontiguousarray(block).view(np.uint8).reshape(n, nb)
        out[:, len(head) + nb :] = np.frombuffer(tail, dtype=np.uint8)
        self.w(out.data)

    def _row_floats(self, block: np.ndarray) -> None:
        """Emit each element of a 1-D block as a Python float (BINFLOAT, big-endian double)."""
        out = np.empty((block.shape[0], 9), dtype=np.uint8)
        out[:, 0] = ord("G")
        out[:, 1:] = np.ascontiguousarray(block, dtype=">f8").view(np.uint8).reshape(-1, 8)
        self.w(out.data)

    def _rowlist(self, rl: RowList) -> None:
        """Emit a RowList as a list, batched every 1000 items whatever the block boundaries."""
        self.w(_EMPTY_LIST)
        emit_block = self._row_floats if rl.as_float else self._row_arrays
        in_batch = 0
        for block in rl.blocks:
            i, n = 0, int(block.shape[0])
            while i < n:
                if in_batch == 0:
                    self.w(_MARK)
                take = min(n - i, _BATCH - in_batch)
                emit_block(block[i : i + take])
                i += take
                in_batch += take
                if in_batch == _BATCH:
                    self.w(_APPENDS)
                    in_batch = 0
        if in_batch:
            self.w(_APPENDS)

    def _np_scalar(self, v: np.generic) -> None:
        _check_dtype(v.dtype)
        self._global(_SCALAR)
        self._dtype(v.dtype)
        self._bytes(v.tobytes())
        self.w(_TUPLES[2] + _REDUCE)

    # -- containers
    def _items(self, items: Iterable[Any], op: bytes, pairs: bool) -> None:
        batch: List[Any] = []
        for it in items:
            batch.append(it)
            if len(batch) == _BATCH:
                self._flush(batch, op, pairs)
                batch = []
        if batch:
            self._flush(batch, op, pairs)

    def _flush(self, batch: List[Any], op: bytes, pairs: bool) -> None:
        self.w(_MARK)
        for it in batch:
            if pairs:
                self.emit(it[0])
                self.emit(it[1])
            else:
                self.emit(it)
        self.w(op)

    def emit(self, v: Any) -> None:
        """Write the opcodes of ``v``; raise TypeError for anything but plain data."""
        t = type(v)
        if v is None:
            self.w(_NONE)
        elif t is bool:
            self.w(_TRUE if v else _FALSE)
        elif t is int:
            self._int(v)
        elif t is float:
            self.w(b"G" + struct.pack(">d", v))
        elif t is str:
            self._str(v)
        elif t is bytes:
            self._bytes(v)
        elif t is np.ndarray:
            self._array(v)
        elif isinstance(v, np.generic):
            self._np_scalar(v)
        elif t is RowList:
            self._rowlist(v)
        elif t is list:
            self.w(_EMPTY_LIST)
            self._items(v, _APPENDS, False)
        elif t is tuple:
            self._tuple(v)
        elif t is dict:
            self.w(_EMPTY_DICT)
            self._items(v.items(), _SETITEMS, True)
        else:
            raise TypeError(
                f"legacy pickle: {t.__name__} is not plain data (dict, list, tuple, str, number, bool, None, "
                "numpy array or scalar)"
            )


def dump(obj: Any, file: IO[bytes]) -> None:
    """Pickle plain data ``obj`` to ``file`` so that numpy 1.x and numpy 2.x both load it."""
    em = _Emitter(file.write)
    file.write(_PROTO)
    em.emit(obj)
    file.write(_STOP)


def dumps(obj: Any) -> bytes:
    """Return the legacy-loadable pickle of plain data ``obj`` (see ``dump``)."""
    import io

    buf = io.BytesIO()
    dump(obj, buf)
    return buf.getvalue()


class _HashingWriter:
    """A binary file wrapper that feeds every written byte to sha256 as well."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.n = 0

    def write(self, data: Any) -> int:
        self.h.update(data)
        self.n += len(data) if isinstance(data, bytes) else memoryview(data).nbytes
        return self.f.write(data)


def write_pickle(obj: Any, path: str) -> Dict[str, Any]:
    """Write ``obj`` with ``dump`` to ``path`` (the caller handles atomic renames).

    Returns:
        {"sha256": hex digest of the file, "bytes": its size}, computed while writing.
    """
    with open(path, "wb", buffering=1 << 20) as f:
        hw = _HashingWriter(f)
        dump(obj, hw)  # type: ignore[arg-type]
    return {"sha256": hw.h.hexdigest(), "bytes": hw.n}


# ---------------------------------------------------------------------------------------- zarr v2

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
    """Rows of one zarr v2 array, buffered until whole chunks along axis 0 can be written."""

    def __init__(
        self,
        directory: str,
        shape: Tuple[int, ...],
        chunks: Tuple[int, ...],
        dtype: np.dtype,
        codec: Any,
        pool: _Pool,
        lane: int,
        digests: Dict[str, Tuple[str, int]],
    ) -> None:
        self.pool, self.lane, self.digests = pool, lane, digests
        self.dir = directory
        self.shape = shape
        self.chunks = chunks
        self.dtype = dtype
        self.codec = codec
        self.rows_done = 0  # rows handed to chunk files
        self.buf: Optional[np.ndarray] = None  # a partly filled row of chunks (chunks[0] rows)
        self.fill = 0
        self.grid = [range(0, max(1, n), c) for n, c in zip(shape[1:], chunks[1:])]

    def append(self, rows: np.ndarray) -> None:
        """Take rows (n, ...): whole chunk rows go out as views (no copy), the rest waits in ``buf``."""
        if rows.shape[1:] != self.shape[1:]:
            raise ValueError(f"rows of shape {rows.shape} do not fit an array of shape {self.shape}")
        if self.rows_done + self.fill + rows.shape[0] > self.shape[0]:
            raise ValueError(f"more rows than the array's {self.shape[0]} were appended")
        rows = np.asarray(rows, dtype=self.dtype)
        c0, i, n = self.chunks[0], 0, rows.shape[0]
        while i < n:
            if self.fill == 0 and n - i >= c0:
                m = (n - i) // c0 * c0  # whole chunk rows, handed over as one view (no copy)
                self._write_row_chunks(rows[i : i + m])
                i += m
                continue
            if self.buf is None:
                self.buf = np.empty((c0,) + self.shape[1:], dtype=self.dtype)
            take = min(n - i, c0 - self.fill)
            self.buf[self.fill : self.fill + take] = rows[i : i + take]
            self.fill += take
            i += take
            if self.fill == c0:
                self._flush_buf()

    def _flush_buf(self) -> None:
        if self.buf is not None and self.fill:
            self._write_row_chunks(self.buf[: self.fill])
        self.buf, self.fill = None, 0  # the writer threads still hold the old buffer

    def _write_row_chunks(self, rows: np.ndarray) -> None:
        """Queue ``rows`` (whole chunk rows, or the array's last rows) as one task for this array's lane."""
        first = self.rows_done // self.chunks[0]
        self.pool.submit(self.lane, self._write_rows, rows, first)
        self.rows_done += rows.shape[0]

    def _write_rows(self, rows: np.ndarray, first: int) -> None:
        """(writer thread) Compress and write every chunk of ``rows``; chunk row index starts at ``first``."""
        c0 = self.chunks[0]
        for k, r in enumerate(range(0, rows.shape[0], c0)):
            part = rows[r : r + c0]
            for offsets in _product(self.grid):
                idx = (slice(None),) + tuple(slice(o, o + c) for o, c in zip(offsets, self.chunks[1:]))
                block = part[idx]
                if block.shape != self.chunks:
                    padded = np.zeros(self.chunks, dtype=self.dtype)  # fill value 0 / False, as zarr pads
                    padded[tuple(slice(0, n) for n in block.shape)] = block
                    block = padded
                key = ".".join(
                    str(i) for i in (first + k,) + tuple(o // c for o, c in zip(offsets, self.chunks[1:]))
                )
                _write_chunk(block, os.path.join(self.dir, key), self.codec, self.digests)

    def close(self) -> None:
        self._flush_buf()
        if self.rows_done != self.shape[0]:
            raise ValueError(f"{self.dir}: {self.rows_done} rows written, the array has {self.shape[0]}")


def _write_chunk(block: np.ndarray, path: str, codec: Any, digests: Dict[str, Tuple[str, int]]) -> None:
    data = codec.encode(np.ascontiguousarray(block))
    digests[path] = (hashlib.sha256(data).hexdigest(), len(data))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


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

    def submit(self, lane: int, fn: Callable[..., None], block: np.ndarray, *args: Any) -> None:
        """Run fn(block, *args) on a lane; wait for the oldest tasks while too many bytes are queued."""
        fut = self.lanes[lane % len(self.lanes)].submit(fn, block, *args)
        self.pending.append((fut, block.nbytes))
        self.pending_bytes += block.nbytes
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
        self._group = zarr.open_group(store=path, mode="w-", zarr_format=2)
        self._arrays: Dict[str, _ArrayStream] = {}
        self._codec = _blosc()
        self._pool = _Pool()
        self._lane_count = [0, 0]
        self._digests: Dict[str, Tuple[str, int]] = {}  # chunk path -> (sha256, bytes), by the writer threads

    def create(
        self, name: str, shape: Sequence[int], dtype: npt.DTypeLike, chunks: Optional[Sequence[int]] = None
    ) -> None:
        """Create array ``name`` (legacy chunks unless given); its rows must then all be appended."""
        dt = np.dtype(dtype)
        shape_t = tuple(int(n) for n in shape)
        chunks_t = tuple(int(c) for c in (chunks or legacy_chunks(shape_t, dt.itemsize)))
        self._group.create_array(
            name,
            shape=shape_t,
            chunks=chunks_t,
            dtype=dt,
            compressors=self._codec,
            fill_value=False if dt.kind == "b" else 0,
            order="C",
            config={"write_empty_chunks": True},
        )
        self._arrays[name] = _ArrayStream(
            os.path.join(self.path, name),
            shape_t,
            chunks_t,
            dt,
            self._codec,
            self._pool,
            self._next_lane(chunks_t[0] == 1),
            self._digests,
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
        for root, _dirs, files in os.walk(self.path):
            for name in files:
                full = os.path.join(root, name)
                rel = os.path.relpath(full, self.path).replace(os.sep, "/")
                known = self._digests.get(full)
                if known is None:
                    with open(full, "rb") as f:
                        data = f.read()
                    known = (hashlib.sha256(data).hexdigest(), len(data))
                entries[rel] = known[0]
                size += known[1]
        return {"sha256": tree_sha256(entries), "bytes": size, "files": len(entries)}

    def abort(self) -> None:
        """Stop the writer threads after a failure (the caller removes the partial store)."""
        self._pool.shutdown()


def tree_sha256(entries: Dict[str, str]) -> str:
    """Digest of a folder: sha256 of the lines "<sha256>  <relative path>\\n" sorted by path."""
    text = "".join(f"{entries[rel]}  {rel}\n" for rel in sorted(entries))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _blosc() -> Any:
    from numcodecs import Blosc

    cfg = dict(BLOSC_CONFIG)
    cfg.pop("id")
    return Blosc(**cfg)
