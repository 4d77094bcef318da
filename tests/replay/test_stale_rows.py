"""Rows a reset leaves stale (the optional stale_after_reset attribute): the mark and every replay consumer."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import GOLDEN, write_log

from moetape.cli import cli
from moetape.replay import analysis
from moetape.schema.errors import InputError
from moetape.schema.reader import fresh_rows, open_log, stale_mask
from moetape.schema.synthetic import small_spec, synthetic_step
from moetape.schema.writer import LogWriter

ISAAC_STALE = [
    "steps/ee_pos",
    "steps/ee_quat_xyzw",
    "frames/body_pos",
    "frames/body_quat_xyzw",
    "frames/contact_force",
]
STEPS = 14


def write_no_term(path, *, stale=(), frames_per_step=4):
    """A synthetic log without the EE error term (stats compute it from ee_pos), optionally marked."""
    spec = dataclasses.replace(small_spec(2, frames_per_step=frames_per_step), term_names=["reward_total"])
    with LogWriter(str(path), spec, meta={"command_line": "test"}, stale_after_reset=stale) as log:
        for s in range(STEPS):
            log.append(*synthetic_step(spec, s, 0))
    return str(path)


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """The same synthetic steps written marked (Isaac Gym's list) and unmarked, with and without the term."""
    tmp = tmp_path_factory.mktemp("stale")
    out = {}
    for name, stale in (("marked", ISAAC_STALE), ("plain", ())):
        write_log(tmp / f"{name}.h5", STEPS, stale_after_reset=stale)
        out[name] = str(tmp / f"{name}.h5")
        out[name + "_noterm"] = write_no_term(tmp / f"{name}_noterm.h5", stale=stale)
    out["policy"] = write_no_term(tmp / "policy.h5", stale=ISAAC_STALE, frames_per_step=1)
    return out


def expected_stale(log):
    """The rule spelled out: the first step of every episode after the env's first."""
    return (log.read("step_in_episode") == 0) & (log.read("episode") > 0)


# ------------------------------------------------------------------------------------- the mark


def test_attribute_written_only_when_declared(logs):
    """The writer stores the declared fields as a JSON list; an unmarked log has no attribute at all."""
    with open_log(logs["marked"]) as log:
        assert json.loads(log.meta["stale_after_reset"]) == ISAAC_STALE
        assert log.stale_after_reset == ISAAC_STALE
    with open_log(logs["plain"]) as log:
        assert "stale_after_reset" not in log.meta and log.stale_after_reset == []


def test_writer_refuses_a_field_the_log_lacks(tmp_path):
    """A stale field that is not a dataset of the log is one InputError naming it, before any file is made."""
    with pytest.raises(InputError, match="frames/nope"):
        write_log(tmp_path / "x.h5", 2, stale_after_reset=["frames/nope"])
    assert not (tmp_path / "x.h5").exists()


def test_stale_mask_follows_the_rule(logs):
    """stale_mask is the first step of each later episode, per env, for any range and env; per field if asked."""
    with open_log(logs["marked"]) as log:
        want = expected_stale(log)
        assert want.any() and not want[0].any()
        np.testing.assert_array_equal(stale_mask(log), want)
        np.testing.assert_array_equal(stale_mask(log, 3, 11, env=1), want[3:11, 1])
        np.testing.assert_array_equal(stale_mask(log, 2, 9, env=[1, 0]), want[2:9][:, [1, 0]])
        np.testing.assert_array_equal(stale_mask(log, field="ee_pos"), want)
        assert not stale_mask(log, field="gate").any() and not stale_mask(log, field="frames/root_pos").any()


@pytest.mark.parametrize("path", GOLDEN + ["plain"])
def test_unmarked_logs_have_no_stale_rows(logs, path):
    """Golden files and logs without the attribute: no stale rows, and the mask reads nothing."""
    with open_log(logs.get(path, path)) as log:
        assert log.stale_after_reset == [] and not stale_mask(log).any()
        assert stale_mask(log).shape == (log.n_steps, log.n_envs)


def test_salvage_keeps_the_mark(logs, tmp_path):
    """`moetape salvage` copies the attribute to the new file (upgrade does the same when a version is added)."""
    out = tmp_path / "salvaged.h5"
    res = CliRunner().invoke(cli, ["salvage", logs["marked"], str(out)])
    assert res.exit_code == 0, res.stderr
    with open_log(str(out)) as log:
        assert log.stale_after_reset == ISAAC_STALE


# ------------------------------------------------------------------------------------------ info


def test_info_shows_the_mark(logs):
    """`moetape info` names the stale fields (text and --json) and says "none" for an unmarked log."""
    runner = CliRunner()
    res = runner.invoke(cli, ["info", logs["marked"]])
    assert res.exit_code == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("stale rows"))
    assert "steps/ee_pos" in line and "frames/contact_force" in line and "row 0" in line
    res = runner.invoke(cli, ["info", logs["marked"], "--json"])
    assert json.loads(res.stdout)["stale_after_reset"] == ISAAC_STALE
    res = runner.invoke(cli, ["info", logs["plain"]])
    assert any(x.startswith("stale rows") and x.endswith("none") for x in res.stdout.splitlines())


