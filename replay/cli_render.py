"""The `render` and `view` commands: parse, call one library function, print."""

from __future__ import annotations

from typing import Optional

import click

from moetape.replay.progress import ProgressBar


@click.command()
@click.argument("log", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--out",
    "out",
    required=True,
    type=click.Path(),
    help="Output video (.mp4, H.264); a folder (or a path ending in /) gets video.mp4 inside it.",
)
@click.option("--env", default=0, show_default=True, type=int, help="Env index to render.")
@click.option(
    "--fps",
    default=24.0,
    show_default=True,
    type=float,
    help="Video frame rate; each frame shows the log's frame row nearest in time.",
)
@click.option("--size", default="640x480", show_default=True, help="WIDTHxHEIGHT in pixels (even numbers).")
@click.option(
    "--steps", default=None, help="Policy steps START:STOP to render (either end optional); default all."
)
@click.option(
    "--quality",
    type=click.Choice(["fast", "high"]),
    default="fast",
    show_default=True,
    help="fast: no shadows, reflections or multisampling (video rate on a CPU); high: the model's own.",
)
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def render(
    log: str,
    out: str,
    env: int,
    fps: float,
    size: str,
    steps: Optional[str],
    quality: str,
    force: bool,
    quiet: bool,
) -> None:
    """Re-render a video of the robot from a log (MuJoCo offscreen, headless).

    Uses the robot model stored in the log, or draws the recorded rigid bodies as a skeleton when the
    log has no model (Isaac Gym runs). A camera follows the base; the EE target and the EE are drawn
    as axes joined by a line; a panel shows the gate weights and entropy.

    \b
    Example:
      moetape render runs/demo/log.h5 -o video.mp4
      moetape render runs/demo/log.h5 -o env3.mp4 --env 3 --steps 0:250 --size 1280x720 --quality high
    """
    from moetape.replay.render import render_video

    bar = ProgressBar("rendering", quiet=quiet)
    try:
        result = render_video(
            log, out, env=env, fps=fps, size=size, steps=steps, quality=quality, force=force, progress=bar
        )
    finally:
        bar.close()
    note = ""
    if result["unmatched_joints"]:
        note = "; joints not in the model: " + ", ".join(result["unmatched_joints"])
    click.echo(
        "wrote {}: {} frames at {:g} fps, env {}, steps {}:{} ({} mode, {}, rendered at {:.0f} fps){}".format(
            result["out"],
            result["frames"],
            result["fps"],
            result["env"],
            result["steps"][0],
            result["steps"][1],
            result["mode"],
            result["gl_backend"],
            result["render_fps"],
            note,
        ),
        err=True,
    )


@click.command()
@click.argument("log", type=click.Path(dir_okay=False))
@click.option("--env", default=0, show_default=True, type=int, help="Env shown first.")
@click.option("--follow", is_flag=True, help="Tail a log that is still being recorded.")
@click.option(
    "--rerun", "use_rerun", is_flag=True, help="Open Rerun's native viewer instead (extra 'rerun')."
)
@click.option("--web", is_flag=True, help="Serve Rerun's web viewer on 127.0.0.1 and print its URL.")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Web viewer port for --web [a free one]."
)
def view(log: str, env: int, follow: bool, use_rerun: bool, web: bool, port: Optional[int]) -> None:
    """Open a window: robot, gate timeline, scrubbing; --follow a live log.

    The window shows the re-rendered robot, the gate weights, entropy and EE error over time with a
    cursor, a slider to scrub, play/pause and an env selector. Needs a display; on a headless machine
    use `moetape render`. --rerun streams the log into Rerun's native viewer, --web serves Rerun's web
    viewer on localhost (nothing leaves the machine; Rerun's usage data collection is turned off).

    \b
    Example:
      moetape view runs/demo/log.h5 --env 2
      moetape view runs/live/log.h5 --follow
      moetape view runs/demo/log.h5 --web --port 9090
    """
    if use_rerun or web:
        from moetape.replay.cli_rerun import run_rerun_view

        run_rerun_view(log, env=str(env), web=web, port=port, follow=follow)
        return
    if port is not None:
        raise click.UsageError("--port goes with --web.")
    from moetape.replay.viewer import run_viewer

    run_viewer(log, env=env, follow=follow)
