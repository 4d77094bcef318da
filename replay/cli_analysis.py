"""Analysis commands: stats, plot, compare. Each parses, calls one library function, prints."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

import click

from moetape.replay.cli_sweep import (
    check_single_log_options,
    is_sweep,
    plot_sweep,
    stats_sweep,
    stats_sweep_options,
)

log_argument = click.argument("log", type=click.Path(dir_okay=False))
MAX_EPISODE_ROWS = 20


class StepRange(click.ParamType):
    """``A:B`` policy steps, half-open like a Python slice; either bound may be left out (``:500``, ``100:``)."""

    name = "A:B"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        head, sep, tail = text.partition(":")
        try:
            if not sep:
                raise ValueError
            bounds = tuple(int(x) if x.strip() else None for x in (head, tail))
        except ValueError:
            self.fail(f"{value!r} is not a step range; expected A:B (e.g. 100:500, :500 or 100:)", param, ctx)
        if any(b is not None and b < 0 for b in bounds):
            self.fail(f"{value!r}: step numbers are >= 0", param, ctx)
        return bounds


steps_option = click.option(
    "--steps",
    type=StepRange(),
    default=None,
    help="Only policy steps A to B-1 (A:B, as a Python slice; :B and A: too). Default: every step.",
)


def _range_text(rng: Dict[str, int], n_steps: int) -> str:
    a, b = rng["start"], rng["stop"]
    return f"steps {a}-{b - 1}" if (a, b) != (0, n_steps) else f"all {n_steps} steps"


def _episodes_text(e: Dict[str, int]) -> str:
    return (
        "{seen} seen, {finished} finished ({timeouts} timeouts, {terminations} terminations), "
        "{unfinished} unfinished at the end".format(**e)
    )


# ---------------------------------------------------------------------------- formatting
def _f(x: Optional[float], fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    """Align columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        cells = [str(r[0]).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(r[1:], widths[1:])]
        return "  ".join(cells).rstrip()

    return [line(header)] + [line(r) for r in rows]


def format_stats(d: Dict[str, Any]) -> List[str]:
    """Return the human-readable report of an ``analysis.summary`` dict, one string per line."""
    sel, log = d["selection"], d["log"]
    names = d["expert_names"]
    envs = sel["envs"]
    env_txt = f"env {envs[0]}" if len(envs) == 1 else "envs 0-{}".format(log["n_envs"] - 1)
    ep_txt = "all episodes" if sel["episode"] is None else "episode {}".format(sel["episode"])
    rng = d.get("step_range", {"start": 0, "stop": log["n_steps"]})
    out = [
        "log        {}".format(log["path"]),
        "selection  {}, {}, {}: {} env-steps ({:.2f} s at {:g} Hz)".format(
            env_txt,
            ep_txt,
            _range_text(rng, log["n_steps"]),
            sel["env_steps"],
            sel["duration_s"],
            1 / log["policy_dt_s"],
        ),
    ]
    if log.get("partial"):
        out.append(
            "partial    run status 'running': still recording (or crashed); these figures cover the "
            "{} steps committed when read".format(log["n_steps"])
        )
    elif log.get("run_status", "clean") != "clean":
        out.append(
            "note       run status '{}': the run did not end cleanly; figures cover its {} committed "
            "steps".format(log["run_status"], log["n_steps"])
        )
    if "episodes" in d:
        out.append("episodes   " + _episodes_text(d["episodes"]))
    out.append("")
    th = d["thresholds"]
    rows = [
        [
            e["name"],
            _f(e["mean"]),
            _f(e["std"]),
            _f(e["min"]),
            _f(e["max"]),
            _pct(e["usage"]),
            _pct(e["dominance"]),
            _pct(e["balance"]),
        ]
        for e in d["experts"]
    ]
    out += _table(
        [
            "expert",
            "mean",
            "std",
            "min",
            "max",
            "usage >{:g}".format(th["usage"]),
            "dominant >{:g}".format(th["dominance"]),
            "balanced {:g}-{:g}".format(*th["balance"]),
        ],
        rows,
    )
    sw = d["switching"]
    out += [
        "",
        "mean gate entropy  {} nats (max {:.3f})".format(
            _f(d["entropy"]["mean"]), d["entropy"]["max_possible"]
        ),
        "switching rate     {} switches/s ({} switches of the dominant expert in {:.2f} s)".format(
            _f(sw["rate_hz"]), sw["n_switches"], sw["duration_s"]
        ),
        "",
        "dwell time of the dominant expert (s)",
    ]
    out += _table(
        ["expert", "runs", "mean", "median", "max"],
        [
            [w["expert"], str(w["n_runs"]), _f(w["mean_s"]), _f(w["median_s"]), _f(w["max_s"])]
            for w in d["dwell"]
        ],
    )
    out += [""] + _format_corr(d["correlation"], names)
    lg = d["legacy"]
    out += ["", _legacy_heading(d)]
    out += [
        "Base usage (>0.5): {}".format(_f(lg["base_usage"], "{:.2%}")),
        "Arm usage (>0.5): {}".format(_f(lg["arm_usage"], "{:.2%}")),
        "Mean entropy: {}".format(_f(lg["mean_entropy"])),
    ]
    for name, res in d["plugins"].items():
        out += ["", f"plugin {name}", "  " + json.dumps(res, sort_keys=True)]
    return out


