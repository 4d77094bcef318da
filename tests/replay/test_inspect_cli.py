"""Inspecting logs: verify's messages on damaged logs, info, stats and plot selections, compare, the root group."""

from __future__ import annotations

import json
import os
import shutil

import h5py
import pytest
from click.testing import CliRunner
from helpers import write_log

from moetape.cli import cli


def run(*args, **kwargs):
    """Invoke the root group with click's CliRunner (stdout and stderr kept apart)."""
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def damage_chunk(path, field="steps/action"):
    """Overwrite bytes inside the first data chunk of ``field`` (fletcher32 no longer matches)."""
    with h5py.File(path, "r") as f:
        info = f[field].id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + 10)
        fh.write(b"\xff" * 16)


@pytest.fixture
def damaged_log(log_path, tmp_path):
    """A copy of the 12-step log whose steps/action chunk fails its checksum."""
    p = str(tmp_path / "damaged.h5")
    shutil.copy(log_path, p)
    damage_chunk(p)
    return p


@pytest.fixture
def truncated_log(log_path, tmp_path):
    """A copy of the 12-step log cut to half its size."""
    p = str(tmp_path / "truncated.h5")
    shutil.copy(log_path, p)
    os.truncate(p, os.path.getsize(p) // 2)
    return p


# ---------------------------------------------------------------------------- verify
def test_verify_damaged_chunk_names_dataset_and_steps(damaged_log):
    """verify names the damaged dataset and its steps, says what to do, and never points at itself."""
    r = run("verify", "-q", damaged_log)
    assert r.exit_code == 1
    assert "steps/action: checksum or read failure in steps 0-11" in r.stderr
    assert "restore the log from a copy" in r.stderr
    assert "moetape verify" not in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_verify_json_damaged_chunk(damaged_log):
    """verify --json lists the damaged chunk as a problem of steps/action and exits 1."""
    r = run("verify", "--json", damaged_log)
    assert r.exit_code == 1
    d = json.loads(r.stdout)
    assert d["ok"] is False and d["n_steps"] == 12
    assert [p["where"] for p in d["problems"]] == ["steps/action"]
    assert "moetape verify" not in r.stdout


def test_verify_json_truncated_prints_one_document(truncated_log):
    """verify --json on a truncated log prints one JSON document with the problem and exits 1."""
    r = run("verify", "--json", truncated_log)
    assert r.exit_code == 1
    d = json.loads(r.stdout)
    assert d["ok"] is False and d["path"] == truncated_log and d["format_version"] >= 1
    assert len(d["problems"]) == 1 and "shorter than HDF5 recorded" in d["problems"][0]["what"]
    assert d["problems"][0]["where"] == truncated_log


def test_verify_truncated_text_is_one_line(truncated_log):
    """verify (text) on a truncated log prints one error line and exits 1."""
    r = run("verify", truncated_log)
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: " + truncated_log)


def test_verify_quick_says_what_it_skipped(damaged_log):
    """verify --quick on a damaged log says ok but names what it did not check, in text and JSON."""
    r = run("verify", "--quick", damaged_log)
    assert r.exit_code == 0
    assert "quick" in r.stdout and "checksums" in r.stdout and "without --quick" in r.stdout
    r = run("verify", "--quick", "--json", damaged_log)
    d = json.loads(r.stdout)
    assert d["ok"] is True and d["quick"] is True
    assert any("checksum" in s for s in d["not_checked"])
    full = json.loads(run("verify", "--json", damaged_log).stdout)
    assert full["quick"] is False and full["not_checked"] == []


def test_verify_lists_every_damaged_chunk(tmp_path):
    """verify goes on past a damaged chunk and reports the damage of every dataset."""
    p = str(tmp_path / "two.h5")
    write_log(p, 12)
    damage_chunk(p, "steps/action")
    damage_chunk(p, "steps/obs")
    d = json.loads(run("verify", "--json", p).stdout)
    assert sorted(x["where"] for x in d["problems"]) == ["steps/action", "steps/obs"]
