"""Arrow columns for Rerun's ``send_columns``, built straight from numpy arrays (no per-row Python).

A ``Columns`` holds one component's column for many entities at once (all envs of a chunk, or all
(env, body) pairs): one Arrow array, built once; each entity's column is a zero-copy slice of it.
Blocks are equal (``rows`` rows each) or, after ``blocks(counts)``, of their own lengths (the rows
a mask kept per env: the export leaves stale EE rows out this way).
The Arrow types and component descriptors are those Rerun's own archetypes produce.
``FreshBodies``: body poses with stale rows after a reset replaced (see ``rerun_export``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import rerun as rr

from moetape.schema.reader import Log, fresh_rows, stale_mask

_TEMPLATES: Dict[str, Tuple[Any, pa.DataType]] = {}


def _template(component: str) -> Tuple[Any, pa.DataType]:
    """Return (descriptor, Arrow type of the column) of a component, as Rerun's own archetypes build it."""
    if not _TEMPLATES:
        v3 = np.zeros((1, 3), np.float32)
        for cols in (
            rr.Transform3D.columns(translation=v3, quaternion=np.array([[0, 0, 0, 1]], np.float32)),
            rr.Scalars.columns(scalars=np.zeros(1)),
            rr.Points3D.columns(positions=v3),
            rr.LineStrips3D.columns(strips=[np.zeros((2, 3), np.float32)]),
            rr.Boxes3D.columns(centers=v3, quaternions=np.array([[0, 0, 0, 1]], np.float32)),
        ):
            for c in cols:
                d = c.component_descriptor()
                _TEMPLATES[d.component] = (d, c.as_arrow_array().type)
    return _TEMPLATES[component]


class ArrowColumn:
    """A component column for ``send_columns`` whose Arrow array is already built."""

    __slots__ = ("array", "descriptor")

    def __init__(self, descriptor: Any, array: pa.Array) -> None:
        self.descriptor, self.array = descriptor, array

    def component_descriptor(self) -> Any:
        """The component's descriptor (archetype, component, component type)."""
        return self.descriptor

    def as_arrow_array(self) -> pa.Array:
        """The column: one list per row."""
        return self.array


def _offsets(rows: int, per_row: int) -> pa.Array:
    return pa.array(np.arange(0, rows * per_row + 1, per_row, dtype=np.int32))


def _vectors(values: npt.NDArray[Any], typ: pa.DataType) -> pa.Array:
    """Flat float32 vectors of ``typ`` (a fixed-size list type) from an array (..., n)."""
    flat = np.ascontiguousarray(values, np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), type=typ)


class Columns:
    """One component's column for many entities at once: block b (``rows`` rows) = one entity's column.

    The Arrow array is built once from a numpy array whose leading axes are the blocks; each
    entity's column is a zero-copy slice of it.
    """

    __slots__ = ("array", "descriptor", "rows", "starts")

    def __init__(self, descriptor: Any, array: pa.Array, rows: int) -> None:
        self.descriptor, self.array, self.rows = descriptor, array, rows
        self.starts: Optional[npt.NDArray[np.int64]] = None

    def __getitem__(self, block: int) -> ArrowColumn:
        if self.starts is not None:
            a, b = int(self.starts[block]), int(self.starts[block + 1])
            return ArrowColumn(self.descriptor, self.array.slice(a, b - a))
        return ArrowColumn(self.descriptor, self.array.slice(block * self.rows, self.rows))

    def blocks(self, counts: npt.NDArray[Any]) -> Columns:
        """Cut the rows into blocks of ``counts`` rows each (rows left out of some blocks); return self."""
        self.starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        return self

    @classmethod
    def _lists(cls, component: str, inner: pa.Array, row_shape: Tuple[int, ...], per_row: int) -> Columns:
        """Rows of ``per_row`` items of ``inner``; ``row_shape`` = (blocks..., rows)."""
        desc, typ = _template(component)
        n_rows = int(np.prod(row_shape, dtype=np.int64))
        return cls(desc, pa.ListArray.from_arrays(_offsets(n_rows, per_row), inner, type=typ), row_shape[-1])

    @classmethod
    def vectors(cls, component: str, values: npt.NDArray[Any], *, batch: bool = False) -> Columns:
        """Vectors (blocks..., rows, n), one a row; ``batch``: (blocks..., rows, m, n), m a row."""
        _, typ = _template(component)
        row_shape = values.shape[: values.ndim - 2] if batch else values.shape[:-1]
        per_row = values.shape[-2] if batch else 1
        return cls._lists(component, _vectors(values, typ.value_type), row_shape, per_row)

    @classmethod
    def scalars(cls, values: npt.NDArray[Any], *, batch: bool = False, float32: bool = True) -> Columns:
        """Scalars (blocks..., rows), one series; ``batch``: (blocks..., rows, m), m series.

        ``float32`` (default): the values as float32, the log's own type, in half the bytes of the
        Scalars archetype's float64 (Rerun's time series read float32 and float64 alike: "Plot any
        scalar" in Rerun's docs; the headless-browser test sees the curves); else float64.
        """
        dtype = np.float32 if float32 else np.float64
        flat = pa.array(np.ascontiguousarray(values, dtype).reshape(-1))
        row_shape = values.shape[:-1] if batch else values.shape
        desc, typ = _template("Scalars:scalars")
        if float32:
            field = typ.value_field
            typ = pa.list_(pa.field(field.name, pa.float32(), nullable=field.nullable))
        n_rows = int(np.prod(row_shape, dtype=np.int64))
        per_row = values.shape[-1] if batch else 1
        return cls(desc, pa.ListArray.from_arrays(_offsets(n_rows, per_row), flat, type=typ), row_shape[-1])

    @classmethod
    def strips(cls, values: npt.NDArray[Any]) -> Columns:
        """LineStrips3D (blocks..., rows, strips, points, 3)."""
        _, typ = _template("LineStrips3D:strips")
        row_shape = values.shape[:-3]
        strips, points = values.shape[-3:-1]
        n_strips = int(np.prod(row_shape, dtype=np.int64)) * strips
        strip_typ = typ.value_type
        inner = pa.ListArray.from_arrays(
            _offsets(n_strips, points), _vectors(values, strip_typ.value_type), type=strip_typ
        )
        return cls._lists("LineStrips3D:strips", inner, row_shape, strips)