def _legacy_heading(d: Dict[str, Any]) -> str:
    """Say which rows the legacy figures cover and, when it differs, that they are not the selection."""
    lg, log, sel = d["legacy"], d["log"], d["selection"]
    scope = lg.get("scope", {"start": 0, "stop": log["n_steps"]})
    rng = _range_text(scope, log["n_steps"])
    head = f"legacy figures (weight_stats.pkl: env 0's gate, entropy averaged over all envs, {rng})"
    if lg.get("matches_selection", True):
        return head
    picked = []
    if sel["envs"] != list(range(log["n_envs"])):
        picked.append("--env {}".format(sel["envs"][0]))
    if sel["episode"] is not None:
        picked.append("--episode {}".format(sel["episode"]))
    what = " / ".join(picked) if picked else "the selection above, which pools every env"
    return head + f": NOT limited to {what}"


def _format_corr(c: Dict[str, Any], names: List[str]) -> List[str]:
    dist = c["target_distance_source"] or "not recorded"
    out = [
        "correlation (Pearson r) of each weight with EE position error [{}] and base-target "
        "distance [{}]".format(c["ee_pos_err_source"], dist)
    ]
    excluded = c.get("ee_pos_err_excluded_stale", 0)
    if excluded:
        out.append(
            f"  EE error excludes {excluded} env-steps whose ee_pos is stale (a new episode's first step)"
        )
    header = ["", "n", "EE err (m)"] + [f"{n}~err" for n in names] + [f"{n}~dist" for n in names]

    def row(label: str, r: Dict[str, Any]) -> List[str]:
        return (
            [label, str(r["n"]), _f(r["mean_ee_pos_err_m"])]
            + [_f(x, "{:+.3f}") for x in r["r_ee_pos_err"]]
            + [_f(x, "{:+.3f}") for x in r["r_target_distance"]]
        )

    rows = [row("all", c["overall"])] + [row("env {}".format(r["env"]), r) for r in c["by_env"]]
    eps = c["by_episode"]
    rows += [row("episode {}".format(r["episode"]), r) for r in eps[:MAX_EPISODE_ROWS]]
    out += _table(header, rows)
    if len(eps) > MAX_EPISODE_ROWS:
        out.append(f"... {len(eps) - MAX_EPISODE_ROWS} more episodes (see --json)")
    return out


