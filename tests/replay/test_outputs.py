"""Output paths of every replay command: -o naming a folder writes into it; --force never replaces a foreign folder.

Also derive's all-or-nothing folder: a derive that fails midway leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil

import h5py
import pytest
from click.testing import CliRunner

from moetape.cli import cli
from moetape.replay.derive import derive
from moetape.schema.errors import OutputExistsError
from moetape.schema.io import FILE, ZARR_STORE, atomic_output, resolve_output

DERIVED = [
    "derived.json",
    "gate_panels.png",
    "logs.pkl",
    "logs.zarr",
    "moe_results.pkl",
    "summary.json",
    "timeline.png",
    "weight_stats.pkl",
]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(res, *needles):
    """Exit 1, nothing on stdout, one 'Error:' line on stderr holding every needle, no traceback."""
    assert res.exit_code == 1, res.output
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def precious(tmp_path, name="precious"):
    """A user's folder holding two files; returns its path."""
    d = tmp_path / name
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    (d / "data.csv").write_text("1,2,3")
    return d


def assert_intact(d):
    """The user's files of ``precious`` are still there, unchanged."""
    assert (d / "thesis.tex").read_text() == "years of work"
    assert (d / "data.csv").read_text() == "1,2,3"


def corrupt_copy(log_path, tmp_path, name="bad.h5"):
    """Copy a log and overwrite bytes in a frames/ chunk, so a full read fails its checksum midway."""
    p = str(tmp_path / name)
    shutil.copy(log_path, p)
    with h5py.File(p, "r") as f:
        offset = f["frames/dof_vel"].id.get_chunk_info(0).byte_offset
    with open(p, "r+b") as f:
        f.seek(offset + 16)
        f.write(b"\xff\x00\xff\x00" * 4)
    return p


# ------------------------------------------------------------------------------ export


def test_export_into_folder_with_files_keeps_them(log_path, tmp_path):
    """export -o FOLDER (holding a user's files) writes FOLDER/logs.pkl beside them, like cp."""
    d = precious(tmp_path)
    res = run("export", "pkl", log_path, "-o", d, "-q")
    assert res.exit_code == 0, res.output
    assert res.stdout == "" and res.stderr.startswith(f"wrote {d / 'logs.pkl'} (12 steps")
    assert_intact(d)
    with open(d / "logs.pkl", "rb") as f:
        assert len(pickle.load(f)["state_logs"]["root_pos"]) == 48


def test_export_force_into_folder_with_files_never_deletes_it(log_path, tmp_path):
    """export pkl -o FOLDER --force replaces only FOLDER/logs.pkl; the folder and its files stay."""
    d = precious(tmp_path)
    for _ in range(2):  # the second run replaces the logs.pkl of the first
        res = run("export", "pkl", log_path, "-o", d, "--force", "-q")
        assert res.exit_code == 0, res.output
        assert_intact(d)
    assert sorted(os.listdir(d)) == ["data.csv", "logs.pkl", "thesis.tex"]


def test_export_trailing_slash_existing_folder(log_path, tmp_path):
    """-o FOLDER/ (existing, with --force) writes FOLDER/weight_stats.pkl; no traceback."""
    d = precious(tmp_path)
    res = run("export", "weight-stats", log_path, "-o", str(d) + "/", "--force", "-q")
    assert res.exit_code == 0, res.output
    assert (d / "weight_stats.pkl").is_file()
    assert_intact(d)


def test_export_trailing_slash_new_folder_is_created(log_path, tmp_path):
    """-o NEWDIR/ (not existing) creates the folder and writes NEWDIR/moe_results.pkl."""
    res = run("export", "results", log_path, "-o", str(tmp_path / "newdir") + "/", "-q")
    assert res.exit_code == 0, res.output
    assert os.listdir(tmp_path / "newdir") == ["moe_results.pkl"]


def test_export_zarr_force_refuses_foreign_folder(log_path, tmp_path):
    """A foreign folder where logs.zarr goes is refused even with --force (one line, exit 1), and kept."""
    d = precious(tmp_path)
    (d / "logs.zarr").mkdir()
    (d / "logs.zarr" / "notes.txt").write_text("mine")
    res = run("export", "zarr", log_path, "-o", d, "--force", "-q")
    assert_one_line_error(res, str(d / "logs.zarr"), "notes.txt", "not a zarr store", "choose another path")
    assert (d / "logs.zarr" / "notes.txt").read_text() == "mine"
    assert_intact(d)


def test_export_zarr_force_replaces_a_zarr_store(log_path, tmp_path):
    """-o naming an existing zarr store (with or without "/") replaces that store with --force."""
    z = tmp_path / "out.zarr"
    assert run("export", "zarr", log_path, "-o", z, "-q").exit_code == 0
    (z / "stale").write_text("x")
    res = run("export", "zarr", log_path, "-o", str(z) + "/", "--force", "-q")
    assert res.exit_code == 0, res.output
    assert (z / ".zgroup").is_file() and not (z / "stale").exists()
    assert not (z / "logs.zarr").exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []  # no temporary left


