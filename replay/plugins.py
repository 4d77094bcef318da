"""Custom analyses that add their results to ``moetape stats`` (under "plugins").

An analysis is named ``module:attribute`` (``moetape stats LOG --plugin mypkg.gating:turn_rate``,
repeatable) or registered by an installed package as an entry point of the group
``moetape.analyses`` (``entry_points={"moetape.analyses": ["turn_rate = mypkg.gating:turn_rate"]}``);
registered ones run on every ``moetape stats`` unless ``--no-registered`` is given. The result
appears under ``plugins[<name>]``, where the name is the spec given to --plugin or the entry
point's name.

Protocol: the attribute is called once with the open log (``moetape.schema.reader.Log``):
``obj = attribute(log)``.

- **Function analysis**: ``obj`` is a dict (any Mapping): that is the result. The function may
  stream the log itself with ``log.iter_chunks(fields)`` (keep memory bounded).
- **Streaming analysis**: ``obj`` has ``update(chunk)`` and ``result() -> dict`` and may list the
  fields it needs in ``obj.fields`` (default ``["gate"]``; names as in ``Log.read``). moetape reads
  them in the same single pass as the built-in statistics and calls ``update`` once per chunk, in
  step order. ``chunk.start``/``chunk.stop`` are policy steps; ``chunk.data[field]`` holds the
  selected envs only, env axis kept ((n, E_sel, ...); ``t_wall_s`` has no env axis), and
  ``chunk.data["selected"]`` is bool (n, E_sel): the rows in the ``--episode`` selection (all
  True without it). ``chunk.data["env_index"]`` is int (E_sel,): the envs' indices in the log.

Results must be JSON-ready: dicts, lists, str, numbers, bools, None (numpy scalars and arrays
are converted; NaN becomes None). A bad spec, a module that cannot be imported, an attribute
that is missing or not callable, or an object that follows neither protocol is a one-line error.
Exceptions raised inside an analysis propagate with their traceback.

Example (a streaming analysis, in ``my_analyses.py``)::

    import numpy as np

    class MeanArm:
        fields = ["gate"]

        def __init__(self, log):
            self.total, self.n = 0.0, 0

        def update(self, chunk):
            w = chunk.data["gate"][..., 1][chunk.data["selected"]]
            self.total += float(w.sum())
            self.n += w.size

        def result(self):
            return {"mean_arm": self.total / max(1, self.n)}
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from moetape.schema.errors import InputError
from moetape.schema.reader import Chunk, Log

ENTRY_POINT_GROUP = "moetape.analyses"
DEFAULT_FIELDS = ("gate",)


@dataclass(frozen=True)
class Plugin:
    """A named analysis factory: ``factory(log)`` returns a result dict or a streaming object."""

    name: str
    factory: Callable[[Log], Any]


@dataclass
class Active:
    """A started analysis: either a finished result or a streaming object awaiting chunks."""

    name: str
    result: Optional[Mapping[str, Any]] = None
    stream: Any = None
    fields: Sequence[str] = ()


def load_spec(spec: str) -> Plugin:
    """Import ``module:attribute`` (the attribute may be dotted) and return it as a Plugin.

    Raises:
        InputError: not MODULE:ATTRIBUTE, the module cannot be imported, or the attribute is
            missing or not callable.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name.strip() or not attr.strip() or ":" in attr:
        raise InputError(f"--plugin {spec!r}: expected MODULE:FUNCTION, e.g. my_analyses:mean_arm.")
    try:
        obj: Any = importlib.import_module(module_name)
    except (ImportError, SyntaxError) as e:
        raise InputError(
            f"--plugin {spec!r}: cannot import module {module_name!r} ({type(e).__name__}: {e}). Check the name and that it "
            "is on PYTHONPATH."
        ) from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(f"--plugin {spec!r}: module {module_name!r} has no attribute {attr!r}.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"--plugin {spec!r}: {attr!r} is a {type(obj).__name__}, not a function or class.")
    return Plugin(spec, obj)


def _entry_points() -> List[Any]:
    """Return the installed entry points of the ``moetape.analyses`` group."""
    from importlib import metadata

    eps: Any = metadata.entry_points()
    if hasattr(eps, "select"):
        return list(eps.select(group=ENTRY_POINT_GROUP))
    return list(eps.get(ENTRY_POINT_GROUP, []))  # Python 3.9: a dict of groups


def registered() -> List[Plugin]:
    """Return the analyses installed packages registered under ``moetape.analyses``.

    Raises:
        InputError: a registered analysis cannot be loaded.
    """
    out = []
    for ep in sorted(_entry_points(), key=lambda e: e.name):
        try:
            factory = ep.load()
        except (ImportError, AttributeError, SyntaxError) as e:
            raise InputError(
                f"registered analysis {ep.name!r} ({ep.value}) cannot be loaded ({type(e).__name__}: {e}); fix or uninstall "
                "it, or pass --no-registered."
            ) from e
        if not callable(factory):
            raise InputError(f"registered analysis {ep.name!r} ({ep.value}) is not callable.")
        out.append(Plugin(ep.name, factory))
    return out


def resolve(items: Iterable[Any]) -> List[Plugin]:
    """Turn specs ("module:attr"), Plugins and bare callables into Plugins, first of a name wins."""
    out: Dict[str, Plugin] = {}
    for item in items:
        if isinstance(item, Plugin):
            p = item
        elif isinstance(item, str):
            p = load_spec(item)
        elif callable(item):
            p = Plugin(
                "{}:{}".format(getattr(item, "__module__", "?"), getattr(item, "__qualname__", repr(item))),
                item,
            )
        else:
            raise InputError(f"plugin {item!r}: expected 'module:function' or a callable.")
        out.setdefault(p.name, p)
    return list(out.values())


def start(plugins: Sequence[Plugin], log: Log) -> List[Active]:
    """Call every plugin with the log; check what it returned follows the protocol.

    Raises:
        InputError: a plugin returned neither a dict nor an object with update/result, or asks
            for a field the log does not have.
    """
    active = []
    for p in plugins:
        obj = p.factory(log)
        if isinstance(obj, Mapping):
            active.append(Active(p.name, result=obj))
            continue
        if not (callable(getattr(obj, "update", None)) and callable(getattr(obj, "result", None))):
            raise InputError(
                f"plugin {p.name!r} returned a {type(obj).__name__}; expected a dict, or an object with update(chunk) and "
                "result() (see moetape.replay.plugins)."
            )
        fields = list(getattr(obj, "fields", DEFAULT_FIELDS))
        unknown = [f for f in fields if not log.has_field(f)]
        if unknown:
            raise InputError(
                "plugin {!r} asks for field(s) {} that {} does not have.".format(
                    p.name, ", ".join(unknown), log.path
                )
            )
        active.append(Active(p.name, stream=obj, fields=fields))
    return active


def fields_of(active: Sequence[Active]) -> List[str]:
    """Return the fields the streaming analyses need, in first-asked order."""
    return list(dict.fromkeys(f for a in active for f in a.fields))


def feed(active: Sequence[Active], chunk: Chunk, envs: List[int], selected: np.ndarray) -> None:
    """Give each streaming analysis its fields of ``chunk``, restricted to the selected envs."""
    for a in active:
        if a.stream is None:
            continue
        data: Dict[str, np.ndarray] = {}
        for f in a.fields:
            arr = chunk.data[f]
            data[f] = arr[:, envs] if arr.ndim >= 2 else arr
        data["selected"] = selected
        data["env_index"] = np.asarray(envs, dtype=np.int64)
        a.stream.update(Chunk(chunk.start, chunk.stop, data))


def to_jsonable(value: Any) -> Any:
    """Convert numpy values and tuples to plain JSON types; NaN and inf become None."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def results(active: Sequence[Active]) -> Dict[str, Any]:
    """Collect every analysis's result as JSON-ready data, keyed by plugin name.

    Raises:
        InputError: a result is not a dict or cannot be written as JSON.
    """
    out: Dict[str, Any] = {}
    for a in active:
        res = a.result if a.stream is None else a.stream.result()
        if not isinstance(res, Mapping):
            raise InputError(f"plugin {a.name!r}: result() returned a {type(res).__name__}, expected a dict.")
        clean = to_jsonable(res)
        try:
            json.dumps(clean)
        except (TypeError, ValueError) as e:
            raise InputError(f"plugin {a.name!r}: result is not JSON-ready ({e}).") from e
        out[a.name] = clean
    return out
