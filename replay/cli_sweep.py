"""The sweep halves of `moetape stats LOG... --table`, `moetape derive LOG... --out-root` and `plot --table`.

cli_analysis / cli_export parse the options and hand over here when a command is given several logs
or a sweep option; each function runs one library call (``sweep.run_stats`` / ``sweep.run_derive`` /
``sweep_table.plot_table``) and prints.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

import click

from moetape.replay.progress import ProgressBar
from moetape.schema.errors import InputError

TEXT_COLUMNS = [
    "path",
    "env",
    "episode",
    "expert",
    "mean",
    "usage",
    "entropy_mean",
    "switch_rate_hz",
    "ee_pos_err_m",
]


def _say(msg: str) -> None:
    click.echo(msg, err=True)


def _announce(client: Any, n_tasks: int, quiet: bool) -> Optional[ProgressBar]:
    """Print the dashboard link when the cluster has one; return a progress bar otherwise."""
    from moetape.replay.sweep import dashboard_link

    link = dashboard_link(client)
    if link and not quiet:
        _say(f"dashboard: {link}")
        return None
    return ProgressBar("logs", n_tasks, quiet=quiet)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def stats_sweep(
    logs: Sequence[str],
    *,
    table: Optional[str],
    group_by: Optional[str],
    per: Optional[str],
    steps: Optional[Tuple[Optional[int], Optional[int]]],
    scheduler: Optional[str],
    workers: Optional[int],
    force: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Run `stats` over ``logs`` on a dask cluster; write or print the table; exit 1 if any log failed."""
    from moetape.replay import sweep, sweep_table

    if table is not None:
        sweep_table.table_format(table)
        sweep_table.check_writable(table, force=force)
    start, stop = steps if steps is not None else (None, None)
    tasks = sweep.plan_stats(logs, per=per, start=start, stop=stop)
    with sweep.open_client(scheduler=scheduler, workers=workers, n_tasks=len(tasks)) as client:
        bar = _announce(client, len(tasks), quiet or as_json)
        try:
            rows = sweep.run_stats(client, tasks, progress=bar)
        finally:
            if bar is not None:
                bar.close()
    kind, columns = "logs", sweep_table.COLUMNS
    out_rows: List[Dict[str, Any]] = rows
    if group_by is not None:
        kind, columns = "groups", sweep_table.group_columns()
        out_rows = sweep_table.group_rows(rows, group_by)
    if table is not None:
        sweep_table.write_table(table, out_rows, columns, kind=kind, force=force)
        _say(f"wrote {table} ({len(out_rows)} rows)")
    elif as_json:
        click.echo(json.dumps({"format_version": 1, "kind": kind, "rows": out_rows}, sort_keys=True))
    else:
        names = [c for c in TEXT_COLUMNS if c != "path"] if kind == "groups" else TEXT_COLUMNS
        names = (["group", "n_logs"] + names) if kind == "groups" else names
        suffix = "_mean" if kind == "groups" else ""
        from moetape.replay.cli_analysis import _table

        good = [r for r in out_rows if not r.get("error")]
        body = [
            [
                _fmt(r.get(n if n in ("group", "n_logs", "env", "episode", "expert", "path") else n + suffix))
                for n in names
            ]
            for r in good
        ]
        for line in _table(names, body):
            click.echo(line)
    _report_faults(rows)


def _report_faults(rows: Sequence[Dict[str, Any]]) -> None:
    """One stderr line per failed or still-recording log, then exit 1 if there was any."""
    bad: Dict[str, str] = {}
    live: Dict[str, str] = {}
    for r in rows:
        if r.get("error"):
            bad.setdefault(r["path"], r["error"])
        elif r.get("partial"):
            live.setdefault(r["path"], r["note"])
    for path, note in live.items():
        _say(f"note: {path}: {note}")
    for path, err in bad.items():
        _say(f"error: {err}" if path in err else f"error: {path}: {err}")
    if bad or live:
        n_logs = len({r["path"] for r in rows})
        raise InputError(
            f"{len(bad)} of {n_logs} logs could not be read and {len(live)} are still recording; "
            "the other logs' rows are complete. Fix or wait for those logs and rerun."
        )