def test_export_parent_is_a_file(log_path, tmp_path):
    """-o FILE/ (a file given as a folder) is one line naming the file, not a traceback."""
    res = run("export", "results", log_path, "-o", log_path + "/", "-q")
    assert_one_line_error(res, log_path, "is a file, not a folder")


def test_atomic_output_never_replaces_a_folder_with_a_file(tmp_path):
    """atomic_output(force=True) of a file output refuses a folder at its path and leaves it whole."""
    d = precious(tmp_path)
    with pytest.raises(OutputExistsError, match="holding 2 entries"):
        with atomic_output(str(d), force=True) as tmp:
            open(tmp, "w").close()
    assert_intact(d)


def test_atomic_output_removes_folders_it_created_on_failure(tmp_path):
    """A failed output leaves no folder that atomic_output created for it."""
    with pytest.raises(RuntimeError):
        with atomic_output(str(tmp_path / "a" / "b" / "x.pkl")) as tmp:
            open(tmp, "w").close()
            raise RuntimeError("midway")
    assert os.listdir(tmp_path) == []


def test_resolve_output(tmp_path):
    """resolve_output: a folder or a trailing "/" gets the default name; a zarr store is itself."""
    d = precious(tmp_path)
    assert resolve_output(str(d), "logs.pkl") == str(d / "logs.pkl")
    assert resolve_output("new/", "logs.pkl") == os.path.join("new", "logs.pkl")
    assert resolve_output(str(tmp_path / "x.pkl"), "logs.pkl", kind=FILE) == str(tmp_path / "x.pkl")
    (d / ".zgroup").write_text("{}")
    assert resolve_output(str(d) + "/", "logs.zarr", kind=ZARR_STORE) == str(d)


# ------------------------------------------------------------------------------ render, plot, compare, upgrade


def test_render_force_refuses_folder_at_video_name(log_path, tmp_path):
    """render -o FOLDER --force where FOLDER/video.mp4 is a folder holding files: one line, nothing deleted."""
    d = tmp_path / "out"
    (d / "video.mp4").mkdir(parents=True)
    (d / "video.mp4" / "keep.txt").write_text("mine")
    res = run("render", log_path, "-o", d, "--force", "--quiet")
    assert_one_line_error(res, str(d / "video.mp4"), "keep.txt", "--force replaces only a file")
    assert (d / "video.mp4" / "keep.txt").read_text() == "mine"


def test_plot_and_compare_force_refuse_folder_at_png_name(log_path, tmp_path):
    """plot/compare -o DIR --force refuse a folder where a PNG goes (one line) and keep it."""
    d = tmp_path / "plots"
    for name in ("timeline.png", "compare_timeline.png"):
        (d / name).mkdir(parents=True)
        (d / name / "keep.txt").write_text("mine")
    res = run("plot", log_path, "-o", d, "--force")
    assert_one_line_error(res, str(d / "timeline.png"), "not a file")
    res = run("compare", log_path, log_path, "-o", d, "--force")
    assert_one_line_error(res, str(d / "compare_timeline.png"), "not a file")
    assert (d / "timeline.png" / "keep.txt").exists() and (d / "compare_timeline.png" / "keep.txt").exists()


def test_upgrade_into_folder(log_path, tmp_path, monkeypatch):
    """upgrade OLD FOLDER writes FOLDER/<OLD's name>; a folder at that name is refused even with --force."""
    from moetape.schema import upgrade

    monkeypatch.setattr(upgrade, "FORMAT_VERSION", upgrade.FORMAT_VERSION + 1)  # the log is older
    d = precious(tmp_path)
    res = run("upgrade", log_path, d)
    assert res.exit_code == 0, res.output
    assert (d / "run.h5").is_file() and "wrote " in res.stderr and res.stdout == ""
    assert_intact(d)
    e = tmp_path / "e"
    (e / "run.h5").mkdir(parents=True)
    (e / "run.h5" / "keep.txt").write_text("mine")
    assert_one_line_error(run("upgrade", log_path, e, "--force"), "keep.txt", "--force replaces only a file")
    assert (e / "run.h5" / "keep.txt").exists()


# ------------------------------------------------------------------------------ derive


def test_derive_failing_midway_leaves_nothing_and_rerun_works(log_path, tmp_path):
    """A derive that fails midway (corrupt chunk) leaves no folder and no file; the rerun needs no --force."""
    bad = corrupt_copy(log_path, tmp_path)
    out = tmp_path / "d"
    res = run("derive", bad, "--out", out, "--no-video", "-q")
    assert_one_line_error(res, "frames/dof_vel", "corrupt")
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["bad.h5", "run.h5"]  # no temporary left beside it
    res = run("derive", log_path, "--out", out, "--no-video", "-q")
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(out)) == DERIVED


def test_derive_failing_midway_in_a_used_folder_leaves_it_as_it_was(log_path, tmp_path):
    """Deriving into the log's own folder (the default) and failing leaves only what was there."""
    d = precious(tmp_path, "run")
    bad = corrupt_copy(log_path, d)
    res = run("derive", bad, "--no-video", "-q")
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    assert sorted(os.listdir(d)) == ["bad.h5", "data.csv", "thesis.tex"]
    shutil.copy(log_path, d / "good.h5")
    res = run("derive", d / "good.h5", "--no-video", "-q")
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(d)) == sorted(DERIVED + ["bad.h5", "data.csv", "good.h5", "thesis.tex"])
    assert_intact(d)


