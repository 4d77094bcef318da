"""upgrade of a log already at the current format version copies nothing and says so."""

from __future__ import annotations

import json
import os

from click.testing import CliRunner

from moetape.cli import cli
from moetape.schema.upgrade import upgrade
from moetape.schema.version import FORMAT_VERSION


def test_upgrade_current_log_copies_nothing(log_path, tmp_path):
    """A current log: exit 0, one message on stderr, nothing on stdout, no file written, the log unchanged."""
    new = tmp_path / "new.h5"
    with open(log_path, "rb") as f:
        before = f.read()
    res = CliRunner().invoke(cli, ["upgrade", log_path, str(new)])
    assert res.exit_code == 0, res.output
    assert res.stdout == ""
    assert res.stderr == (
        f"{log_path}: already at format_version {FORMAT_VERSION}, the current one; nothing to upgrade, "
        f"{new} not written.\n"
    )
    assert not new.exists() and sorted(os.listdir(tmp_path)) == ["run.h5"]
    with open(log_path, "rb") as f:
        assert f.read() == before


def test_upgrade_current_log_json(log_path, tmp_path):
    """--json on a current log prints one document saying current and not written."""
    new = tmp_path / "new.h5"
    res = CliRunner().invoke(cli, ["upgrade", log_path, str(new), "--json"])
    assert res.exit_code == 0 and res.stderr == ""
    doc = json.loads(res.stdout)
    assert doc["current"] is True and doc["written"] is False and doc["format_version"] == FORMAT_VERSION
    assert doc["from_version"] == doc["to_version"] == FORMAT_VERSION and not new.exists()


def test_upgrade_current_log_library(log_path, tmp_path):
    """upgrade() on a current log returns the plan with current=True and writes nothing, even with force."""
    new = tmp_path / "new.h5"
    new.write_bytes(b"keep")
    plan = upgrade(log_path, str(new), force=True)
    assert plan["current"] is True and plan["written"] is False
    assert new.read_bytes() == b"keep"
