"""Log commands that need only the schema: info, verify, upgrade."""

from __future__ import annotations

import json
import re
import sys
from typing import Any, Dict, List, Optional

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
        ("size", _fmt_bytes(d["size_bytes"])),
        ("command", d["command_line"] or "-"),
    ]
    for key in ("seed", "device", "host", "checkpoint_sha256", "trajectory_sha256"):
        if key in prov:
            rows.append((key, json.dumps(prov[key]) if isinstance(prov[key], (dict, list)) else prov[key]))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key.ljust(width)}  {value}")


@click.command()
@log_argument
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def info(log: str, as_json: bool) -> None:
    """Show a log's provenance, size, envs, experts, rates and end status.

    \b
    Example:
      moetape info runs/demo/log.h5 --json
    """
    from moetape.schema.reader import open_log

    with open_log(log) as lg:
        d = lg.info()
    if as_json:
        click.echo(json.dumps(d, sort_keys=True))
    else:
        _print_info(d)


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
    from moetape.schema.reader import open_log

    skipped = QUICK_SKIPS if quick else []
    try:
        with open_log(log) as lg:
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
        found = [{"where": p.where, "what": p.what} for p in problems]
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
    problems: List[Dict[str, str]],
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