# ----------------------------------------------------------------------------------------- stats


def test_stats_exclude_stale_ee_errors(logs):
    """An EE error from a stale ee_pos is left out of the correlation figures, and the output says how many."""
    marked = analysis.summary(logs["marked_noterm"])
    plain = analysis.summary(logs["plain_noterm"])
    with open_log(logs["marked_noterm"]) as log:
        n_stale = int(expected_stale(log).sum())
    assert n_stale > 0
    assert marked["stale_after_reset"] == {
        "fields": ISAAC_STALE,
        "env_steps": n_stale,
        "excluded_from_ee_pos_err": n_stale,
    }
    assert marked["correlation"]["ee_pos_err_excluded_stale"] == n_stale
    assert marked["correlation"]["overall"]["n"] == plain["correlation"]["overall"]["n"] - n_stale
    assert (
        marked["correlation"]["overall"]["mean_ee_pos_err_m"]
        != plain["correlation"]["overall"]["mean_ee_pos_err_m"]
    )
    assert marked["experts"] == plain["experts"]  # gate figures keep every step
    res = CliRunner().invoke(cli, ["stats", logs["marked_noterm"]])
    assert res.exit_code == 0, res.stderr
    assert f"EE error excludes {n_stale} env-steps whose ee_pos is stale" in res.stdout
    assert "EE error excludes" not in CliRunner().invoke(cli, ["stats", logs["plain_noterm"]]).stdout


def test_stats_keep_errors_from_the_term(logs):
    """The recorded error term is computed after the step, so nothing is excluded; stale steps are still counted."""
    d = analysis.summary(logs["marked"])
    assert d["stale_after_reset"]["env_steps"] > 0 and d["stale_after_reset"]["excluded_from_ee_pos_err"] == 0
    assert d["correlation"] == analysis.summary(logs["plain"])["correlation"]


# ---------------------------------------------------------------------------------------- derive


def test_derive_counts_stale_rows_and_keeps_legacy_values(logs, tmp_path):
    """derive notes how many env-steps are stale; logs.zarr keeps the stale values as the legacy script wrote them."""
    zarr = pytest.importorskip("zarr")
    res = CliRunner().invoke(
        cli, ["derive", logs["marked"], "-o", str(tmp_path / "d"), "--no-video", "--rows", "substep"]
    )
    assert res.exit_code == 0, res.stderr
    with open_log(logs["marked"]) as log:
        n_stale = int(expected_stale(log).sum())
        body = log.read("frames/body_pos")
        ee = log.read("ee_pos")
    assert f"{n_stale} env-steps are a new episode's first step" in res.stderr
    manifest = json.loads((tmp_path / "d" / "derived.json").read_text())
    assert any(f"{n_stale} env-steps" in note for note in manifest["notes"])
    store = zarr.open_group(str(tmp_path / "d" / "logs.zarr"), mode="r")
    np.testing.assert_array_equal(np.asarray(store["rigid_body_pos"]), body)  # stale rows included, unchanged
    res = CliRunner().invoke(
        cli, ["derive", logs["plain"], "-o", str(tmp_path / "p"), "--no-video", "--rows", "substep"]
    )
    assert res.exit_code == 0 and "automatic reset" not in res.stderr
    assert ee.shape[0] == STEPS


# ------------------------------------------------------------------------------- render and view


