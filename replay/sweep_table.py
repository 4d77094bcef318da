"""The sweep table: one row per log and expert (per env or episode when asked), grouping, files, plot.

Rows are flat dicts with the columns of ``COLUMNS``: the log's identity from its provenance (log id,
checkpoint and trajectory hashes, backend, seed, run status), the scope (``env`` / ``episode``, empty
for the whole log), then the figures of ``analysis.summary`` for that log and scope, copied as they
are (no figure is recomputed here, so a row equals ``moetape stats --json`` value for value), and
``note`` / ``error``. A log that could not be read has one row with ``error`` set and no figures.

``group_rows(rows, by)`` aggregates the good rows across logs: per group (checkpoint, trajectory or
backend), expert and scope, the number of logs and each figure's mean and sample standard deviation
(``None`` for a single log).

Tables are written as ``.csv`` (stdlib ``csv``; floats as Python's shortest repr, so they read back
equal), ``.parquet`` (pyarrow, the ``sweep`` extra) or ``.json`` (one document:
``{"format_version", "kind", "columns", "rows"}``), under a temporary name renamed into place.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from moetape.schema.errors import InputError
from moetape.schema.io import atomic_output

TABLE_FORMAT_VERSION = 1
FORMATS = (".csv", ".parquet", ".json")
GROUP_KEYS = {"checkpoint": "checkpoint", "trajectory": "trajectory_sha256", "backend": "backend"}

IDENTITY: List[Tuple[str, str]] = [
    ("path", "str"),
    ("log_id", "str"),
    ("checkpoint", "str"),
    ("trajectory_sha256", "str"),
    ("backend", "str"),
    ("seed", "int"),
    ("run_status", "str"),
    ("partial", "bool"),
]
SCOPE: List[Tuple[str, str]] = [("env", "int"), ("episode", "int"), ("expert", "str")]
FIGURES: List[Tuple[str, str]] = [
    ("mean", "float"),
    ("std", "float"),
    ("min", "float"),
    ("max", "float"),
    ("usage", "float"),
    ("dominance", "float"),
    ("balance", "float"),
    ("entropy_mean", "float"),
    ("switch_rate_hz", "float"),
    ("n_switches", "int"),
    ("dwell_n_runs", "int"),
    ("dwell_mean_s", "float"),
    ("dwell_median_s", "float"),
    ("dwell_max_s", "float"),
    ("r_ee_pos_err", "float"),
    ("r_target_distance", "float"),
    ("ee_pos_err_m", "float"),
    ("env_steps", "int"),
    ("duration_s", "float"),
    ("episodes_seen", "int"),
    ("episodes_finished", "int"),
    ("n_steps", "int"),
    ("n_envs", "int"),
    ("step_start", "int"),
    ("step_stop", "int"),
]
TAIL: List[Tuple[str, str]] = [("note", "str"), ("error", "str")]
COLUMNS: List[Tuple[str, str]] = IDENTITY + SCOPE + FIGURES + TAIL
FIGURE_NAMES = [name for name, _ in FIGURES]


def _empty_row(identity: Dict[str, Any]) -> Dict[str, Any]:
    row: Dict[str, Any] = {name: None for name, _ in COLUMNS}
    row.update(identity)
    return row


def identity_of(log: Any, path: str) -> Dict[str, Any]:
    """Return the identity columns of an open Log: ids and hashes from its provenance."""
    prov = log.provenance
    ckpt = prov.get("checkpoint_sha256") or {}
    if isinstance(ckpt, dict):
        checkpoint = ";".join(f"{role}:{sha}" for role, sha in sorted(ckpt.items())) or None
    else:
        checkpoint = str(ckpt)
    seed = prov.get("seed")
    return {
        "path": path,
        "log_id": log.log_id,
        "checkpoint": checkpoint,
        "trajectory_sha256": prov.get("trajectory_sha256"),
        "backend": prov.get("backend") or log.meta.get("backend"),
        "seed": int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) else None,
        "run_status": log.run_status,
        "partial": None,
    }


def error_row(path: str, message: str, identity: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Return the one row of a log that could not be analysed."""
    row = _empty_row(dict(identity or {}, path=path))
    row["error"] = message
    return row


