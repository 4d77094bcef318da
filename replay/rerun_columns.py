"""Arrow columns for Rerun's ``send_columns``, built straight from numpy arrays (no per-row Python).

A ``Columns`` holds one component's column for many entities at once (all envs of a chunk, or all
(env, body) pairs): one Arrow array, built once; each entity's column is a zero-copy slice of it.
The Arrow types and component descriptors are those Rerun's own archetypes produce.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import rerun as rr

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

    __slots__ = ("array", "descriptor", "rows")

    def __init__(self, descriptor: Any, array: pa.Array, rows: int) -> None:
        self.descriptor, self.array, self.rows = descriptor, array, rows

    def __getitem__(self, block: int) -> ArrowColumn:
        return ArrowColumn(self.descriptor, self.array.slice(block * self.rows, self.rows))

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
    def scalars(cls, values: npt.NDArray[Any], *, batch: bool = False) -> Columns:
        """Scalars (blocks..., rows), one series; ``batch``: (blocks..., rows, m), m series."""
        flat = pa.array(np.ascontiguousarray(values, np.float64).reshape(-1))
        row_shape = values.shape[:-1] if batch else values.shape
        return cls._lists("Scalars:scalars", flat, row_shape, values.shape[-1] if batch else 1)

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


def env_major(a: npt.NDArray[Any], dtype: Any = None) -> npt.NDArray[Any]:
    """(rows, envs, ...) -> a contiguous (envs, rows, ...) copy, so each env's rows are one block."""
    return np.ascontiguousarray(np.swapaxes(a, 0, 1), dtype=dtype)