def test_fresh_row_stands_in_for_a_stale_one(logs):
    """A stale row 0 is drawn from the step's row 1 (substep logs) or the previous fresh row (policy logs)."""
    from moetape.replay.render import StaleWindow, fresh_row

    with open_log(logs["marked"]) as log:
        want = expected_stale(log)[:, 0]
        stale = StaleWindow(log, 0, "frames/body_pos")
        for s in range(STEPS):
            for sub in range(4):
                row = s * 4 + sub
                assert fresh_row(log, row, stale) == (row + 1 if want[s] and sub == 0 else row)
    with open_log(logs["policy"]) as log:
        want = expected_stale(log)[:, 0]
        stale = StaleWindow(log, 0, "frames/body_pos")
        for s in np.flatnonzero(want):
            prev = max(p for p in range(s) if not want[p])
            assert fresh_row(log, int(s), stale) == prev
    with open_log(logs["plain"]) as log:
        stale = StaleWindow(log, 0, "frames/body_pos")
        assert [fresh_row(log, r, stale) for r in range(log.n_frames)] == list(range(log.n_frames))


@pytest.mark.parametrize("name, offset", [("marked", 1), ("policy", None)])
def test_render_never_draws_stale_poses(logs, monkeypatch, name, offset):
    """The skeleton of a stale row is the stand-in row's, root and camera included; the stale EE pose is not drawn."""
    pytest.importorskip("mujoco")
    from moetape.replay import render as rd
    from moetape.replay import skeleton

    drawn, axes = [], []
    monkeypatch.setattr(skeleton, "add_skeleton", lambda scene, pos, parents: drawn.append(np.array(pos)))
    real_axes = skeleton.add_axes
    monkeypatch.setattr(
        skeleton,
        "add_axes",
        lambda scene, p, q, **kw: (axes.append(np.array(p)), real_axes(scene, p, q, **kw)),
    )
    with open_log(logs[name]) as log:
        fps = log.frames_per_step
        want = expected_stale(log)[:, 0]
        s = int(np.flatnonzero(want)[0])
        src = s * fps + 1 if offset else max(p for p in range(s) if not want[p])
        body = log.read("frames/body_pos", env=0)
        try:
            fr = rd.FrameRenderer(log, env=0, size=(32, 24), overlay=False)
        except rd.RenderError as e:
            pytest.skip(f"no OpenGL here: {e}")
        with fr:
            fr.render_row(s * fps)
            assert fr.ee_stale(s) and not fr.ee_stale(s - 1)
            np.testing.assert_array_equal(drawn[-1], body[src])
            assert len(axes) == 1  # the target only
            fr.render_row((s - 1) * fps)
            np.testing.assert_array_equal(drawn[-1], body[(s - 1) * fps])
            assert len(axes) == 3  # target and EE


def test_viewer_gaps_stale_ee_errors_and_says_so(logs):
    """The viewer's EE error curve has a gap at stale steps (error from ee_pos) and the title names the stale step."""
    from moetape.replay import viewer as vw

    with open_log(logs["marked_noterm"]) as log:
        want = expected_stale(log)[:, 1]
        series = vw.load_series(log, 1)
        assert np.isnan(series.ee_err[want]).all() and np.isfinite(series.ee_err[~want]).all()
        s = int(np.flatnonzero(want)[0])
        assert "EE pose stale" in vw.step_caption(log, 1, s, series)
        assert "EE pose stale" not in vw.step_caption(log, 1, s - 1, series)
    with open_log(logs["plain_noterm"]) as log:
        assert np.isfinite(vw.load_series(log, 1).ee_err).all()


# ------------------------------------------------------------------------------- export rerun


def test_fresh_rows_is_renders_rule(logs):
    """schema.reader.fresh_rows (vectorised) picks the same row as render's fresh_row, substep and policy logs."""
    from moetape.replay.render import StaleWindow, fresh_row

    for name in ("marked", "policy", "plain"):
        with open_log(logs[name]) as log:
            for env in range(log.n_envs):
                stale = StaleWindow(log, env, "frames/body_pos")
                want = [fresh_row(log, r, stale) for r in range(log.n_frames)]
                got = fresh_rows(stale_mask(log, env=env, field="frames/body_pos"), log.frames_per_step)
                assert got.tolist() == [-1 if w is None else w for w in want]
                # a window that starts on a stale step: -1 there (the caller looks before it)
                s = int(np.flatnonzero(stale_mask(log, env=env))[0]) if name != "plain" else 1
                part = fresh_rows(stale_mask(log, s, env=env, field="frames/body_pos"), log.frames_per_step)
                if name == "policy":
                    assert part[0] == -1
                else:
                    assert part[0] == want[s * log.frames_per_step] - s * log.frames_per_step