def rows_of_summary(
    d: Dict[str, Any], identity: Dict[str, Any], *, env: Optional[int] = None, episode: Optional[int] = None
) -> List[Dict[str, Any]]:
    """Flatten one ``analysis.summary`` dict into one row per expert (figures copied, not recomputed)."""
    log, sel, sw, corr = d["log"], d["selection"], d["switching"], d["correlation"]["overall"]
    note = None
    if log["partial"]:
        note = "still recording (or killed): figures cover the {} steps committed when read".format(
            log["n_steps"]
        )
    elif log["run_status"] != "clean":
        note = "run status '{}': figures cover its {} committed steps".format(
            log["run_status"], log["n_steps"]
        )
    common = {
        "partial": log["partial"],
        "run_status": log["run_status"],
        "env": env,
        "episode": episode,
        "entropy_mean": d["entropy"]["mean"],
        "switch_rate_hz": sw["rate_hz"],
        "n_switches": sw["n_switches"],
        "ee_pos_err_m": corr["mean_ee_pos_err_m"],
        "env_steps": sel["env_steps"],
        "duration_s": sel["duration_s"],
        "episodes_seen": d["episodes"]["seen"],
        "episodes_finished": d["episodes"]["finished"],
        "n_steps": log["n_steps"],
        "n_envs": log["n_envs"],
        "step_start": d["step_range"]["start"],
        "step_stop": d["step_range"]["stop"],
        "note": note,
    }
    rows = []
    for k, (e, w) in enumerate(zip(d["experts"], d["dwell"])):
        row = _empty_row(identity)
        row.update(common)
        row.update({f: e[f] for f in ("mean", "std", "min", "max", "usage", "dominance", "balance")})
        row.update(
            expert=e["name"],
            dwell_n_runs=w["n_runs"],
            dwell_mean_s=w["mean_s"],
            dwell_median_s=w["median_s"],
            dwell_max_s=w["max_s"],
            r_ee_pos_err=corr["r_ee_pos_err"][k],
            r_target_distance=corr["r_target_distance"][k],
        )
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- grouping
def _spread(values: List[float]) -> Tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def group_columns() -> List[Tuple[str, str]]:
    """Return the columns of a grouped table."""
    cols: List[Tuple[str, str]] = [("group_by", "str"), ("group", "str")] + SCOPE + [("n_logs", "int")]
    for name, _ in FIGURES:
        cols += [(f"{name}_mean", "float"), (f"{name}_std", "float")]
    return cols


def group_rows(rows: Iterable[Dict[str, Any]], by: str) -> List[Dict[str, Any]]:
    """Aggregate good rows across logs by checkpoint, trajectory or backend: n_logs, mean and spread.

    Raises:
        InputError: ``by`` is not one of checkpoint, trajectory, backend.
    """
    if by not in GROUP_KEYS:
        raise InputError(f"--group-by {by}: expected one of {', '.join(GROUP_KEYS)}.")
    key = GROUP_KEYS[by]
    groups: Dict[Tuple[Any, ...], List[Dict[str, Any]]] = {}
    for r in rows:
        if r.get("error"):
            continue
        g = (str(r.get(key)) if r.get(key) is not None else "(unknown)", r["env"], r["episode"], r["expert"])
        groups.setdefault(g, []).append(r)
    out = []
    for (group, env, episode, expert), members in groups.items():
        row: Dict[str, Any] = {
            "group_by": by,
            "group": group,
            "env": env,
            "episode": episode,
            "expert": expert,
            "n_logs": len({m["path"] for m in members}),
        }
        for name in FIGURE_NAMES:
            vals = [float(m[name]) for m in members if m[name] is not None]
            row[f"{name}_mean"], row[f"{name}_std"] = _spread(vals)
        out.append(row)
    return out


