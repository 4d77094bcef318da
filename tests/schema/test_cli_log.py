"""info, verify and upgrade on good logs (CliRunner: exit code, stdout, stderr checked apart)."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from moetape.cli import cli
from moetape.schema.reader import open_log


def test_info_json(golden_log):
    """info --json prints one JSON document with format_version, steps, envs, experts and rates."""
    r = CliRunner().invoke(cli, ["info", golden_log, "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["format_version"] == 1 and d["n_steps"] == 12 and d["n_envs"] == 2
    assert d["expert_names"] == ["base", "arm"] and d["policy_dt_s"] == 0.02 and d["ended_cleanly"]
    assert r.stderr == ""


def test_info_human(golden_log):
    """info prints the status and the rates for people."""
    r = CliRunner().invoke(cli, ["info", golden_log])
    assert r.exit_code == 0
    assert "status" in r.stdout and "policy 50 Hz" in r.stdout


def test_verify_ok(golden_log):
    """verify says ok and exits 0 on a valid log; the progress bar goes to stderr only."""
    r = CliRunner().invoke(cli, ["verify", golden_log])
    assert r.exit_code == 0
    assert r.stdout.strip().endswith("ok, 12 steps checked")
    r = CliRunner().invoke(cli, ["verify", golden_log, "--json"])
    assert json.loads(r.stdout)["ok"] is True


def test_upgrade_copies_everything(golden_log, tmp_path, monkeypatch):
    """upgrade of an older log writes a new file with the same log id and data; --dry-run writes nothing."""
    from moetape.schema import upgrade

    monkeypatch.setattr(upgrade, "FORMAT_VERSION", upgrade.FORMAT_VERSION + 1)  # the golden log is older
    new = tmp_path / "up.h5"
    r = CliRunner().invoke(cli, ["upgrade", golden_log, str(new), "--dry-run"])
    assert r.exit_code == 0 and "would write" in r.stderr and r.stdout == "" and not new.exists()
    r = CliRunner().invoke(cli, ["upgrade", golden_log, str(new)])
    assert r.exit_code == 0, r.output
    with open_log(golden_log) as a, open_log(str(new)) as b:
        assert a.log_id == b.log_id and b.run_status == a.run_status
        for field in a.fields():
            np.testing.assert_array_equal(a.read(field), b.read(field))
        assert b.model_xml == a.model_xml