def test_derive_force_replaces_earlier_derive_as_a_whole(log_path, tmp_path):
    """--force replaces every file an earlier derive's manifest lists (a stale video.mp4 too), nothing else."""
    out = tmp_path / "d"
    derive(log_path, str(out), video=False)
    manifest = json.loads((out / "derived.json").read_text())
    manifest["files"].append({"name": "video.mp4", "sha256": "0" * 64, "bytes": 1})
    (out / "derived.json").write_text(json.dumps(manifest))
    (out / "video.mp4").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    res = run("derive", log_path, "--out", out, "--no-video", "-q")
    assert_one_line_error(res, "earlier derive", "--force")
    res = run("derive", log_path, "--out", out, "--no-video", "-q", "--force")
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(out)) == sorted(DERIVED + ["notes.txt"])
    assert (out / "notes.txt").read_text() == "mine"


def test_derive_force_refuses_foreign_folder_at_a_derived_name(log_path, tmp_path):
    """derive --force into a folder whose logs.zarr is a foreign folder: one line, nothing written or deleted."""
    d = precious(tmp_path)
    (d / "logs.zarr").mkdir()
    (d / "logs.zarr" / "keep.txt").write_text("mine")
    res = run("derive", log_path, "--out", d, "--no-video", "-q", "--force")
    assert_one_line_error(res, str(d / "logs.zarr"), "not a zarr store")
    assert sorted(os.listdir(d)) == ["data.csv", "logs.zarr", "thesis.tex"]
    assert (d / "logs.zarr" / "keep.txt").read_text() == "mine"


def test_derive_out_is_a_file(log_path, tmp_path):
    """derive --out FILE is a usage error (exit 2), and the file stays."""
    f = tmp_path / "f.txt"
    f.write_text("x")
    res = run("derive", log_path, "--out", f, "--no-video", "-q")
    assert res.exit_code == 2 and f.read_text() == "x"


# ------------------------------------------------------------------------------ export --steps / --env


def test_export_steps_and_env_are_slices_of_the_full_export(log_path, tmp_path):
    """export --steps 3:10 --env 1 holds exactly steps 3-9 (and their frame rows) of env 1, in env 0's place."""
    import numpy as np
    import zarr

    full, part = tmp_path / "full", tmp_path / "part"
    for kind in ("pkl", "zarr", "results"):
        assert run("export", kind, log_path, "-o", str(full) + "/", "-q").exit_code == 0
        res = run("export", kind, log_path, "-o", str(part) + "/", "-q", "--steps", "3:10", "--env", "1")
        assert res.exit_code == 0 and res.stdout == "" and "(steps 3:10, env 1" in res.stderr, res.output
    with open(full / "logs.pkl", "rb") as f:
        a = pickle.load(f)
    with open(part / "logs.pkl", "rb") as f:
        b = pickle.load(f)
    for group in ("state_logs", "action_logs"):
        for key in a[group]:
            np.testing.assert_array_equal(np.stack(b[group][key]), np.stack(a[group][key])[12:40, 1:2])
    for key in a["episode_logs"]:
        np.testing.assert_array_equal(
            np.stack(b["episode_logs"][key]), np.stack(a["episode_logs"][key])[3:10, 1:2]
        )
    with open(part / "moe_results.pkl", "rb") as f:
        r = pickle.load(f)
    with h5py.File(log_path, "r") as f:
        gate, entropy = f["steps/gate"][3:10, 1], f["steps/gate_entropy"][3:10, 1]
        targets = f["frames/target_future_pos"][12:40, 1]
    assert r["weight_stats"]["base_weights"] == [float(x) for x in gate[:, 0]]
    np.testing.assert_allclose(r["weight_stats"]["weight_entropy"], entropy)
    np.testing.assert_array_equal(np.stack(b["task_logs"]["target_positions"]), targets)
    za, zb = zarr.open(str(full / "logs.zarr"), mode="r"), zarr.open(str(part / "logs.zarr"), mode="r")
    np.testing.assert_array_equal(zb["root_state"][:], za["root_state"][12:40, 1:2])
    assert zb.attrs["steps"] == [3, 10] and zb.attrs["env"] == 1 and "steps" not in za.attrs


def test_export_bad_steps_or_env_is_one_line(log_path, tmp_path):
    """An env or a step range the log does not have is one line naming the log and the range; nothing written."""
    out = tmp_path / "x.pkl"
    assert_one_line_error(
        run("export", "pkl", log_path, "-o", out, "--env", "2"), "--env 2 out of range", "2 env(s)"
    )
    assert_one_line_error(run("export", "pkl", log_path, "-o", out, "--steps", "20:"), "12 committed steps")
    assert_one_line_error(run("export", "pkl", log_path, "-o", out, "--steps", "5:5"), "is empty")
    assert not out.exists()