def derive_sweep(
    logs: Sequence[str],
    *,
    out_root: str,
    options: Dict[str, Any],
    scheduler: Optional[str],
    workers: Optional[int],
    as_json: bool,
    quiet: bool,
) -> None:
    """Derive every log into its folder under ``out_root`` on a dask cluster; exit 1 if any failed."""
    from moetape.replay import sweep

    folders = sweep.derive_folders(logs, out_root)
    with sweep.open_client(scheduler=scheduler, workers=workers, n_tasks=len(logs)) as client:
        bar = _announce(client, len(logs), quiet or as_json)
        try:
            results = sweep.run_derive(client, logs, folders, options, progress=bar)
        finally:
            if bar is not None:
                bar.close()
    if as_json:
        click.echo(json.dumps(results, sort_keys=True))
    failed = 0
    for r in results:
        for note in r["notes"]:
            _say(f"note: {r['path']}: {note}")
        if r["error"]:
            failed += 1
            _say(f"error: {r['error']}" if r["path"] in r["error"] else f"error: {r['path']}: {r['error']}")
        elif not as_json:
            click.echo(f"{r['path']} -> {r['out']} ({r['files']} files)")
    if failed:
        raise InputError(
            f"{failed} of {len(results)} logs could not be derived; the others' folders are complete. "
            "Fix those logs and rerun them."
        )


def plot_sweep(table: str, out_dir: str, *, force: bool) -> None:
    """Draw a sweep table into ``out_dir``/sweep.png and print the path."""
    from moetape.replay.sweep_table import plot_table

    for p in plot_table(table, out_dir, force=force):
        click.echo(p)


SWEEP_OPTIONS = ("table", "group_by", "per", "scheduler", "workers")

CLUSTER_OPTIONS = (
    click.option(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="Use this dask scheduler (tcp://host:8786) instead of a local cluster on 127.0.0.1.",
    ),
    click.option("--workers", type=int, default=None, help="Local worker processes [the machine's cores]."),
)
"""The cluster options `stats` and `derive` share for a sweep."""


def stats_sweep_options(f: Any) -> Any:
    """The options `moetape stats` takes for a sweep (several logs, a table, a cluster)."""
    options = [
        click.option(
            "--table",
            type=click.Path(dir_okay=False),
            default=None,
            help="Write the sweep table here: .csv, .parquet or .json (one row per log and expert).",
        ),
        click.option(
            "--group-by",
            type=click.Choice(["checkpoint", "trajectory", "backend"]),
            default=None,
            help="Aggregate across logs: per group and expert, the number of logs, each figure's mean and std.",
        ),
        click.option(
            "--per",
            type=click.Choice(["env", "episode"]),
            default=None,
            help="A row per env (or per episode id) of each log, instead of one for the whole log.",
        ),
        *CLUSTER_OPTIONS,
        click.option("--force", is_flag=True, help="Overwrite an existing --table file."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar or dashboard link."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def is_sweep(logs: Sequence[str], opts: Dict[str, Any]) -> bool:
    """Tell whether `stats` was asked for a sweep: several logs or a sweep option."""
    return len(logs) > 1 or any(opts.get(k) is not None for k in SWEEP_OPTIONS)


def check_single_log_options(env: Optional[int], episode: Optional[int], plugin_specs: Sequence[str]) -> None:
    """Refuse the single-log selections a sweep does not take (a usage error, exit 2)."""
    for name, given in (
        ("--env", env is not None),
        ("--episode", episode is not None),
        ("--plugin", bool(plugin_specs)),
    ):
        if given:
            raise click.UsageError(
                f"{name} applies to one log; a sweep (several logs, --table, --group-by) takes --per env|episode "
                "and --steps instead."
            )


def derive_sweep_options(f: Any) -> Any:
    """The options `moetape derive` takes for several logs: --out-root and the cluster."""
    options = [
        click.option(
            "--out-root",
            type=click.Path(file_okay=False),
            default=None,
            help="Derive each log into its own folder under this one (its path below the logs' common "
            "folder, without .h5), in parallel on dask.",
        ),
        *CLUSTER_OPTIONS,
    ]
    for option in reversed(options):
        f = option(f)
    return f


def maybe_derive_sweep(logs: Sequence[str], out: Optional[str], opts: Dict[str, Any], **common: Any) -> bool:
    """Run `derive` as a sweep when given several logs or a sweep option; return whether it did.

    ``common`` holds derive's own options (rows, no_video, no_weights, force, quiet, as_json).
    """
    out_root, scheduler, workers = opts.get("out_root"), opts.get("scheduler"), opts.get("workers")
    if len(logs) == 1 and out_root is None and scheduler is None and workers is None:
        return False
    if out is not None:
        raise click.UsageError("--out names one log's folder; with several logs give --out-root DIR.")
    if out_root is None:
        raise click.UsageError("several logs need --out-root DIR: each log's folder is made under it.")
    options = {
        "rows": common["rows"],
        "weights": not common["no_weights"],
        "video": not common["no_video"],
        "force": common["force"],
    }
    derive_sweep(
        logs,
        out_root=out_root,
        options=options,
        scheduler=scheduler,
        workers=workers,
        as_json=common["as_json"],
        quiet=common["quiet"],
    )
    return True