class FreshBodies:
    """A chunk's body poses with each stale row (``stale_after_reset``) replaced by its fresh row's.

    ``fields``: the declared-stale body fields the export sends; ``sel``: the reader's env selection
    of ``envs``. Keeps, across chunks, each env's last fresh rows (policy-rate logs).
    """

    def __init__(self, log: Log, envs: List[int], fields: List[str], sel: Any) -> None:
        self.log, self.envs, self.stale_bodies, self.sel = log, envs, fields, sel
        self.rows_replaced = 0  # frame rows (env-rows) whose body poses came from a fresh row
        self._carry: Optional[Dict[str, npt.NDArray[Any]]] = None  # policy-rate: last fresh body rows
        self._carry_ok: Optional[npt.NDArray[np.bool_]] = None

    def __call__(
        self, start: int, d: Dict[str, npt.NDArray[Any]], stale: Optional[npt.NDArray[np.bool_]]
    ) -> Dict[str, npt.NDArray[Any]]:
        """Return the chunk's body poses with each stale row replaced by its fresh row's (``fresh_rows``).

        Substep logs: the step's row 1. Policy-rate logs: the previous fresh row, from an earlier
        chunk (or, for the first, the steps before the export's start) if none precedes it in this
        one, else the next fresh row; a row with no fresh row anywhere near stays as stored.
        Vectorised: only the stale rows are written (the chunk's own arrays, in place).
        """
        out = {f: d[f] for f in ("frames/body_pos", "frames/body_quat_xyzw")}
        if not self.stale_bodies or stale is None:
            return out
        fps = self.log.frames_per_step
        src = fresh_rows(stale, fps)  # (rows, envs)
        if fps == 1:
            if self._carry is None:
                self._seed_carry(start)
            missing = src < 0
            if missing.any():
                n = src.shape[0]
                nxt = np.where(stale, n, np.arange(n)[:, None])
                nxt = np.minimum.accumulate(nxt[::-1], axis=0)[::-1]
                ok = self._carry_ok if self._carry_ok is not None else np.zeros(src.shape[1], bool)
                src = np.where(missing & ~ok[None, :] & (nxt < n), nxt, src)  # else the carry
        r, e = np.nonzero(src != np.arange(src.shape[0])[:, None])
        for f in self.stale_bodies:
            arr = out[f]
            ok = src[r, e] >= 0
            arr[r[ok], e[ok]] = arr[src[r[ok], e[ok]], e[ok]]
            if fps == 1 and self._carry is not None and self._carry_ok is not None:
                use = ~ok & self._carry_ok[e]
                arr[r[use], e[use]] = self._carry[f][e[use]]
        self.rows_replaced += int(len(r))
        if fps == 1 and len(src):
            self._remember(out, src[-1])
        return out

    def _seed_carry(self, start: int, lookback: int = 64) -> None:
        """Policy-rate logs: remember each env's last fresh body rows among the steps just before ``start``."""
        n_env = len(self.envs)
        self._carry = {}
        for f in self.stale_bodies:
            ds = self.log.dataset(f)
            self._carry[f] = np.zeros((n_env,) + tuple(ds.shape[2:]), ds.dtype)
        self._carry_ok = np.zeros(n_env, bool)
        lo = max(0, start - lookback)
        if start <= lo:
            return
        sel = self.sel
        stale = stale_mask(self.log, lo, start, env=sel, field="frames/body_pos")
        data = {f: self.log.read(f, lo, start, env=sel) for f in self.stale_bodies}
        self._remember(data, fresh_rows(stale, 1)[-1])

    def _remember(self, rows: Dict[str, npt.NDArray[Any]], last: npt.NDArray[np.int64]) -> None:
        """Keep, per env, the body rows ``last`` names (>= 0) as the last fresh ones seen."""
        if self._carry is None or self._carry_ok is None:
            return
        ok = last >= 0
        e = np.flatnonzero(ok)
        for f in self.stale_bodies:
            self._carry[f][e] = rows[f][last[e], e]
        self._carry_ok |= ok


def env_major(a: npt.NDArray[Any], dtype: Any = None) -> npt.NDArray[Any]:
    """(rows, envs, ...) -> a contiguous (envs, rows, ...) copy, so each env's rows are one block."""
    return np.ascontiguousarray(np.swapaxes(a, 0, 1), dtype=dtype)
