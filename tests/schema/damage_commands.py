"""Subprocess for the damage fuzz tests: run every reader command on one damaged log, print JSON.

Usage: damage_commands.py DAMAGED CLEAN WORKDIR [--heavy]

The commands run in this one process through click's CliRunner (one interpreter start per damaged
file instead of one per command); the test runs this script with a hang guard. Prints one JSON
object: command name -> {"exit": code, "stderr": text, "stdout_head": text, "traceback": bool}.
--heavy adds derive and render (seconds each).
"""

from __future__ import annotations

import json
import os
import sys
import traceback

from click.testing import CliRunner

from moetape.cli import cli
from moetape.schema.errors import LogError


def commands(log: str, clean: str, work: str, heavy: bool):
    """Yield (name, argv) of each reader command on ``log``; outputs go under ``work``."""
    yield "info", ["info", log]
    yield "info --json", ["info", log, "--json"]
    yield "verify", ["verify", log, "-q"]
    yield "verify --json", ["verify", log, "--json"]
    yield "stats", ["stats", log, "--json", "-q", "--no-registered"]
    yield "export", ["export", "weight-stats", log, "-o", os.path.join(work, "ws.pkl")]
    yield "compare", ["compare", log, clean, "--json"]
    yield "upgrade", ["upgrade", log, os.path.join(work, "up.h5")]
    yield "salvage", ["salvage", log, os.path.join(work, "salvaged.h5")]
    if heavy:
        yield "derive", ["derive", log, "-o", os.path.join(work, "derived"), "--no-video", "-q"]
        yield "render", ["render", log, "-o", os.path.join(work, "v.mp4"), "--steps", "0:3", "--quiet"]


def api(log: str) -> dict:
    """Open the log with the Python API and read every field; a LogError is an expected failure."""
    from moetape.schema.reader import open_log

    try:
        with open_log(log) as lg:
            for _chunk in lg.iter_chunks(lg.fields()):
                pass
    except LogError as e:
        return {"exit": 1, "stderr": f"Error: {e}\n", "stdout_head": "", "traceback": False}
    except BaseException:
        return {"exit": 99, "stderr": traceback.format_exc(), "stdout_head": "", "traceback": True}
    return {"exit": 0, "stderr": "", "stdout_head": "", "traceback": False}


def main(log: str, clean: str, work: str, heavy: bool) -> None:
    runner = CliRunner()
    out = {}
    for name, argv in commands(log, clean, work, heavy):
        r = runner.invoke(cli, argv)
        tb = r.exception is not None and not isinstance(r.exception, SystemExit)
        text = r.stderr + ("".join(traceback.format_exception(*r.exc_info)) if tb else "")
        out[name] = {
            "exit": r.exit_code,
            "stderr": text,
            "stdout_head": r.stdout[:300],
            "traceback": tb or "Traceback (most recent call last)" in r.stderr,
        }
    out["open_log"] = api(log)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], "--heavy" in sys.argv[4:])
