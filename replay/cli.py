"""Log commands that need only the schema: info, verify, upgrade."""

from __future__ import annotations

import json
import re
import sys
from typing import Any, Dict, List, Optional, Tuple

import click

from moetape.replay.progress import ProgressBar
from moetape.schema.validate import validate
from moetape.schema.version import FORMAT_VERSION

log_argument = click.argument("log", type=click.Path())


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024.0
    return str(n)


def _print_info(d: Dict[str, Any]) -> None:
    prov = d["provenance"]
    status = d["run_status"]
    if status == "running":
        status += " (still recording, or crashed: committed steps are intact)"
    rows = [
        ("log", d["path"]),
        ("format_version", d["format_version"]),
        ("log_id", d["log_id"]),
        ("written by", "moetape {}".format(d["moetape_version"])),
        ("started", d["created_utc"]),
        ("ended", d["end_time_utc"] or "-"),
        ("status", status),
        ("backend", "{} {}".format(d["backend"], prov.get("backend_versions", "") or "").strip()),
        (
            "steps",
            "{} policy steps x {} envs = {} env-steps ({:.2f} s simulated)".format(
                d["n_steps"], d["n_envs"], d["env_steps"], d["duration_s"]
            ),
        ),
        ("episodes", _episodes_line(d)),
        ("experts", ", ".join(d["expert_names"])),
        ("obs / action", "{} / {}".format(d["obs_dim"], d["action_dim"])),
        (
            "rates",
            "sim {:g} Hz, policy {:g} Hz (decimation {}), frames {:g} Hz".format(
                1 / d["sim_dt_s"], 1 / d["policy_dt_s"], d["decimation"], d["frame_rate_hz"]
            ),
        ),
        ("terms", ", ".join(d["term_names"]) or "-"),
        ("metrics", ", ".join(d["metric_names"]) or "-"),
        ("robot model", "stored" if d["has_model"] else "not stored"),
        (
            "stale rows",
            "{} (on each episode's first step after an env's first; frames/: row 0 of that step)".format(
                ", ".join(d["stale_after_reset"])
            )
            if d.get("stale_after_reset")
            else "none",
        ),
        ("size", _fmt_bytes(d["size_bytes"])),
        ("command", d["command_line"] or "-"),
    ]
    for key in ("seed", "device", "host", "checkpoint_sha256", "trajectory_sha256"):
        if key in prov:
            rows.append((key, json.dumps(prov[key]) if isinstance(prov[key], (dict, list)) else prov[key]))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key.ljust(width)}  {value}")
    if "fields" in d:
        _print_fields(d["fields"])


def _episodes_line(d: Dict[str, Any]) -> str:
    e = d.get("episodes")
    if e is None:
        return "unreadable: " + d.get("episodes_error", "-")
    return (
        "{seen} seen, {finished} finished ({timeouts} timeouts, {terminations} terminations), "
        "{unfinished} unfinished at the end".format(**e)
    )


def _fields(lg: Any) -> List[Dict[str, Any]]:
    """Return every dataset of a log: field name, HDF5 path, committed shape, dtype, unit and frame."""
    out = []
    for name in lg.fields():
        ds = lg.dataset(name)
        path = ds.name.lstrip("/")
        rows = lg.n_frames if path.startswith("frames/") else lg.n_steps
        out.append(
            {
                "field": name,
                "path": path,
                "shape": [rows] + [int(x) for x in ds.shape[1:]],
                "dtype": str(ds.dtype),
                "unit": _decode_attr(ds.attrs.get("unit")),
                "frame": _decode_attr(ds.attrs.get("frame")),
            }
        )
    return out


