"""The root ``moetape`` click group; subcommands load lazily so --help never imports torch."""

from __future__ import annotations

import difflib
import importlib
import sys
from typing import Any, Dict, List, Optional, Tuple

import click

from moetape import __version__

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# name -> ("module:attribute", one-line help shown by `moetape --help` without importing it)
COMMANDS: Dict[str, tuple] = {
    "info": (
        "moetape.replay.cli:info",
        "Show a log's provenance, size, envs, experts, rates and end status.",
    ),
    "verify": (
        "moetape.replay.cli:verify",
        "Check a log's structure, dtypes, counters, checksums and continuity.",
    ),
    "upgrade": (
        "moetape.replay.cli:upgrade",
        "Write an older log as a new file at the current format version.",
    ),
    "salvage": (
        "moetape.replay.cli:salvage",
        "Write every readable step of a damaged log to a new, clean log.",
    ),
    "record": (
        "moetape.record.cli:record",
        "Play an MoE checkpoint on MuJoCo or Isaac Gym, every step into a log.",
    ),
    "demo": (
        "moetape.record.cli:demo",
        "Make the demo checkpoint and trajectory, then record 4 envs x 500 steps.",
    ),
    "export": (
        "moetape.replay.cli_export:export",
        "Derive one legacy file (weight-stats, results, zarr, pkl) from a log.",
    ),
    "derive": (
        "moetape.replay.cli_export:derive",
        "Derive every legacy file, video, summary and plots into a folder.",
    ),
    "render": (
        "moetape.replay.cli_render:render",
        "Re-render a video of the robot from a log (MuJoCo offscreen).",
    ),
    "view": (
        "moetape.replay.cli_render:view",
        "Open a window: robot, gate timeline, scrubbing; --follow a live log.",
    ),
    "stats": (
        "moetape.replay.cli_analysis:stats",
        "Gating statistics: usage, dominance, entropy, switching, correlations.",
    ),
    "plot": (
        "moetape.replay.cli_analysis:plot",
        "Write PNG plots of the gate weights, entropy and EE error.",
    ),
    "compare": (
        "moetape.replay.cli_analysis:compare",
        "Compare two logs of the same trajectory: weights, actions, errors.",
    ),
}


def register(name: str, target: str, short_help: str) -> None:
    """Add a lazily loaded subcommand (used by the parts of moetape as they arrive)."""
    COMMANDS[name] = (target, short_help)


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when run (or asked for help)."""

    def list_commands(self, ctx: click.Context) -> List[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        if cmd_name not in COMMANDS:
            return None
        target = COMMANDS[cmd_name][0]
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            missing = getattr(e, "name", "") or ""
            if missing.split(".")[0] in ("torch", "mujoco"):
                raise click.ClickException(
                    "'{}' needs {}: pip install 'moetape[record]'".format(cmd_name, missing.split(".")[0])
                ) from e
            raise
        command = getattr(module, attr)
        assert isinstance(command, click.Command)
        return command

    def resolve_command(
        self, ctx: click.Context, args: List[str]
    ) -> Tuple[Optional[str], Optional[click.Command], List[str]]:
        """Resolve a subcommand; a mistyped name gets "did you mean" (exit 2, a usage error)."""
        name = args[0] if args else ""
        if args and name not in COMMANDS and not name.startswith("-") and not ctx.resilient_parsing:
            close = difflib.get_close_matches(name, self.list_commands(ctx), n=3, cutoff=0.6)
            hint = " Did you mean {}?".format(" or ".join(f"'{c}'" for c in close)) if close else ""
            ctx.fail(f"No such command '{name}'.{hint} Commands: {', '.join(self.list_commands(ctx))}.")
        return super().resolve_command(ctx, args)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> List[Any]:
        """Complete command names from COMMANDS without importing them (no torch for a TAB)."""
        from click.shell_completion import CompletionItem

        items: List[Any] = [
            CompletionItem(name, help=COMMANDS[name][1])
            for name in self.list_commands(ctx)
            if name.startswith(incomplete)
        ]
        items.extend(click.Command.shell_complete(self, ctx, incomplete))
        return items

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        """Turn moetape's deliberate errors into one-line messages with exit status 1."""
        from moetape.schema.errors import LogError

        try:
            return super().invoke(ctx)
        except LogError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="moetape")
def cli() -> None:
    """Record MoE robot-policy rollouts to a crash-safe HDF5 event log and replay them offline.

    \b
    Example:
      moetape info runs/demo/log.h5
      moetape verify runs/demo/log.h5
    """


def main() -> None:  # pragma: no cover - console entry point alias
    cli(prog_name="moetape")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
