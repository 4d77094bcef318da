"""`moetape export ...` (one legacy file) and `moetape derive` (all of them, plus video, summary, plots)."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import click

from moetape.replay.cli_analysis import StepRange
from moetape.replay.cli_rerun import export_rerun_cmd
from moetape.replay.cli_sweep import derive_sweep_options, maybe_derive_sweep
from moetape.replay.legacy_map import ROWS_MODES
from moetape.replay.progress import ProgressBar

log_argument = click.argument("log", type=click.Path(dir_okay=False))
force_option = click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
rows_option = click.option(
    "--rows",
    type=click.Choice(ROWS_MODES),
    default="auto",
    show_default=True,
    help="Frame rows of logs.zarr/logs.pkl: substep = every physics substep (legacy headless), policy = one "
    "per step, video = about 24 per simulated second (legacy --visualize), auto = substep if recorded.",
)
no_weights_option = click.option(
    "--no-weights",
    "no_weights",
    is_flag=True,
    help="Leave the weight stats empty, as the legacy scripts did without --show_weights.",
)


steps_option = click.option(
    "--steps",
    type=StepRange(),
    default=None,
    help="Only policy steps A to B-1 (A:B, as a Python slice; :B and A: too) and their frame rows. Default: every step.",
)
env_option = click.option(
    "--env",
    type=int,
    default=None,
    help="Only this env (E = 1; it takes env 0's place in the legacy keys, entropy is its own). Default: all envs.",
)


def _out_option(default_name: str) -> Callable[[Any], Any]:
    return click.option(
        "--out",
        "-o",
        required=True,
        type=click.Path(),
        help=f"Output path, e.g. {default_name}; a folder (or a path ending in /) gets {default_name} inside it.",
    )


def _run_export(kind: str, log: str, out: str, quiet: bool, **options: Any) -> None:
    """Open the log, export with a progress bar, then say what was written (stderr: a message for people)."""
    from moetape.replay.export import export_many, select
    from moetape.schema.reader import open_log

    with open_log(log) as lg:
        if lg.run_status != "clean":
            click.echo(
                f"note: {log}: run status '{lg.run_status}' (crashed, interrupted or still recording): exporting the {lg.n_steps} "
                "committed steps.",
                err=True,
            )
        sel = select(lg, options.get("steps"), options.get("env"))
        bar = ProgressBar("exporting", sel.n_steps, quiet=quiet)
        try:
            info = export_many(lg, {kind: out}, progress=bar, **options)[kind]
        finally:
            bar.close()
    rows = (
        ""
        if info["rows"] is None
        else ", {} {} rows at {:g} Hz".format(info["n_rows"], info["rows"], info["frame_rate_hz"])
    )
    what = "{} steps".format(info["n_steps"]) if not sel.given else "steps {}:{}".format(*info["steps"])
    if info["env"] is not None:
        what += ", env {}".format(info["env"])
    click.echo("wrote {} ({}{})".format(info["path"], what, rows), err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def export() -> None:
    """Derive one legacy file (weight-stats, results, zarr, pkl) from a log.

    The files match what play_moe_ee_task.py / play_moe_simple.py wrote (keys, nesting,
    dtypes, quirks) and load with numpy 1.24 and zarr 2.16.

    \b
    Example:
      moetape export weight-stats runs/demo/log.h5 -o weight_stats.pkl
      moetape export zarr runs/demo/log.h5 -o logs.zarr --rows policy
      moetape export pkl runs/demo/log.h5 -o logs_env2.pkl --steps 100:200 --env 2
    """


@export.command("weight-stats")
@log_argument
@_out_option("weight_stats.pkl")
@force_option
@quiet_option
@steps_option
@env_option
def weight_stats(log: str, out: str, force: bool, quiet: bool, steps: Any, env: Optional[int]) -> None:
    """Write weight_stats.pkl: env 0's base/arm gate weights and the env-mean entropy per step.

    \b
    Example:
      moetape export weight-stats runs/demo/log.h5 -o weight_stats.pkl
    """
    _run_export("weight_stats", log, out, quiet, force=force, steps=steps, env=env)


@export.command("results")
@log_argument
@_out_option("moe_results.pkl")
@no_weights_option
@force_option
@quiet_option
@steps_option
@env_option
def results(
    log: str, out: str, no_weights: bool, force: bool, quiet: bool, steps: Any, env: Optional[int]
) -> None:
    """Write moe_results.pkl (play_moe_simple.py): config, weight stats, actions, env-0 state.

    \b
    Example:
      moetape export results runs/demo/log.h5 -o moe_results.pkl
    """
    _run_export("results", log, out, quiet, weights=not no_weights, force=force, steps=steps, env=env)


@export.command("zarr")
@log_argument
@_out_option("logs.zarr")
@rows_option
@no_weights_option
@force_option
@quiet_option
@steps_option
@env_option
def zarr_cmd(
    log: str, out: str, rows: str, no_weights: bool, force: bool, quiet: bool, steps: Any, env: Optional[int]
) -> None:
    """Write logs.zarr (zarr v2, play_moe_ee_task.py), streaming; the rates become group attributes.

    \b
    Example:
      moetape export zarr runs/demo/log.h5 -o logs.zarr --rows substep
    """
    _run_export("zarr", log, out, quiet, rows=rows, weights=not no_weights, force=force, steps=steps, env=env)


export.add_command(export_rerun_cmd)  # rerun-sdk itself loads only when the command runs


@export.command("pkl")
@log_argument
@_out_option("logs.pkl")
@rows_option
@no_weights_option
@force_option
@quiet_option
@steps_option
@env_option
def pkl(
    log: str, out: str, rows: str, no_weights: bool, force: bool, quiet: bool, steps: Any, env: Optional[int]
) -> None:
    """Write logs.pkl (play_moe_ee_task.py): the logs.zarr data as per-row lists with "/" key names.

    \b
    Example:
      moetape export pkl runs/demo/log.h5 -o logs.pkl
    """
    _run_export("pkl", log, out, quiet, rows=rows, weights=not no_weights, force=force, steps=steps, env=env)


class _StageBars:
    """One progress bar per derive stage ("export" steps, "video" frames) on stderr."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bars: Dict[str, ProgressBar] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.bars:
            for bar in self.bars.values():
                bar.close()
            label = {"export": "deriving", "video": "rendering"}.get(stage, stage)
            self.bars[stage] = ProgressBar(label, total, quiet=self.quiet)
        self.bars[stage](done)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("logs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for the derived files [the log's folder].",
)
@derive_sweep_options
@rows_option
@click.option("--no-video", "no_video", is_flag=True, help="Do not render video.mp4.")
@no_weights_option
@force_option
@quiet_option
@click.option("--json", "as_json", is_flag=True, help="Print the derived.json manifest on stdout.")
def derive(
    logs: Tuple[str, ...],
    out: Optional[str],
    rows: str,
    no_video: bool,
    no_weights: bool,
    force: bool,
    quiet: bool,
    as_json: bool,
    **sweep_opts: Any,
) -> None:
    """Derive every legacy file, video, summary and plots into a folder.

    Writes weight_stats.pkl, moe_results.pkl, logs.zarr, logs.pkl (one pass over the
    log), then video.mp4, summary.json and plots when those modules are installed, and
    derived.json: source log id and sha256, moetape version, parameters, every file's
    sha256. Deriving twice gives identical files.

    \b
    Example:
      moetape derive runs/demo/log.h5 --out runs/demo/derived --no-video
      moetape derive runs/*/log.h5 --out-root derived --no-video --workers 8

    Several logs (or --out-root/--scheduler/--workers) are derived in parallel on dask (pip install
    'moetape[sweep]'), each into its folder under --out-root; a bad log is reported and exit 1
    after the others.
    """
    common = dict(
        rows=rows, no_video=no_video, no_weights=no_weights, force=force, quiet=quiet, as_json=as_json
    )
    if maybe_derive_sweep(logs, out, sweep_opts, **common):
        return
    log = logs[0]
    from moetape.replay.derive import MANIFEST
    from moetape.replay.derive import derive as do_derive

    out_dir = out if out is not None else (os.path.dirname(os.path.abspath(log)))
    bars = _StageBars(quiet or as_json)
    try:
        manifest = do_derive(
            log,
            out_dir,
            rows=rows,
            weights=not no_weights,
            video=not no_video,
            force=force,
            progress=bars,
            notice=lambda msg: click.echo("note: " + msg, err=True),
        )
    finally:
        bars.close()
    if as_json:
        click.echo(json.dumps(manifest, sort_keys=True))
        return
    for entry in _lines(manifest):
        click.echo(entry)
    click.echo(f"wrote {os.path.join(out_dir, MANIFEST)}")


def _lines(manifest: Dict[str, Any]) -> Iterator[str]:
    for f in manifest["files"]:
        yield "{:<24} {:>12,} bytes  sha256 {}".format(f["name"], f["bytes"], f["sha256"][:16])