def _decode_attr(value: Any) -> Optional[str]:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _print_fields(fields: List[Dict[str, Any]]) -> None:
    rows = [
        (
            f["path"],
            str(tuple(f["shape"])),
            f["dtype"],
            ", ".join(x for x in (f["unit"], f["frame"] and f["frame"] + " frame") if x) or "",
        )
        for f in fields
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    click.echo(
        f"fields ({len(rows)}; shapes in committed rows: steps/ per policy step, frames/ per frame row)"
    )
    for r in rows:
        line = "  ".join(c.ljust(w) for c, w in zip(r, widths + [0]))
        click.echo(("  " + line).rstrip())


def _info_of(log: str, with_fields: bool) -> Dict[str, Any]:
    """Return the info dict of one log, with episode counts and (optionally) its fields."""
    from moetape.replay.analysis import episode_counts
    from moetape.schema.errors import LogError
    from moetape.schema.reader import open_log

    with open_log(log) as lg:
        d = lg.info()
        try:
            d["episodes"] = episode_counts(lg)
        except LogError as e:  # a damaged episode/done chunk: the rest of info still stands
            d["episodes"] = None
            d["episodes_error"] = str(e)
        if with_fields:
            d["fields"] = _fields(lg)
    return d


@click.command()
@click.argument("logs", nargs=-1, required=True, type=click.Path(), metavar="LOG...")
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document on stdout (a list for several logs)."
)
@click.option(
    "--fields", "with_fields", is_flag=True, help="Also list every dataset with its shape, dtype and unit."
)
def info(logs: Tuple[str, ...], as_json: bool, with_fields: bool) -> None:
    """Show a log's provenance, size, envs, experts, rates, episodes and end status.

    Several logs give one block each (with --json, one list); a log that cannot be read is an
    error line (or an entry with "error") and the exit status is 1, the others are still shown.

    \b
    Example:
      moetape info runs/demo/log.h5 --json
      moetape info runs/*/log.h5
      moetape info runs/demo/log.h5 --fields
    """
    from moetape.schema.errors import LogError

    if len(logs) == 1:
        d = _info_of(logs[0], with_fields)
        if as_json:
            click.echo(json.dumps(d, sort_keys=True))
        else:
            _print_info(d)
        return
    docs: List[Dict[str, Any]] = []
    failed = False
    for i, log in enumerate(logs):
        try:
            d = _info_of(log, with_fields)
        except LogError as e:
            failed = True
            docs.append({"path": log, "error": str(e)})
            click.echo(f"Error: {e}", err=True)
            continue
        docs.append(d)
        if not as_json:
            if i:
                click.echo("")
            _print_info(d)
    if as_json:
        click.echo(json.dumps(docs, sort_keys=True))
    if failed:
        sys.exit(1)


QUICK_SKIPS = [
    "fletcher32 checksums of the data chunks",
    "gate rows summing to 1 and the stored entropy",
    "step and episode continuity",
]


def _without_verify_hint(message: str) -> str:
    """Drop the sentences of an error that send the user to `moetape verify` (verify is running)."""
    parts = re.split(r"(?<=[.;])\s+", message)
    kept = [p for p in parts if "moetape verify" not in p]
    return " ".join(kept).rstrip(" ;") or message


