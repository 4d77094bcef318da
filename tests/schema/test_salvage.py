"""salvage: a damaged log's readable steps go to a new clean log, value for value; bad input is one line.

Also the opening rules that keep damaged logs from hanging readers (plain reader for a closed log,
bounded SWMR retries for a killed one) and verify's list of damaged regions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import killed_log, write_log

from moetape.cli import cli
from moetape.schema import io
from moetape.schema.reader import open_log
from moetape.schema.validate import validate


def _bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def run(*args):
    """Invoke the root group (stdout and stderr kept apart)."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def damage_chunks(path: str, field: str, first_steps) -> None:
    """Flip bytes inside the chunks of ``field`` that start at each of ``first_steps`` (checksum fails)."""
    with h5py.File(path, "r") as f:
        ds = f[field]
        offsets = [
            ds.id.get_chunk_info_by_coord((s,) + (0,) * (ds.ndim - 1)).byte_offset for s in first_steps
        ]
    with open(path, "r+b") as fh:
        for off in offsets:
            fh.seek(off + 4)
            fh.write(b"\xff" * 8)


def damage_header(path: str, field: str) -> None:
    """Flip bytes inside the object header of ``field`` (the dataset can no longer be opened)."""
    with h5py.File(path, "r", swmr=io.needs_swmr(path), locking=False) as f:
        addr = h5py.h5o.get_info(f[field].id).addr
    with open(path, "r+b") as fh:
        fh.seek(addr)
        assert fh.read(4) == b"OHDR"
        fh.seek(addr + 12)
        fh.write(b"\x5a" * 4)


@pytest.fixture
def source(tmp_path):
    """A 40-step log with 4-step chunks in steps/ (chunk_bytes=2000, batch_steps=4)."""
    p = str(tmp_path / "run.h5")
    write_log(p, 40, chunk_bytes=2000, batch_steps=4)
    with h5py.File(p, "r") as f:
        assert f["steps/action"].chunks[0] == 4
    return p


def copy_of(src: str, tmp_path, name: str = "damaged.h5") -> str:
    dst = str(tmp_path / name)
    shutil.copy(src, dst)
    return dst


def read_all(path: str) -> dict:
    with open_log(path) as log:
        return {name: log.read(name) for name in log.fields()}


def test_salvage_keeps_exactly_the_steps_outside_damaged_chunks(source, tmp_path):
    """Damaged chunks at steps 8-11 and 28-31: the salvaged log holds the other 32 steps, value for value."""
    bad = copy_of(source, tmp_path)
    damage_chunks(bad, "steps/action", [8, 28])
    before = _bytes(bad)
    out = str(tmp_path / "salvaged.h5")
    r = run("salvage", bad, out)
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    assert "32 of 40 committed steps" in r.stderr
    assert "lost: 8 steps (8-11, 28-31), every field" in r.stderr
    assert "steps/action: steps 8-11, envs 0-1 (checksum)" in r.stderr
    assert _bytes(bad) == before  # DAMAGED never modified
    kept = [s for s in range(40) if not (8 <= s <= 11 or 28 <= s <= 31)]
    orig, new = read_all(source), read_all(out)
    fps = 4
    rows = np.concatenate([np.arange(s * fps, (s + 1) * fps) for s in kept])
    for name, values in orig.items():
        if name == "frames/step":  # renumbered: the salvaged log's steps are consecutive
            np.testing.assert_array_equal(new[name], np.repeat(np.arange(len(kept)), fps))
            continue
        want = values[rows] if name.startswith("frames/") else values[kept]
        np.testing.assert_array_equal(new[name], want, err_msg=name)
    assert validate(out) == []
    assert run("verify", out).exit_code == 0
    with open_log(out) as log:
        info = log.provenance["salvage"]
        assert log.format_version >= 1 and log.n_steps == 32
    assert info["kept"] == [[0, 8, 0], [12, 28, 8], [32, 40, 24]]
    assert info["lost_steps"] == [[8, 11], [28, 31]]
    assert info["source_n_steps"] == 40 and info["missing_fields"] == {}