def format_compare(d: Dict[str, Any]) -> List[str]:
    """Return the human-readable report of a ``compare.compare`` dict."""
    a, b = d["a"], d["b"]
    out = [
        "A  {}  ({} steps, {})".format(a["path"], a["n_steps"], a["run_status"]),
        "B  {}  ({} steps, {})".format(b["path"], b["n_steps"], b["run_status"]),
        "common steps  {} x {} envs{}".format(
            d["common_steps"],
            d["n_envs"],
            ""
            if a.get("n_envs", d["n_envs"]) == b.get("n_envs", d["n_envs"])
            else " (envs 0-{}, the envs both have: A has {}, B has {})".format(
                d["n_envs"] - 1, a["n_envs"], b["n_envs"]
            ),
        ),
        "",
    ]
    rows = [
        [n, _f(ga), _f(gb), _f(dg)]
        for n, ga, gb, dg in zip(d["expert_names"], a["mean_gate"], b["mean_gate"], d["mean_abs_gate_diff"])
    ]
    out += _table(["expert", "mean w A", "mean w B", "mean |dw|"], rows)
    out += [""]
    out += _table(["action", "mean |d action|"], [[g, _f(v)] for g, v in d["mean_abs_action_diff"].items()])
    out += [
        "",
        "mean EE position error  A {} m   B {} m   (B - A {} m)".format(
            _f(a["mean_ee_pos_err_m"], "{:.4f}"),
            _f(b["mean_ee_pos_err_m"], "{:.4f}"),
            _f(d["ee_pos_err_diff_m"], "{:+.4f}"),
        ),
    ]
    for name, sd in (("A", a), ("B", b)):
        if sd.get("ee_pos_err_excluded_stale"):
            out.append(
                f"  {name}'s EE error excludes {sd['ee_pos_err_excluded_stale']} env-steps whose ee_pos is "
                "stale (a new episode's first step)"
            )
    return out


# ---------------------------------------------------------------------------- commands
@click.command()
@click.argument("logs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--env", type=int, default=None, help="Only this env (default: every env).")
@click.option("--episode", type=int, default=None, help="Only this episode id (default: every episode).")
@steps_option
@click.option(
    "--plugin",
    "plugin_specs",
    multiple=True,
    metavar="MODULE:FUNCTION",
    help="Run a custom analysis (repeatable); see moetape.replay.plugins for the protocol.",
)
@click.option(
    "--no-registered",
    is_flag=True,
    help="Skip the analyses installed under the 'moetape.analyses' entry-point group.",
)
@stats_sweep_options
def stats(
    logs: Tuple[str, ...],
    as_json: bool,
    env: Optional[int],
    episode: Optional[int],
    steps: Optional[Tuple[Optional[int], Optional[int]]],
    plugin_specs: Tuple[str, ...],
    no_registered: bool,
    **sweep_opts: Any,
) -> None:
    """Gating statistics: usage, dominance, entropy, switching, dwell times, correlations.

    Per expert: mean/std/min/max weight, usage (w > 0.5), dominance (w > 0.7) and balance
    (0.3-0.7) shares; mean entropy; switches of the dominant expert per second; dwell times;
    Pearson r of each weight with the EE error and the base-target distance (per env and per
    episode); episodes seen and finished (timeouts, terminations); and the legacy script's
    figures (env 0's gate, env-mean entropy, over --steps but never limited to --env/--episode:
    the report says so). A log still recording is marked partial. Streams in bounded memory.

    \b
    Example:
      moetape stats runs/demo/log.h5
      moetape stats runs/demo/log.h5 --env 1 --episode 2 --json
      moetape stats runs/demo/log.h5 --steps 100:300
      moetape stats runs/demo/log.h5 --plugin my_analyses:MeanArm
      moetape stats runs/*/log.h5 --table sweep.csv --group-by checkpoint --workers 8

    Several logs (or --table/--group-by/--per/--scheduler/--workers) run a sweep on dask
    (pip install 'moetape[sweep]'): one row per log and expert with these figures, a bad log is an
    error row and exit 1 after the others.
    """
    if is_sweep(logs, sweep_opts):
        check_single_log_options(env, episode, plugin_specs)
        return stats_sweep(logs, steps=steps, as_json=as_json, **sweep_opts)
    log = logs[0]
    from moetape.replay import plugins
    from moetape.replay.analysis import summary
    from moetape.schema.reader import open_log

    chosen = ([] if no_registered else plugins.registered()) + [plugins.load_spec(s) for s in plugin_specs]
    with open_log(log) as lg:
        start, stop = steps if steps is not None else (None, None)
        d = summary(lg, env=env, episode=episode, start=start, stop=stop, plugins=chosen)
    if as_json:
        click.echo(json.dumps(d, sort_keys=True))
    else:
        for line in format_stats(d):
            click.echo(line)