# ---------------------------------------------------------------------------- files
def table_format(path: str) -> str:
    """Return the table format of ``path`` from its suffix.

    Raises:
        InputError: the suffix is not .csv, .parquet or .json.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise InputError(
            f"{path}: unknown table format '{ext or '(no suffix)'}'; expected a name ending in "
            f"{', '.join(FORMATS)}."
        )
    return ext


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise InputError("a .parquet table needs pyarrow: pip install 'moetape[sweep]'") from None
    return pyarrow


def _arrow_type(pa: Any, kind: str) -> Any:
    return {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}[kind]


def write_table(
    path: str,
    rows: Sequence[Dict[str, Any]],
    columns: Sequence[Tuple[str, str]],
    *,
    kind: str,
    force: bool = False,
) -> str:
    """Write ``rows`` as a .csv, .parquet or .json table (temporary name, renamed into place); return path.

    Raises:
        InputError: an unknown suffix, or .parquet without pyarrow.
        OutputExistsError: ``path`` exists and ``force`` is False.
    """
    fmt = table_format(path)
    names = [n for n, _ in columns]
    pa: Any = _pyarrow() if fmt == ".parquet" else None
    with atomic_output(path, force=force, suffix=fmt) as tmp:
        if fmt == ".csv":
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(names)
                for r in rows:
                    w.writerow(["" if r.get(n) is None else r[n] for n in names])
        elif fmt == ".json":
            doc = {"format_version": TABLE_FORMAT_VERSION, "kind": kind, "columns": names, "rows": list(rows)}
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(doc, f, sort_keys=True)
        else:
            schema = pa.schema([(n, _arrow_type(pa, t)) for n, t in columns])
            table = pa.Table.from_pylist([{n: r.get(n) for n in names} for r in rows], schema=schema)
            table = table.replace_schema_metadata(
                {"moetape_table": kind, "format_version": str(TABLE_FORMAT_VERSION)}
            )
            pa.parquet.write_table(table, tmp)
    return path


def _parse(text: str, kind: str) -> Any:
    if text == "":
        return None
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "bool":
        return text == "True"
    return text


def read_table(path: str) -> Tuple[str, List[Dict[str, Any]]]:
    """Read a table written by ``write_table``; return (kind, rows), kind "logs" or "groups".

    Raises:
        InputError: missing file, unknown suffix, or not a moetape sweep table.
    """
    fmt = table_format(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such table; write one with: moetape stats LOG... --table {path}")
    if fmt == ".json":
        with open(path, encoding="utf-8") as f:
            try:
                doc = json.load(f)
            except ValueError as e:
                raise InputError(f"{path}: not a moetape sweep table (not JSON: {e}).") from None
        if not isinstance(doc, dict) or "rows" not in doc:
            raise InputError(
                f"{path}: not a moetape sweep table (no 'rows'); write one with moetape stats --table."
            )
        return str(doc.get("kind", "logs")), list(doc["rows"])
    if fmt == ".parquet":
        pa = _pyarrow()
        table = pa.parquet.read_table(path)
        meta = table.schema.metadata or {}
        return meta.get(b"moetape_table", b"logs").decode(), table.to_pylist()
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        kind = "groups" if "group_by" in header else "logs"
        types = dict(group_columns() if kind == "groups" else COLUMNS)
        if not set(header) <= set(types) or "expert" not in header:
            raise InputError(f"{path}: not a moetape sweep table (columns {header[:4]}...).")
        rows = [{h: _parse(v, types[h]) for h, v in zip(header, line)} for line in reader]
    return kind, rows


# ---------------------------------------------------------------------------- plot
def _label(r: Dict[str, Any]) -> str:
    for key in ("group", "path", "log_id"):
        if r.get(key):
            text = str(r[key])
            return text if len(text) <= 28 else "..." + text[-25:]
    return "?"


def plot_table(path: str, out_dir: str, *, force: bool = False) -> List[str]:
    """Draw a sweep table: gate usage per expert and mean EE error, per group (or per log); return PNGs.

    Bars are the means; on a grouped table, error bars are the spread over the group's logs. Rows
    of one env or episode are left out (the whole-log rows are drawn).

    Raises:
        InputError: the table has no whole-log rows to draw.
        OutputExistsError: sweep.png exists and ``force`` is False.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind, rows = read_table(path)
    rows = [r for r in rows if not r.get("error") and r.get("env") is None and r.get("episode") is None]
    if not rows:
        raise InputError(f"{path}: no whole-log rows to plot (every row is an error or one env/episode).")
    sfx = "_mean" if kind == "groups" else ""
    labels = list(dict.fromkeys(_label(r) for r in rows))
    experts = list(dict.fromkeys(str(r["expert"]) for r in rows))
    fig, (ax_u, ax_e) = plt.subplots(1, 2, figsize=(max(8.0, 1.2 * len(labels) + 4), 4.5))
    width = 0.8 / max(1, len(experts))

    def value(label: str, expert: Optional[str], name: str) -> Tuple[float, float]:
        for r in rows:
            if _label(r) == label and (expert is None or r["expert"] == expert):
                v, s = r.get(name + sfx), r.get(name + "_std") if kind == "groups" else None
                return (math.nan if v is None else float(v)), (0.0 if s is None else float(s))
        return math.nan, 0.0

    xs = list(range(len(labels)))
    for i, ex in enumerate(experts):
        vals = [value(lb, ex, "usage") for lb in labels]
        ax_u.bar(
            [x + i * width for x in xs], [v for v, _ in vals], width, yerr=[s for _, s in vals], label=ex
        )
    ax_u.set_title("gate usage (share of env-steps with w > 0.5)")
    ax_u.set_ylim(0, 1)
    ax_u.legend()
    errs = [value(lb, None, "ee_pos_err_m") for lb in labels]
    ax_e.bar(xs, [v for v, _ in errs], 0.6, yerr=[s for _, s in errs], color="tab:gray")
    ax_e.set_title("mean EE position error (m)")
    for ax, shift in ((ax_u, width * (len(experts) - 1) / 2), (ax_e, 0.0)):
        ax.set_xticks([x + shift for x in xs])
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    out = os.path.join(out_dir, "sweep.png")
    with atomic_output(out, force=force, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return [out]


def check_writable(path: str, *, force: bool = False) -> None:
    """Refuse, before a sweep starts, a table path that exists (without ``force``) or cannot be a file.

    Raises:
        OutputExistsError: see ``schema.io.check_output``.
    """
    from moetape.schema.io import check_output

    check_output(path, force=force)