def test_salvage_keeps_every_step_when_a_whole_field_is_lost(source, tmp_path):
    """An unreadable steps/gate header: every step is kept, gate is NaN and named missing for every step."""
    bad = copy_of(source, tmp_path)
    damage_header(bad, "steps/gate")
    out = str(tmp_path / "salvaged.h5")
    r = run("salvage", bad, out, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["n_steps"] == 40 and doc["lost_steps"] == []
    assert list(doc["missing_fields"]) == ["steps/gate"]
    assert doc["missing_fields"]["steps/gate"]["steps"] == [[0, 39]]
    assert "missing field: steps/gate, every kept step (0-39)" in r.stderr
    orig, new = read_all(source), read_all(out)
    assert np.isnan(new["gate"]).all()
    np.testing.assert_array_equal(new["obs"], orig["obs"])
    np.testing.assert_array_equal(new["frames/root_pos"], orig["frames/root_pos"])
    with open_log(out) as log:
        assert list(log.provenance["salvage"]["missing_fields"]) == ["steps/gate"]
    assert validate(out) == []


def test_salvage_bad_input_is_one_line(source, tmp_path):
    """Not HDF5, a newer format, an existing output, the same path: one line, exit 1, nothing written."""
    text = tmp_path / "notes.h5"
    text.write_text("hello\n")
    newer = copy_of(source, tmp_path, "newer.h5")
    with h5py.File(newer, "r+") as f:
        f.attrs["format_version"] = 99
    exists = tmp_path / "exists.h5"
    exists.write_bytes(b"keep me")
    for args, needle in [
        ((text, tmp_path / "o1.h5"), "not an HDF5 file"),
        ((newer, tmp_path / "o2.h5"), "newer than this moetape reads"),
        ((source, exists), "exists"),
        ((source, source), "must be a new file"),
    ]:
        r = run("salvage", *args)
        assert r.exit_code == 1, r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], r.stderr
    assert exists.read_bytes() == b"keep me"
    assert not (tmp_path / "o1.h5").exists() and not (tmp_path / "o2.h5").exists()


def test_verify_lists_every_damaged_region_with_steps_envs_kind(source, tmp_path):
    """verify --json: one region per damaged run of chunks, with steps, envs, kind and intact_before."""
    bad = copy_of(source, tmp_path)
    damage_chunks(bad, "steps/action", [8, 12, 28])
    damage_header(bad, "steps/reward")
    r = run("verify", "--json", bad)
    assert r.exit_code == 1
    found = [p["damage"] for p in json.loads(r.stdout)["problems"] if "damage" in p]
    got = [
        (d["dataset"], d["kind"], d["steps"], d["envs"], len(d["chunks"]), d["intact_before"]) for d in found
    ]
    assert got == [
        ("steps/reward", "structure", [0, 39], None, 0, True),
        ("steps/action", "checksum", [8, 15], [0, 1], 2, False),
        ("steps/action", "checksum", [28, 31], [0, 1], 1, False),
    ]


def test_verify_says_steps_before_the_first_damage_are_intact(source, tmp_path):
    """The first damaged region says the committed steps before it are intact in every field."""
    bad = copy_of(source, tmp_path)
    damage_chunks(bad, "steps/action", [8])
    r = run("verify", "-q", bad)
    assert r.exit_code == 1
    assert "steps/action: checksum or read failure in steps 8-11" in r.stderr
    assert "the committed steps before 8 are intact in every field" in r.stderr
    assert "checksum: the data fails its fletcher32 checksum" in r.stderr


def test_closed_log_opens_without_swmr_and_superblock_checksum_matches(source):
    """A log its writer closed has consistency flags 0, a valid superblock checksum, and opens plainly."""
    sb = io.read_superblock(source)
    assert sb is not None and sb.checksum_ok and sb.flags == 0
    assert not io.needs_swmr(source)
    f = io.open_for_read(source)
    try:
        assert not f.swmr_mode
    finally:
        f.close()


def test_damaged_object_header_of_a_closed_log_fails_at_once(source, tmp_path):
    """A flipped object header byte (used to hang every command in SWMR retries) is one line, exit 1."""
    bad = copy_of(source, tmp_path)
    damage_header(bad, "steps/obs")
    code = "import sys; from moetape.cli import cli; cli(['info', sys.argv[1]])"
    p = subprocess.run([sys.executable, "-c", code, bad], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "steps/obs: cannot open the dataset" in lines[0], p.stderr


def test_killed_log_needs_swmr_and_its_damage_fails_with_bounded_retries(tmp_path):
    """A killed writer's log (flags set) opens as a SWMR reader; a damaged header there is one line, no hang."""
    path = killed_log(str(tmp_path / "killed.h5"))
    assert io.needs_swmr(path)
    with open_log(path) as log:
        assert log.h5.swmr_mode and log.n_steps >= 60
    damage_header(path, "steps/obs")
    code = "import sys; from moetape.cli import cli; cli(['verify', '--json', sys.argv[1]])"
    p = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr
    doc = json.loads(p.stdout)
    assert [d["damage"]["dataset"] for d in doc["problems"] if "damage" in d] == ["steps/obs"]
