"""`moetape export rerun` and `moetape view --rerun / --web`: parse, call one function, print.

rerun-sdk is the optional extra ``rerun``; this module imports it only through
``moetape.replay.rerun_export`` / ``rerun_view``, inside the commands, so a missing extra is one
actionable line.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Dict, Optional

import click

from moetape.replay.cli_analysis import StepRange
from moetape.replay.progress import ProgressBar

INSTALL_HINT = "pip install 'moetape[rerun]'"


def load_rerun_export(command: str, module: str = "rerun_export") -> ModuleType:
    """Import moetape.replay.<module>, or fail in one line saying how to install rerun-sdk."""
    try:
        rerun_export = importlib.import_module("moetape.replay." + module)
    except ImportError as e:
        top = (getattr(e, "name", "") or "").split(".")[0]
        if top in ("rerun", "rerun_bindings", "rerun_cli", "pyarrow"):
            raise click.ClickException(f"'{command}' needs rerun-sdk: {INSTALL_HINT}") from None
        raise
    return rerun_export


PER_ENV_HINT_ENVS = 16  # more envs than this in the per-env layout: a note names --layout per-field


@click.command("rerun", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("log", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(),
    help="Output .rrd; a folder (or a path ending in /) gets recording.rrd inside it.",
)
@click.option("--env", "env", default="all", show_default=True, help="An env index, or 'all'.")
@click.option(
    "--steps",
    type=StepRange(),
    default=None,
    help="Only policy steps A to B-1 (A:B, as a Python slice; :B and A: too). Default: every step.",
)
@click.option(
    "--layout",
    type=click.Choice(["per-env", "per-field"]),
    default="per-env",
    show_default=True,
    help="per-env: every env under its own path env<i>/ (the robot's geoms posed per env). "
    "per-field: each field one entity holding every env (one series per env in each plot; the robots "
    "as skeletons, the EE and target poses as boxes): much faster to write and view for many envs.",
)
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def export_rerun_cmd(log: str, out: str, env: str, steps: Any, layout: str, force: bool, quiet: bool) -> None:
    """Write a Rerun recording (.rrd): robot in 3D, targets, gate and errors on shared timelines.

    The robot is drawn from the MJCF stored in the log (a skeleton of the recorded bodies when the log
    has none), each body posed per frame row; the gate weights, entropy, action, rewards, terms and
    EE errors are time series per env, on the timelines step and sim_time. Open it with
    `rerun FILE.rrd` (needs the `rerun` extra).

    \b
    Example:
      moetape export rerun runs/demo/log.h5 -o demo.rrd
      moetape export rerun runs/demo/log.h5 -o env2.rrd --env 2 --steps 0:250
      moetape export rerun runs/sweep/log.h5 -o all.rrd --layout per-field
    """
    rx = load_rerun_export("export rerun")
    from moetape.schema.reader import open_log

    with open_log(log) as lg:
        if lg.run_status != "clean":
            click.echo(
                f"note: {log}: run status '{lg.run_status}' (crashed, interrupted or still recording): "
                f"exporting the {lg.n_steps} committed steps.",
                err=True,
            )
        n = len(rx.select_envs(lg, env))
    if layout == "per-env" and n > PER_ENV_HINT_ENVS:
        click.echo(
            f"note: {n} envs in the per-env layout are {n} copies of every entity; "
            "--layout per-field writes each field once for all envs, several times faster.",
            err=True,
        )
    bar = ProgressBar("exporting", quiet=quiet)
    try:
        info = rx.export_rerun(log, out, env=env, steps=steps, force=force, progress=bar, layout=layout)
    finally:
        bar.close()
    _notes(info)
    click.echo(
        "wrote {} (steps {}:{}, {} env{}, {} layout, {} mode, {:,} bytes)".format(
            info["path"],
            info["steps"][0],
            info["steps"][1],
            n,
            "" if n == 1 else "s",
            info["layout"],
            info["mode"],
            info["bytes"],
        ),
        err=True,
    )


def _notes(info: Dict[str, Any]) -> None:
    if info.get("recovered"):
        click.echo(
            "note: the torn last chunk of {} was read without its checksum (the run did not end cleanly).".format(
                ", ".join(info["recovered"])
            ),
            err=True,
        )
    if info.get("skipped_geoms"):
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(info["skipped_geoms"].items()))
        click.echo(f"note: geoms not drawn (their files are not in the log): {kinds}.", err=True)
    if info.get("unmatched_bodies"):
        click.echo(
            "note: model bodies with no recorded pose, not drawn: " + ", ".join(info["unmatched_bodies"]),
            err=True,
        )


def run_rerun_view(log: str, *, env: str, web: bool, port: Optional[int], follow: bool) -> None:
    """The `view --rerun / --web` path: start the viewer, print where it is, stream, wait for Ctrl-C."""
    rv = load_rerun_export("view --web" if web else "view --rerun", "rerun_view")

    def ready(info: Dict[str, Any]) -> None:
        if web:
            click.echo(info["url"])
            click.echo(
                "serving Rerun's web viewer on 127.0.0.1 only (usage data collection off); Ctrl-C to stop.",
                err=True,
            )
        else:
            click.echo(f"opened Rerun's viewer (usage data collection off), streaming {log}.", err=True)

    info = rv.view_rerun(log, env=env, web=web, port=port, follow=follow, on_ready=ready)
    if info.get("interrupted"):
        click.echo("stopped.", err=True)