@click.command()
@log_argument
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option(
    "--quick",
    is_flag=True,
    help="Check structure and counters only; skip reading the rows (no checksums, sums or continuity).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def verify(log: str, as_json: bool, quick: bool, quiet: bool) -> None:
    """Check a log's structure, dtypes, counters, checksums and continuity; exit 1 on any problem.

    A damaged data chunk is reported with the steps and dataset it holds. A log that cannot be
    opened at all (truncated, not a log) is one problem; with --json it is still one JSON document.

    \b
    Example:
      moetape verify runs/demo/log.h5
    """
    from moetape.schema.errors import LogError
    from moetape.schema.reader import Log

    skipped = QUICK_SKIPS if quick else []
    try:
        with Log(log, tolerant=True) as lg:
            n_steps, status = lg.n_steps, lg.run_status
        show = not (quiet or as_json or quick)
        notes: List[str] = []
        with ProgressBar("verifying", max(1, n_steps), quiet=not show) as bar:
            problems = validate(log, check_data=not quick, progress=bar, notes=notes)
    except LogError as e:
        message = _without_verify_hint(str(e))
        if not as_json:
            raise click.ClickException(message) from None
        where, _, what = message.partition(": ")
        doc = _verify_doc(log, False, None, None, [{"where": where, "what": what or message}], skipped)
        click.echo(json.dumps(doc))
        sys.exit(1)
    for note in notes:
        click.echo("note: " + note, err=True)
    if as_json:
        found: List[Dict[str, Any]] = [
            dict({"where": p.where, "what": p.what}, **({"damage": p.damage} if p.damage else {}))
            for p in problems
        ]
        click.echo(json.dumps(_verify_doc(log, not problems, n_steps, status, found, skipped)))
    elif problems:
        click.echo(
            "{}: {} problem{}:".format(log, len(problems), "" if len(problems) == 1 else "s"), err=True
        )
        for p in problems:
            click.echo(f"  {p}", err=True)
    else:
        note = "" if status == "clean" else f" (run status '{status}': the run did not end cleanly)"
        if quick:
            click.echo(
                f"{log}: ok (quick: structure and counters of {n_steps} steps; not checked: "
                f"{'; '.join(QUICK_SKIPS)}. Run without --quick to read every row){note}"
            )
        else:
            click.echo(f"{log}: ok, {n_steps} steps checked{note}")
    if problems:
        sys.exit(1)


def _verify_doc(
    log: str,
    ok: bool,
    n_steps: Optional[int],
    status: Optional[str],
    problems: List[Dict[str, Any]],
    skipped: List[str],
) -> Dict[str, Any]:
    """Return verify's --json document."""
    return {
        "path": log,
        "format_version": FORMAT_VERSION,
        "ok": ok,
        "quick": bool(skipped),
        "not_checked": skipped,
        "n_steps": n_steps,
        "run_status": status,
        "problems": problems,
    }


@click.command()
@click.argument("old", type=click.Path(dir_okay=False))
@click.argument("new", type=click.Path())
@click.option("--dry-run", is_flag=True, help="Say what would be written; write nothing.")
@click.option("--force", is_flag=True, help="Overwrite NEW if it exists (a file only, never a folder).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def upgrade(old: str, new: str, dry_run: bool, force: bool, as_json: bool) -> None:
    """Write OLD as a new log NEW at the current format version; OLD is never touched.

    A log already at the current version is not copied (exit 0). NEW naming a folder writes
    OLD's file name inside it.

    \b
    Example:
      moetape upgrade old_run.h5 old_run.v1.h5 --dry-run
    """
    from moetape.schema.upgrade import upgrade as do_upgrade

    plan = do_upgrade(old, new, dry_run=dry_run, force=force)
    if as_json:
        click.echo(json.dumps(dict(plan, format_version=FORMAT_VERSION)))
    elif plan["current"]:
        click.echo(
            "{source}: already at format_version {from_version}, the current one; nothing to upgrade, "
            "{output} not written.".format(**plan),
            err=True,
        )
    elif dry_run:
        click.echo(
            "would write {output}: format_version {from_version} -> {to_version}, {n_steps} steps x "
            "{n_envs} envs (run status {run_status}); {source} stays as it is".format(**plan),
            err=True,
        )
    else:
        click.echo(
            "wrote {output}: format_version {from_version} -> {to_version}, {n_steps} steps".format(**plan),
            err=True,
        )


def _steps_text(ranges: List[List[int]]) -> str:
    shown = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges[:8])
    return shown + (f", ... ({len(ranges)} ranges)" if len(ranges) > 8 else "")


def _print_salvage(r: Dict[str, Any]) -> None:
    """Say what salvage wrote and exactly what was lost, on stderr."""
    lost = r["source_n_steps"] - r["n_steps"]
    click.echo(
        "wrote {output}: {n_steps} of {source_n_steps} committed steps x {n_envs} envs, marked salvaged "
        "(provenance 'salvage'); {src} is unchanged".format(src=r["source"], **r),
        err=True,
    )
    if not lost and not r["missing_fields"]:
        click.echo("lost: nothing (every committed step of every field was read)", err=True)
    if lost:
        click.echo(f"lost: {lost} steps ({_steps_text(r['lost_steps'])}), every field; damaged:", err=True)
        for d in r["lost"]:
            envs = "all envs" if d["envs"] is None else "envs {}-{}".format(*d["envs"])
            click.echo(
                "  {}: steps {}-{}, {} ({})".format(
                    d["dataset"], d["steps"][0], d["steps"][1], envs, d["kind"]
                ),
                err=True,
            )
    for path, m in r["missing_fields"].items():
        click.echo(
            f"missing field: {path}, every kept step ({_steps_text(m['steps'])}), written as fill values "
            f"(NaN, False or -1): {m['reason']}",
            err=True,
        )


@click.command()
@click.argument("damaged", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path())
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists (a file only, never a folder).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def salvage(damaged: str, out: str, force: bool, as_json: bool, quiet: bool) -> None:
    """Write every committed step of a damaged log that can still be read to a new, clean log OUT.

    Steps inside damaged chunks are dropped in every field; a field that cannot be read at all is
    written as fill values and named as missing. OUT is at the current format version and its
    provenance says it was salvaged and what was lost. DAMAGED is never modified.

    \b
    Example:
      moetape verify runs/demo/log.h5          # lists the damaged regions
      moetape salvage runs/demo/log.h5 runs/demo/log.salvaged.h5
    """
    from moetape.schema.salvage import salvage as do_salvage

    with ProgressBar("salvaging (read, then write)", None, quiet=quiet or as_json) as bar:
        report = do_salvage(damaged, out, force=force, progress=bar)
    if as_json:
        click.echo(json.dumps(dict(report, format_version=FORMAT_VERSION), sort_keys=True))
    _print_salvage(report)