def _read_rrd(path):
    """{entity path: [(step, value)]} of the .rrd's temporal rows, per component, sorted by step."""
    import pyarrow as pa
    from rerun.chunk import RrdReader

    out = {}
    for chunk in RrdReader(path).stream():
        batch = chunk.to_record_batch()
        cols = {
            n: c.to_pylist()
            for n, c in zip(batch.schema.names, batch.columns)
            if not pa.types.is_temporal(c.type)
        }
        if chunk.is_static:
            out.setdefault(chunk.entity_path, {}).setdefault("static", []).append(cols)
            continue
        for name, values in cols.items():
            if name != "step":
                out.setdefault(chunk.entity_path, {}).setdefault(name, []).extend(zip(cols["step"], values))
    for ent in out.values():
        for name, rows in ent.items():
            if name != "static":
                rows.sort(key=lambda r: r[0])
    return out


@pytest.mark.filterwarnings("ignore:RRD file has no footer")
@pytest.mark.parametrize(
    "name, chunk_steps", [("marked", None), ("policy", None), ("policy", 3), ("plain", 4)]
)
def test_export_rerun_sends_fresh_body_rows_and_leaves_stale_ee_out(logs, tmp_path, name, chunk_steps):
    """Body poses of a stale row are the fresh row render draws; stale EE pose, line and errors are not sent; a note says so."""
    pytest.importorskip("rerun")
    from moetape.replay import rerun_export as rx

    out = tmp_path / "x.rrd"
    res = rx.export_rerun(logs[name], str(out), chunk_steps=chunk_steps)
    data = _read_rrd(str(out))
    with open_log(logs[name]) as log:
        fps = log.frames_per_step
        stale_all = (
            expected_stale(log) if log.stale_after_reset else np.zeros((log.n_steps, log.n_envs), bool)
        )
        assert res["stale_after_reset"]["ee_env_steps_left_out"] == int(stale_all.sum())
        for env in range(log.n_envs):
            stale = stale_all[:, env]
            src = fresh_rows(stale, fps)
            if fps == 1:  # none precedes the first stale step of these logs: render takes the next one
                assert (src >= 0).all()
            body = log.read("frames/body_pos", env=env)
            pts = np.array([v for _, v in data[f"/env{env}/skeleton"]["Points3D:positions"]])
            np.testing.assert_allclose(pts, body[src], rtol=1e-6)
            if stale.any():
                assert not np.allclose(pts, body)  # the stale rows were replaced
            for path, comp in (
                ("ee", "Transform3D:translation"),
                ("ee", "LineStrips3D:strips"),
                ("error", "Scalars:scalars"),
            ):
                steps = [s for s, _ in data[f"/env{env}/{path}"][comp]]
                assert steps == np.flatnonzero(~stale).tolist(), path
            err = np.array([v for _, v in data[f"/env{env}/error"]["Scalars:scalars"]])[:, 0]
            want = np.linalg.norm(log.read("target_pos", env=env) - log.read("ee_pos", env=env), axis=-1)
            np.testing.assert_allclose(err, want[~stale], rtol=1e-5)
            tr = [s for s, _ in data[f"/env{env}/target"]["Transform3D:translation"]]
            assert tr == list(range(log.n_steps))  # the target is never stale
    note = data.get("/notes/stale_after_reset")
    if name == "plain":
        assert note is None
    else:
        text = note["static"][0]["TextLog:text"][0][0]
        assert "stale_after_reset" in text and "left out" in text


