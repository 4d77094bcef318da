"""The package's shape: one import name, replay without torch, every command documented."""

from __future__ import annotations

import os
import subprocess
import sys

from click.testing import CliRunner

from moetape.cli import COMMANDS, cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_schema_and_replay_import_without_torch():
    """moetape.schema, moetape.replay and the root CLI import with torch blocked."""
    code = (
        "import sys; sys.modules['torch'] = None; import moetape.schema.reader, moetape.schema.writer, "
        "moetape.schema.validate, moetape.replay.cli, moetape.cli"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bare_schema_import_is_not_ours():
    """`import schema` does not find moetape's schema folder (it is a different PyPI project)."""
    code = "import importlib.util as u; s = u.find_spec('schema'); print(s.origin if s else 'none')"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd="/"
    ).stdout
    assert not out.strip().startswith(ROOT)


def test_python_dash_m_help():
    """`python -m moetape --help` runs in a real subprocess and lists every command."""
    out = subprocess.run(
        [sys.executable, "-m", "moetape", "--help"], check=True, capture_output=True, text=True
    ).stdout
    for name in COMMANDS:
        assert name in out


def test_every_command_has_help_and_is_in_readme():
    """Each registered command has --help text and appears in README.md."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    runner = CliRunner()
    for name in cli.list_commands(None):
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Example" in result.stdout, name
        assert "moetape " + name in readme, name


def test_version():
    """--version prints the package version."""
    from moetape import __version__

    result = CliRunner().invoke(cli, ["--version"])
    assert __version__ in result.stdout
