"""Restricted unpicklers: a pickle from a user is data, never code.

``pickle.load`` calls whatever callable a file names, so a crafted ``config.pkl`` or trajectory file
could run ``os.system`` while being read. The unpicklers here override ``find_class``, the one hook
through which a pickle reaches any importable name, with an allow-list. A name outside the list is
refused *before* anything is called, with an :class:`~moetape.schema.errors.InputError`.

Allowed names:

- :func:`load_builtins_pickle` (the hydra ``config.pkl``): the builtin containers and scalars
  (``dict``, ``list``, ``tuple``, ``set``, ``frozenset``, ``str``, ``bytes``, ``bytearray``, ``int``,
  ``float``, ``complex``, ``bool``), ``collections.OrderedDict``, and ``_codecs.encode``, which
  protocol-2 pickles use to rebuild ``bytes`` from a latin-1 string (a pure data transform). Most of
  these never reach ``find_class`` at all: protocols 2+ have opcodes for them.
- :func:`load_array_pickle` (trajectory files) additionally: ``numpy.ndarray``, ``numpy.dtype``,
  ``numpy.core.multiarray._reconstruct`` and ``scalar``, and ``numpy.core.numeric._frombuffer``
  (protocol-5 array pickles), each under both ``numpy.core`` (numpy 1.x) and ``numpy._core``
  (numpy 2.x). These names are resolved to the running numpy's own objects without importing the
  named module, so a numpy 2 pickle loads under numpy 1.x and vice versa, and numpy 2 never warns
  about the deprecated ``numpy.core``.

Errors, all :class:`InputError` (a ``ValueError``) with one-line messages:
``<path>: no such file``, ``<path>: not a pickle file (<reason>)`` and
``<path>: refused to unpickle <module.name>: only plain data ...``.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np

from moetape.schema.errors import InputError

PathLike = Union[str, "os.PathLike[str]"]

REFUSED_HINT = (
    "only plain data (dicts, lists, numbers, strings, numpy arrays) is allowed; "
    "re-save the file with plain types"
)

_BUILTIN_NAMES = (
    "dict",
    "list",
    "tuple",
    "set",
    "frozenset",
    "str",
    "bytes",
    "bytearray",
    "int",
    "float",
    "complex",
    "bool",
)


def _const(obj: Any) -> Callable[[], Any]:
    return lambda: obj


def _builtin_allow_list() -> Dict[Tuple[str, str], Callable[[], Any]]:
    import builtins
    import codecs
    import collections

    allowed: Dict[Tuple[str, str], Callable[[], Any]] = {}
    for name in _BUILTIN_NAMES:
        for module in ("builtins", "__builtin__"):  # protocol 0-2 pickles name Python 2's module
            allowed[(module, name)] = _const(getattr(builtins, name))
    allowed[("collections", "OrderedDict")] = _const(collections.OrderedDict)
    allowed[("_codecs", "encode")] = _const(codecs.encode)
    return allowed


def _numpy_reconstruct() -> Any:
    return np.ndarray.__reduce__(np.zeros(1))[0]


def _numpy_scalar() -> Any:
    return np.float64(0.0).__reduce__()[0]


def _numpy_frombuffer() -> Any:
    return np.zeros(1).__reduce_ex__(5)[0]


def _array_allow_list() -> Dict[Tuple[str, str], Callable[[], Any]]:
    allowed = _builtin_allow_list()
    allowed[("numpy", "ndarray")] = _const(np.ndarray)
    allowed[("numpy", "dtype")] = _const(np.dtype)
    for core in ("numpy.core", "numpy._core"):
        allowed[(core + ".multiarray", "_reconstruct")] = _numpy_reconstruct
        allowed[(core + ".multiarray", "scalar")] = _numpy_scalar
        allowed[(core + ".numeric", "_frombuffer")] = _numpy_frombuffer
    return allowed


BUILTINS_ALLOWED = _builtin_allow_list()
"""(module, name) -> factory of the object, for :class:`BuiltinsUnpickler`."""

ARRAYS_ALLOWED = _array_allow_list()
"""(module, name) -> factory of the object, for :class:`ArrayUnpickler`."""


class _RefusedGlobal(Exception):
    """Raised inside ``find_class``; turned into InputError once the file name is known."""

    def __init__(self, qualname: str) -> None:
        super().__init__(qualname)
        self.qualname = qualname


class _RestrictedUnpickler(pickle.Unpickler):
    allowed: Dict[Tuple[str, str], Callable[[], Any]] = {}

    def find_class(self, module: str, name: str) -> Any:
        factory = self.allowed.get((module, name))
        if factory is None:
            raise _RefusedGlobal(module + "." + name)
        return factory()

    def persistent_load(self, pid: Any) -> Any:
        raise _RefusedGlobal("persistent id " + repr(pid)[:60])


class BuiltinsUnpickler(_RestrictedUnpickler):
    """Unpickle plain builtin containers and scalars only (see the module docstring)."""

    allowed = BUILTINS_ALLOWED


class ArrayUnpickler(_RestrictedUnpickler):
    """Unpickle plain builtins plus numpy arrays, dtypes and numpy scalars only."""

    allowed = ARRAYS_ALLOWED


# Exceptions that a truncated or garbage stream raises from the C unpickler.
_CORRUPT = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
    OverflowError,
    UnicodeDecodeError,
    struct.error,
    MemoryError,
    RecursionError,
)


def _load(path: PathLike, unpickler: type) -> Any:
    where = os.fspath(path)
    try:
        with open(where, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise InputError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{where}: is a directory, expected a pickle file") from None
    except OSError as e:
        raise InputError(f"{where}: cannot read ({e.strerror or e})") from e
    return _loads(data, unpickler, where)


def _loads(data: bytes, unpickler: type, where: str) -> Any:
    try:
        result = unpickler(io.BytesIO(data)).load()
    except _RefusedGlobal as e:
        raise InputError(f"{where}: refused to unpickle {e.qualname}: {REFUSED_HINT}") from None
    except InputError:
        raise
    except _CORRUPT as e:
        reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise InputError(f"{where}: not a pickle file ({_one_line(reason)})") from e
    return result


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def load_builtins_pickle(path: PathLike) -> Any:
    """Load a pickle that may hold only plain builtins (the hydra ``config.pkl``).

    Raises:
        InputError: the file is missing, not a pickle, or names anything outside the allow-list
            (refused before it is called).
    """
    return _load(path, BuiltinsUnpickler)


def load_array_pickle(path: PathLike) -> Any:
    """Load a pickle that may hold plain builtins and numpy arrays (trajectory files).

    Arrays come back as the running numpy's ``ndarray`` whichever numpy (1.x ``numpy.core`` or
    2.x ``numpy._core``) wrote them.

    Raises:
        InputError: the file is missing, not a pickle, or names anything outside the allow-list.
    """
    return _load(path, ArrayUnpickler)


def loads_restricted(data: bytes, *, arrays: bool = True, name: Optional[str] = None) -> Any:
    """Unpickle ``data`` with the array (default) or builtins allow-list; ``name`` labels errors."""
    return _loads(data, ArrayUnpickler if arrays else BuiltinsUnpickler, name or "<bytes>")