@pytest.mark.filterwarnings("ignore:RRD file has no footer")
@pytest.mark.parametrize("name", ["marked", "policy"])
def test_export_rerun_per_field_layout_makes_stale_ee_rows_nan(logs, tmp_path, name):
    """Per-field layout: a stale EE row cannot be left out of one env, so its box and errors are NaN there."""
    pytest.importorskip("rerun")
    from moetape.replay import rerun_export as rx

    out = tmp_path / "f.rrd"
    res = rx.export_rerun(logs[name], str(out), layout="per-field", chunk_steps=3)
    data = _read_rrd(str(out))
    with open_log(logs[name]) as log:
        stale = expected_stale(log)  # (steps, envs)
        assert stale.any() and res["stale_after_reset"]["ee_env_steps_left_out"] == int(stale.sum())
        err = np.array([v for _, v in data["/envs/error/ee_pos_m"]["Scalars:scalars"]])
        assert (np.isnan(err) == stale).all()
        want = np.linalg.norm(log.read("target_pos") - log.read("ee_pos"), axis=-1)
        np.testing.assert_allclose(err[~stale], want[~stale], rtol=1e-5)
        centres = np.array([v for _, v in data["/envs/ee"]["Boxes3D:centers"]])
        assert (np.isnan(centres).all(axis=-1) == stale).all()
        target = np.array([v for _, v in data["/envs/target"]["Boxes3D:centers"]])
        assert not np.isnan(target).any()  # the target is never stale
        # body poses: the fresh rows render draws, every env in each row
        pts = np.array([v for _, v in data["/envs/skeleton"]["Points3D:positions"]])
        body = log.read("frames/body_pos")
        for env in range(log.n_envs):
            src = fresh_rows(stale[:, env], log.frames_per_step)
            got = pts.reshape(pts.shape[0], log.n_envs, -1, 3)[:, env]
            np.testing.assert_allclose(got, body[src, env], rtol=1e-6)
    assert "per-field layout" in data["/notes/stale_after_reset"]["static"][0]["TextLog:text"][0][0]


@pytest.mark.filterwarnings("ignore:RRD file has no footer")
def test_export_rerun_policy_log_from_a_stale_start_uses_the_step_before(logs, tmp_path):
    """An export starting on a stale step of a policy-rate log takes that row's poses from the step before the start."""
    pytest.importorskip("rerun")
    from moetape.replay import rerun_export as rx

    with open_log(logs["policy"]) as log:
        stale = expected_stale(log)
        s = int(np.flatnonzero(stale[:, 0])[0])
        body = log.read("frames/body_pos", env=0)
    out = tmp_path / "y.rrd"
    rx.export_rerun(logs["policy"], str(out), env=0, steps=(s, None), chunk_steps=2)
    pts = [v for _, v in _read_rrd(str(out))["/env0/skeleton"]["Points3D:positions"]]
    np.testing.assert_allclose(np.array(pts[0]), body[s - 1], rtol=1e-6)
    assert not np.allclose(body[s - 1], body[s])


# --------------------------------------------------------------------------------------- compare


def test_compare_excludes_stale_ee_errors_and_says_so(logs):
    """compare leaves EE errors from a stale ee_pos out of that log's mean, counts them in JSON, names them in text."""
    from moetape.replay.compare import compare

    with open_log(logs["marked_noterm"]) as log:
        stale = expected_stale(log)
        err = np.linalg.norm(log.read("target_pos") - log.read("ee_pos"), axis=-1)
    with open_log(logs["marked_noterm"]) as a, open_log(logs["plain_noterm"]) as b:
        d = compare(a, b)
    assert d["a"]["ee_pos_err_excluded_stale"] == int(stale.sum()) > 0
    assert d["b"]["ee_pos_err_excluded_stale"] == 0
    assert d["a"]["mean_ee_pos_err_m"] == pytest.approx(float(err[~stale].mean()))
    assert d["b"]["mean_ee_pos_err_m"] == pytest.approx(float(err.mean()))
    with open_log(logs["marked"]) as a, open_log(logs["plain"]) as b:  # the recorded term: never stale
        assert compare(a, b)["a"]["ee_pos_err_excluded_stale"] == 0
    res = CliRunner().invoke(cli, ["compare", logs["marked_noterm"], logs["plain_noterm"]])
    assert res.exit_code == 0, res.stderr
    assert f"A's EE error excludes {int(stale.sum())} env-steps whose ee_pos is stale" in res.stdout
    assert "B's EE error excludes" not in res.stdout
    res = CliRunner().invoke(cli, ["compare", logs["marked_noterm"], logs["plain_noterm"], "--json"])
    assert json.loads(res.stdout)["a"]["ee_pos_err_excluded_stale"] == int(stale.sum())