@click.command()
@click.argument("log", required=False, type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for the PNGs (created if missing).",
)
@click.option(
    "--table",
    type=click.Path(dir_okay=False),
    default=None,
    help="Instead of a log, draw a sweep table (moetape stats LOG... --table) as sweep.png.",
)
@click.option("--env", type=int, default=0, show_default=True, help="Env to plot.")
@steps_option
@click.option("--force", is_flag=True, help="Overwrite existing PNGs.")
def plot(
    log: Optional[str],
    out_dir: str,
    table: Optional[str],
    env: int,
    steps: Optional[Tuple[Optional[int], Optional[int]]],
    force: bool,
) -> None:
    """Write PNG plots of the gate weights, entropy and EE error of one env.

    gate_panels.png: weight histograms, base-vs-arm scatter, weight timeline, box plot (the
    legacy script's four panels). timeline.png: weights, entropy and EE position error on one
    time axis (s) with episode starts marked. Long logs are decimated while streaming.

    \b
    Example:
      moetape plot runs/demo/log.h5 -o runs/demo/plots --env 0
      moetape plot runs/demo/log.h5 -o runs/demo/plots_early --steps :100
      moetape plot --table sweep.csv -o sweep_plots

    With --table: sweep.png, gate usage per expert and mean EE error per group (a --group-by
    table, error bars the spread over its logs) or per log.
    """
    if (log is None) == (table is None):
        raise click.UsageError(
            "give either a LOG or --table TABLE (a sweep table from moetape stats --table)."
        )
    if table is not None:
        return plot_sweep(table, out_dir, force=force)
    assert log is not None
    from moetape.replay.plots import plot_all
    from moetape.schema.reader import open_log

    with open_log(log) as lg:
        start, stop = steps if steps is not None else (None, None)
        paths = plot_all(lg, out_dir, env=env, force=force, start=start, stop=stop)
    for p in paths:
        click.echo(p)


@click.command()
@click.argument("log_a", type=click.Path(dir_okay=False))
@click.argument("log_b", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Also write compare_timeline.png into this folder.",
)
@click.option("--env", type=int, default=0, show_default=True, help="Env shown in the PNG.")
@click.option("--force", is_flag=True, help="Overwrite an existing compare_timeline.png.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def compare(log_a: str, log_b: str, out_dir: Optional[str], env: int, force: bool, as_json: bool) -> None:
    """Compare two logs of the same trajectory (two checkpoints): weights, actions, errors.

    Checks that the logs are comparable (obs/action sizes, experts; warns on stderr when the
    trajectory, robot or env count differ: different env counts compare the envs both have),
    then over the common steps and envs: mean |gate A - gate B| per
    expert, mean |action A - action B| (all, legs, arm) and each log's mean EE position error.

    \b
    Example:
      moetape compare runs/ckpt100/log.h5 runs/ckpt200/log.h5 -o runs/cmp
    """
    from moetape.replay.compare import compare as do_compare
    from moetape.replay.plots import plot_compare
    from moetape.schema.reader import open_log

    with open_log(log_a) as a, open_log(log_b) as b:
        d = do_compare(a, b)
        for w in d["warnings"]:
            click.echo("warning: " + w, err=True)
        if out_dir is not None:
            d["plots"] = plot_compare(a, b, out_dir, env=env, force=force)
    if as_json:
        click.echo(json.dumps(d, sort_keys=True))
    else:
        for line in format_compare(d):
            click.echo(line)
        for p in d.get("plots", []):
            click.echo(p)
