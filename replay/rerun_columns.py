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
    def vectors(cls, component: str, values: npt.NDArray[Any], per_row: int = 1) -> Columns:
        """Vectors (blocks..., rows, [per_row,] n): ``per_row`` vectors a row (Points3D, Transform3D)."""
        desc, typ = _template(component)
        n_rows = values.size // (values.shape[-1] * per_row)
        inner = _vectors(values, typ.value_type)
        lead = values.shape[: values.ndim - (2 if per_row == 1 else 3)]
        return cls(
            desc,
            pa.ListArray.from_arrays(_offsets(n_rows, per_row), inner, type=typ),
            n_rows // max(1, int(np.prod(lead))),
        )

    @classmethod
    def scalars(cls, values: npt.NDArray[Any], per_row: int = 1) -> Columns:
        """Scalars (blocks..., rows[, per_row]): ``per_row`` series a row."""
        desc, typ = _template("Scalars:scalars")
        flat = np.ascontiguousarray(values, np.float64).reshape(-1)
        n_rows = flat.size // per_row
        lead = values.shape[: values.ndim - (1 if per_row == 1 else 2)]
        arr = pa.ListArray.from_arrays(_offsets(n_rows, per_row), pa.array(flat), type=typ)
        return cls(desc, arr, n_rows // max(1, int(np.prod(lead))))

    @classmethod
    def strips(cls, values: npt.NDArray[Any]) -> Columns:
        """LineStrips3D (blocks..., rows, strips, points, 3)."""
        desc, typ = _template("LineStrips3D:strips")
        strips, points = values.shape[-3:-1]
        n_strips = values.size // (points * 3)
        strip_typ = typ.value_type
        inner = pa.ListArray.from_arrays(
            _offsets(n_strips, points), _vectors(values, strip_typ.value_type), type=strip_typ
        )
        n_rows = n_strips // strips
        lead = values.shape[:-4]
        return cls(
            desc,
            pa.ListArray.from_arrays(_offsets(n_rows, strips), inner, type=typ),
            n_rows // max(1, int(np.prod(lead))),
        )


def env_major(a: npt.NDArray[Any], dtype: Any = None) -> npt.NDArray[Any]:
    """(rows, envs, ...) -> a contiguous (envs, rows, ...) copy, so each env's rows are one block."""
    return np.ascontiguousarray(np.swapaxes(a, 0, 1), dtype=dtype)
