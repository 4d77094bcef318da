"""A pickle writer whose output numpy 1.x and numpy 2.x both load, for the legacy .pkl files.

numpy 2 pickles arrays as ``numpy._core.multiarray._reconstruct``, a module numpy 1.x does not have
("No module named 'numpy._core'"), under every protocol. ``write_pickle`` emits the opcodes itself
(protocol 3) for plain data only, and references the names numpy 1.x wrote and numpy 2 still loads
without a warning:

    ndarray     numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b') + __setstate__
                (1, shape, dtype, False, raw C-order bytes)       [what ndarray.__reduce__ gave in 1.x]
    np scalar   numpy.core.multiarray.scalar(dtype, raw bytes)
    dtype       numpy.dtype('f4', False, True) + __setstate__ (3, '<', None, None, None, -1, -1, 0)

Accepted values: None, bool, int, float, str, bytes, list, tuple, dict, numpy arrays (numeric or
bool), numpy scalars, and ``RowList`` (a list stored as blocks of rows, emitted as a plain list of
per-row arrays or floats, so a large list needs no Python object per row). Anything else raises
TypeError: nothing that runs code when loaded can get in. The output depends only on the value,
so writing the same value twice gives the same bytes.
"""

from __future__ import annotations

import hashlib
import struct
from typing import IO, Any, Callable, Dict, Iterable, Iterator, List, Sequence, Tuple

import numpy as np

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
