"""`moetape export rerun` and `moetape view --web`: the .rrd read back with Rerun's API, a real browser."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import write_log

from moetape.cli import cli
from moetape.schema import layout
from moetape.schema.reader import open_log
from moetape.schema.synthetic import small_spec, synthetic_step
from moetape.schema.writer import LogWriter

rr = pytest.importorskip("rerun")
import pyarrow as pa  # noqa: E402 - rerun-sdk's dependency
from rerun.chunk import RrdReader  # noqa: E402

from moetape.replay import rerun_export as rx  # noqa: E402
from moetape.replay import rerun_view as rv  # noqa: E402
from moetape.replay.mjcf import parse_mjcf  # noqa: E402
from moetape.replay.rerun_scene import GATE_COLORS  # noqa: E402
from moetape.replay.skeleton import quat_xyzw_to_mat as quat_to_mat  # noqa: E402

# moetape writes .rrd files without Rerun's footer (memory stays bounded); Rerun's reader says so
pytestmark = pytest.mark.filterwarnings("ignore:RRD file has no footer")

# body0 is the root (a box and a capsule), body1 a sphere + cylinder, body2 an ellipsoid in a <frame>.
MODEL = """<mujoco model="three_bodies"><compiler angle="radian"/>
<default><geom rgba="0.2 0.4 0.6 1"/><default class="red"><geom rgba="1 0 0 1"/></default></default>
<worldbody><geom type="plane" size="2 2 0.1"/>
<body name="body0"><freejoint/><geom type="box" size="0.2 0.1 0.05"/>
  <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.02" class="red"/>
  <body name="body1" pos="0.3 0 0"><joint axis="0 1 0"/><geom type="sphere" size="0.03"/>
    <geom type="cylinder" size="0.02 0.05" pos="0 0 -0.05"/>
    <body name="body2" pos="0 0 -0.1"><joint axis="0 1 0"/>
      <frame pos="0 0 -0.05"><geom type="ellipsoid" size="0.01 0.02 0.03" group="1"/></frame>
      <geom type="box" size="1 1 1" group="4"/>
    </body></body></body></worldbody></mujoco>"""


def write_model_log(path, n_steps=12, *, n_envs=2, model=True):
    """Write a synthetic 3-body log (body0..2), with MODEL stored unless ``model`` is False."""
    spec = small_spec(n_envs, frames_per_step=4)
    with LogWriter(str(path), spec, meta={"command_line": "test"}, model_xml=MODEL if model else None) as log:
        for s in range(n_steps):
            log.append(*synthetic_step(spec, s, 3))
    return str(path)


@pytest.fixture(scope="module")
def model_log(tmp_path_factory):
    """A 12-step, 2-env synthetic log with a 3-body model stored."""
    return write_model_log(tmp_path_factory.mktemp("rerun") / "run.h5")


def read_rrd(path):
    """Return {entity path: [record batch dicts]} of the .rrd's recording (static and temporal)."""
    out = {}
    for chunk in RrdReader(path).stream():
        batch = chunk.to_record_batch()
        cols = {
            name: (col.cast(pa.int64()) if pa.types.is_temporal(col.type) else col).to_pylist()
            for name, col in zip(batch.schema.names, batch.columns)
        }
        out.setdefault(chunk.entity_path, []).append(
            {"static": chunk.is_static, "timelines": chunk.timeline_names, **cols}
        )
    return out


def column(entries, name):
    """Concatenate one column over an entity's temporal chunks, ordered by the step timeline."""
    rows = []
    for e in entries:
        if not e["static"] and name in e:
            rows.extend(zip(e["step"], e.get("sim_time", e["step"]), e[name]))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [r[2] for r in rows], [r[0] for r in rows]


def bundled_xml():
    """The bundled robot's MJCF (record/assets/legged_manipulator.xml)."""
    from moetape.record.mujoco_model import BUNDLED_XML

    with open(BUNDLED_XML, encoding="utf-8") as f:
        return f.read()


def run_cli(args):
    """Invoke the moetape CLI with stderr kept apart."""
    return CliRunner().invoke(cli, args)


# ------------------------------------------------------------------------------------------ export
def test_export_rrd_has_entities_timelines_and_the_logs_values(model_log, tmp_path):
    """The .rrd holds per-env entities on step/sim_time with the log's gate, poses and episodes."""
    out = tmp_path / "run.rrd"
    res = run_cli(["export", "rerun", model_log, "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert res.stdout == "" and res.stderr.startswith(
        f"wrote {out} (steps 0:12, 2 envs, per-env layout, model mode"
    )
    data = read_rrd(str(out))
    with open_log(model_log) as log:
        for e in (0, 1):
            p = f"/env{e}"
            vals, steps = column(data[f"{p}/gate"], "Scalars:scalars")  # one series per expert
            assert steps == list(range(12))
            np.testing.assert_allclose(np.array(vals), log.read("gate", env=e), rtol=1e-6)
            assert set(next(en for en in data[f"{p}/gate"] if not en["static"])["timelines"]) == {
                "step",
                "sim_time",
            }
            ent, _ = column(data[f"{p}/gate_entropy"], "Scalars:scalars")
            np.testing.assert_allclose(np.ravel(ent), log.read("gate_entropy", env=e), rtol=1e-6)
            # body poses: every frame row, translation and quaternion as recorded
            for b, body in enumerate(log.body_names):
                entries = data[f"{p}/robot/{body}"]
                tr = [t for en in entries if not en["static"] for t in en["Transform3D:translation"]]
                q = [t for en in entries if not en["static"] for t in en["Transform3D:quaternion"]]
                np.testing.assert_allclose(
                    np.reshape(tr, (-1, 3)), log.read("frames/body_pos", env=e)[:, b], rtol=1e-6
                )
                np.testing.assert_allclose(
                    np.reshape(q, (-1, 4)), log.read("frames/body_quat_xyzw", env=e)[:, b], rtol=1e-6
                )
            # episode boundaries: one event per done step, with its episode and timeout flag
            done = np.flatnonzero(log.read("done", env=e))
            texts, steps = column(data[f"{p}/episode/events"], "TextLog:text")
            assert steps == done.tolist() and len(done) > 0
            ep, to = log.read("episode", env=e), log.read("timeout", env=e)
            assert texts == [[f"episode {ep[i]} ended" + (" (timeout)" if to[i] else "")] for i in done]
            err, _ = column(data[f"{p}/error"], "Scalars:scalars")  # position (m), orientation (rad)
            ee, target = log.read("ee_pos", env=e), log.read("target_pos", env=e)
            np.testing.assert_allclose(np.array(err)[:, 0], np.linalg.norm(target - ee, axis=-1), rtol=1e-5)
            np.testing.assert_allclose(
                np.array(err)[:, 1],
                rx.rot_error(log.read("ee_quat_xyzw", env=e), log.read("target_quat_xyzw", env=e)),
                rtol=1e-5,
            )
            rew, _ = column(data[f"{p}/reward"], "Scalars:scalars")  # the total, then the terms
            want = [log.read("reward", env=e)] + [log.read("terms/" + t, env=e) for t in log.term_names]
            np.testing.assert_allclose(np.array(rew), np.stack(want, axis=-1), rtol=1e-6)
            act, _ = column(data[f"{p}/action"], "Scalars:scalars")
            np.testing.assert_allclose(np.array(act), log.read("action", env=e), rtol=1e-6)
            # the EE-target line in the EE's frame: put back in the world by the EE pose, it ends on the target
            strips, _ = column(data[f"{p}/ee"], "LineStrips3D:strips")
            quats, _ = column(data[f"{p}/ee"], "Transform3D:quaternion")
            local = np.array(strips)[:, 0]
            np.testing.assert_allclose(local[:, 0], 0.0, atol=1e-7)
            world = np.stack([ee[i] + quat_to_mat(np.ravel(q)) @ local[i, 1] for i, q in enumerate(quats)])
            np.testing.assert_allclose(world, target, rtol=1e-5, atol=1e-6)
            fut = [
                f for en in data[f"{p}/future_targets"] if not en["static"] for f in en["Points3D:positions"]
            ]
            np.testing.assert_allclose(np.array(fut), log.read("frames/target_future_pos", env=e), rtol=1e-6)
        props = data["/__properties/moetape"][0]
        assert props["log_id"] == [[log.log_id]] and props["command_line"] == [["test"]]
    # the model's geoms, static under their bodies; group 4 is not drawn, the sized floor is
    assert data["/env0/robot/body0/box"][0]["static"] and "/env0/robot/body2/ellipsoid" in data
    assert "/env0/robot/body2/box" not in data and "/world/geoms/plane" in data
    rec = RrdReader(str(out))
    assert len(rec.recordings()) == 1 and len(rec.blueprints()) == 1


def test_per_field_layout_holds_every_env_in_each_fields_entity(model_log, tmp_path):
    """--layout per-field: one entity per field, the envs its instances (series env<e>), values as logged."""
    out = tmp_path / "fields.rrd"
    res = run_cli(["export", "rerun", model_log, "-o", str(out), "-q", "--layout", "per-field"])
    assert res.exit_code == 0, res.output
    assert "per-field layout, skeleton mode" in res.stderr
    data = read_rrd(str(out))
    assert not any(k.startswith("/env0") for k in data)  # no per-env paths
    with open_log(model_log) as log:
        n = log.n_envs
        for k, name in enumerate(log.expert_names):
            vals, steps = column(data[f"/envs/gate/{name}"], "Scalars:scalars")
            assert steps == list(range(12))
            np.testing.assert_allclose(np.array(vals), log.read("gate")[:, :, k], rtol=1e-6)  # (steps, envs)
            style = next(en for en in data[f"/envs/gate/{name}"] if en["static"])
            assert style["SeriesLines:names"] == [[f"env{e}" for e in range(n)]]
        act, _ = column(data[f"/envs/action/{log.joint_names[3]}"], "Scalars:scalars")
        np.testing.assert_allclose(np.array(act), log.read("action")[:, :, 3], rtol=1e-6)
        term = log.term_names[0]
        rew, _ = column(data[f"/envs/reward/{term}"], "Scalars:scalars")
        np.testing.assert_allclose(np.array(rew), log.read("terms/" + term), rtol=1e-6)
        err, _ = column(data["/envs/error/ee_pos_m"], "Scalars:scalars")
        want = np.linalg.norm(log.read("target_pos") - log.read("ee_pos"), axis=-1)
        np.testing.assert_allclose(np.array(err), want, rtol=1e-5)
        # the poses as boxes: centre and quaternion of every env per step, as stored
        for what in ("ee", "target"):
            centres, _ = column(data[f"/envs/{what}"], "Boxes3D:centers")
            quats, _ = column(data[f"/envs/{what}"], "Boxes3D:quaternions")
            np.testing.assert_allclose(np.array(centres), log.read(f"{what}_pos"), rtol=1e-6)
            np.testing.assert_allclose(np.array(quats), log.read(f"{what}_quat_xyzw"), rtol=1e-6)
            style = next(en for en in data[f"/envs/{what}"] if en["static"])
            assert len(style["Boxes3D:half_sizes"][0]) == n  # one box per env
        # every env's bodies per frame row, env-major within the row; 8 future targets per env
        pts = [p for en in data["/envs/skeleton"] if not en["static"] for p in en["Points3D:positions"]]
        body = log.read("frames/body_pos")  # (rows, envs, bodies, 3)
        np.testing.assert_allclose(np.array(pts), body.reshape(body.shape[0], -1, 3), rtol=1e-6)
        fut = [p for en in data["/envs/future_targets"] if not en["static"] for p in en["Points3D:positions"]]
        ft = log.read("frames/target_future_pos")
        np.testing.assert_allclose(np.array(fut), ft.reshape(ft.shape[0], -1, 3), rtol=1e-6)
        # episode ends: one text per step where some env's episode ended, naming each env
        done = log.read("done")
        texts, steps = column(data["/envs/episode/events"], "TextLog:text")
        assert steps == np.flatnonzero(done.any(axis=1)).tolist() and steps
        for (text,), s in zip(texts, steps):
            assert [int(part.split()[1]) for part in text.split("; ")] == np.flatnonzero(done[s]).tolist()


def test_layout_errors_and_the_many_envs_note(model_log, tmp_path):
    """An unknown layout is a usage error; the per-env layout of many envs notes --layout per-field."""
    res = run_cli(["export", "rerun", model_log, "-o", str(tmp_path / "x.rrd"), "--layout", "flat"])
    assert res.exit_code == 2 and "per-field" in res.output
    with pytest.raises(rx.InputError, match="--layout 'flat'"):
        rx.export_rerun(model_log, str(tmp_path / "y.rrd"), layout="flat")
    assert not os.path.exists(tmp_path / "y.rrd")
    many = write_model_log(tmp_path / "many.h5", n_steps=2, n_envs=20, model=False)
    res = run_cli(["export", "rerun", many, "-o", str(tmp_path / "m.rrd"), "-q"])
    assert res.exit_code == 0 and "--layout per-field" in res.stderr
    res = run_cli(["export", "rerun", many, "-o", str(tmp_path / "f.rrd"), "-q", "--layout", "per-field"])
    assert res.exit_code == 0 and "--layout per-field writes" not in res.stderr


def test_export_sends_each_entity_once_per_chunk_and_markers_are_static(model_log, tmp_path, monkeypatch):
    """Chunks of 5 steps: one send_columns call per entity per chunk; the pose markers have no rows."""
    calls = {}
    orig = rr.RecordingStream.send_columns

    def counting(self, path, **kw):
        calls[path] = calls.get(path, 0) + 1
        return orig(self, path, **kw)

    monkeypatch.setattr(rr.RecordingStream, "send_columns", counting)
    out = tmp_path / "chunks.rrd"
    rx.export_rerun(model_log, str(out), chunk_steps=5)
    assert calls["env1/gate"] == 3 and calls["env0/robot/body2"] == 3 and calls["env0/ee"] == 3
    assert not any("marker" in p for p in calls)
    data = read_rrd(str(out))
    assert all(en["static"] for en in data["/env0/ee/marker"]) and "/env0/ee_marker" not in data
    _, steps = column(data["/env1/gate"], "Scalars:scalars")
    assert steps == list(range(12))


def test_columns_blocks_and_rows_with_batches_of_one():
    """Columns: block b is entity b's column, rows of one vector or series even when a batch holds one."""
    from moetape.replay.rerun_columns import Columns

    v = np.arange(2 * 3 * 1 * 3, dtype=np.float32).reshape(2, 3, 1, 3)  # 2 envs, 3 rows, 1 point a row
    pts = Columns.vectors("Points3D:positions", v, batch=True)
    assert pts[1].as_arrow_array().to_pylist() == [[list(p)] for p in v[1, :, 0]]
    act = Columns.scalars(np.ones((2, 3, 1)), batch=True)
    assert act[0].as_arrow_array().to_pylist() == [[1.0]] * 3
    gate = Columns.scalars(np.arange(2 * 2 * 3.0).reshape(2, 2, 3))  # (env, expert, steps)
    assert gate[3].as_arrow_array().to_pylist() == [[9.0], [10.0], [11.0]]
    seg = Columns.strips(np.zeros((2, 3, 1, 2, 3)))
    assert len(seg[1].as_arrow_array()) == 3 and seg[1].as_arrow_array()[0].as_py() == [[[0.0] * 3] * 2]


def test_chunks_hold_a_byte_budget_of_the_selected_envs(model_log):
    """One env gets n_envs times the steps per chunk that all envs get, both from EXPORT_CHUNK_BYTES."""
    with open_log(model_log) as log:
        w = rx.RecordingWriter(rx.new_recording(log, suffix="-budget"), log, [0])
        fields = w.fields()
        per_env = log.step_bytes(fields) / log.n_envs
        one, both = rx.chunk_steps_for(log, fields, 1), rx.chunk_steps_for(log, fields, 2)
        assert one == int(rx.EXPORT_CHUNK_BYTES // per_env) and both == int(
            rx.EXPORT_CHUNK_BYTES // (2 * per_env)
        )
        assert rx.chunk_steps_for(log, fields, 2, budget=1) == 1


def test_memory_stays_bounded_no_footer_and_a_small_chunk_cache(model_log, tmp_path):
    """The .rrd has no footer (Rerun's keeps an entry per chunk in memory); the reader's chunk cache is 1 MiB."""
    out = tmp_path / "nofooter.rrd"
    res = run_cli(["export", "rerun", model_log, "-o", str(out), "-q"])
    assert res.exit_code == 0
    with pytest.warns(rr.error_utils.RerunWarning, match="no footer"):
        RrdReader(str(out))
    with open_log(model_log) as log:
        assert log.h5.id.get_access_plist().get_cache()[2] == 1 << 20


def test_export_prints_no_rerun_warning(model_log, tmp_path):
    """A real `moetape export rerun` process writes only its 'wrote' line on stderr (no Rerun footer warning)."""
    out = tmp_path / "quiet.rrd"
    res = subprocess.run(
        [sys.executable, "-m", "moetape", "export", "rerun", model_log, "-o", str(out), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0 and res.stdout == ""
    assert res.stderr.startswith(f"wrote {out} ") and res.stderr.count("\n") == 1, res.stderr


def test_rerun_modules_are_split_and_small():
    """The viewer lives in rerun_view, the scene in rerun_scene, the columns in rerun_columns, the per-field
    layout in rerun_fields; each <= 500 lines."""
    from moetape.replay import rerun_columns, rerun_fields, rerun_scene

    assert not hasattr(rx, "view_rerun") and hasattr(rv, "view_rerun") and hasattr(rerun_scene, "blueprint")
    for mod in (rx, rv, rerun_scene, rerun_columns, rerun_fields):
        with open(mod.__file__, encoding="utf-8") as f:
            assert len(f.readlines()) <= 500, mod.__name__


def test_export_one_env_and_a_step_range(model_log, tmp_path):
    """--env 1 --steps 3:7 writes only env1, steps 3-6, with the frame rows of those steps."""
    out = tmp_path / "one.rrd"
    res = run_cli(["export", "rerun", model_log, "-o", str(out), "--env", "1", "--steps", "3:7", "-q"])
    assert res.exit_code == 0, res.output
    data = read_rrd(str(out))
    assert not any(k.startswith("/env0") for k in data)
    _, steps = column(data["/env1/gate"], "Scalars:scalars")
    assert steps == [3, 4, 5, 6]
    with open_log(model_log) as log:
        tr = [
            t for en in data["/env1/robot/body1"] if not en["static"] for t in en["Transform3D:translation"]
        ]
        np.testing.assert_allclose(
            np.reshape(tr, (-1, 3)), log.read("frames/body_pos", 3, 7, env=1)[:, 1], rtol=1e-6
        )


def test_log_without_model_exports_the_skeleton(tmp_path):
    """A log without a stored MJCF gets one point per body and links per frame row."""
    log_path = write_model_log(tmp_path / "skel.h5", n_steps=3, model=False)
    out = tmp_path / "skel.rrd"
    res = run_cli(["export", "rerun", log_path, "-o", str(out), "-q"])
    assert res.exit_code == 0 and "skeleton mode" in res.stderr
    data = read_rrd(str(out))
    pts = [p for en in data["/env0/skeleton"] if not en["static"] for p in en["Points3D:positions"]]
    with open_log(log_path) as log:
        np.testing.assert_allclose(np.array(pts), log.read("frames/body_pos", env=0), rtol=1e-6)
    links = [s for en in data["/env0/skeleton"] if not en["static"] for s in en["LineStrips3D:strips"]]
    assert len(links) == len(pts) and not any("/robot/" in k for k in data)


# ------------------------------------------------------------------------------------------ MJCF
def test_mjcf_geoms_in_world_match_mujoco():
    """Parsed geom poses composed with MuJoCo's body poses land where MuJoCo puts each geom."""
    mujoco = pytest.importorskip("mujoco")
    xml = bundled_xml()
    m = mujoco.MjModel.from_xml_string(xml)
    d = mujoco.MjData(m)
    d.qpos[7:] = np.linspace(-0.3, 0.3, m.nq - 7)
    mujoco.mj_forward(m, d)
    model = parse_mjcf(xml)
    ours = {}
    for g in model.geoms:
        if g.body == "":
            continue
        bid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, g.body)
        rot = d.xmat[bid].reshape(3, 3)
        ours.setdefault(g.body, []).append((g.kind, d.xpos[bid] + rot @ g.pos))
    kinds = {2: "sphere", 3: "capsule", 4: "ellipsoid", 5: "cylinder", 6: "box"}
    n = 0
    for gid in range(m.ngeom):
        body = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, int(m.geom_bodyid[gid]))
        if body == "world" or m.geom_group[gid] > 2:
            continue
        matches = [
            p
            for k, p in ours[body]
            if k == kinds[int(m.geom_type[gid])] and np.allclose(p, d.geom_xpos[gid], atol=1e-6)
        ]
        assert matches, (body, gid)
        n += 1
    assert n == len([g for g in model.geoms if g.body]) and n > 30
    assert model.infinite_planes == 1 and model.skipped == {}


def test_mjcf_that_is_not_xml_is_one_clear_error():
    """A stored model that is not MJCF raises LogFormatError naming what was expected."""
    from moetape.schema.errors import LogFormatError

    with pytest.raises(LogFormatError, match="not MJCF"):
        parse_mjcf("<robot name='urdf'/>", where="x.h5: model/mjcf")


# ------------------------------------------------------------------------------------------ bad input
def test_newer_format_log_is_one_line(tmp_path):
    """A log of a newer format: exit 1, one line saying to upgrade; no output file."""
    path = tmp_path / "new.h5"
    write_log(path, 2)
    with h5py.File(path, "a") as f:
        f.attrs[layout.FORMAT_VERSION_ATTR] = 99
    res = run_cli(["export", "rerun", str(path), "-o", str(tmp_path / "x.rrd")])
    assert res.exit_code == 1 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "newer" in res.stderr and "pip install -U moetape" in res.stderr
    assert not (tmp_path / "x.rrd").exists()


def test_crashed_log_exports_the_committed_steps_and_says_so(tmp_path):
    """A log left "running" exports its committed steps with a note on stderr."""
    path = write_model_log(tmp_path / "crashed.h5", n_steps=5)
    with h5py.File(path, "a") as f:
        f[layout.RUN_STATUS][()] = np.bytes_("running")
    out = tmp_path / "c.rrd"
    res = run_cli(["export", "rerun", path, "-o", str(out), "-q"])
    assert res.exit_code == 0
    assert res.stderr.splitlines()[0] == (
        f"note: {path}: run status 'running' (crashed, interrupted or still recording): exporting the 5 committed steps."
    )
    _, steps = column(read_rrd(str(out))["/env0/gate"], "Scalars:scalars")
    assert steps == [0, 1, 2, 3, 4]


def test_existing_output_needs_force(model_log, tmp_path):
    """An existing output is kept without --force (one line), replaced with it."""
    out = tmp_path / "exists.rrd"
    out.write_bytes(b"keep")
    res = run_cli(["export", "rerun", model_log, "-o", str(out)])
    assert (
        res.exit_code == 1
        and res.stderr == f"Error: {out}: exists. Choose another path or pass --force to overwrite.\n"
    )
    assert out.read_bytes() == b"keep"
    res = run_cli(["export", "rerun", model_log, "-o", str(out), "--force", "-q"])
    assert res.exit_code == 0 and out.stat().st_size > 1000
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


@pytest.mark.parametrize("env", ["2", "-1", "x"])
def test_env_out_of_range_is_one_line(model_log, tmp_path, env):
    """--env outside the log's envs (or not a number) is one line naming the range; nothing written."""
    res = run_cli(["export", "rerun", model_log, "-o", str(tmp_path / "e.rrd"), "--env", env])
    assert res.exit_code == 1 and res.stdout == "" and res.stderr.count("\n") == 1
    assert "0-1" in res.stderr and not (tmp_path / "e.rrd").exists()


def test_missing_rerun_sdk_is_one_actionable_line(model_log, tmp_path, monkeypatch):
    """Without rerun-sdk the command says in one line how to install the extra."""
    monkeypatch.setitem(sys.modules, "rerun", None)
    monkeypatch.delitem(sys.modules, "moetape.replay.rerun_export")
    monkeypatch.delattr("moetape.replay.rerun_export")
    res = run_cli(["export", "rerun", model_log, "-o", str(tmp_path / "m.rrd")])
    assert res.exit_code == 1
    assert res.stderr == "Error: 'export rerun' needs rerun-sdk: pip install 'moetape[rerun]'\n"


def test_replay_modules_import_without_rerun():
    """The rest of replay (CLI, export, viewer) imports with rerun-sdk absent."""
    code = (
        "import sys; sys.modules['rerun'] = None; sys.modules['rerun_bindings'] = None\n"
        "import moetape.replay.cli, moetape.replay.cli_export, moetape.replay.cli_render, moetape.replay.mjcf"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------ viewers
def test_viewer_env_turns_rerun_usage_data_off(tmp_path, monkeypatch):
    """The environment moetape gives Rerun's viewer makes `rerun analytics config` report it disabled."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    env = rv.viewer_env()
    assert env["RERUN_ANALYTICS"] == "0" and env["XDG_CONFIG_HOME"].startswith(str(tmp_path))
    res = subprocess.run(
        [rv.rerun_executable(), "analytics", "config"], env=env, capture_output=True, text=True, timeout=120
    )
    assert json.loads(res.stdout)["analytics_enabled"] is False


def test_view_rerun_without_display_is_one_line(model_log, monkeypatch):
    """--rerun on a machine without a display says to use --web, in one line."""
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if not sys.platform.startswith("linux"):
        pytest.skip("the display check is Linux-only")
    res = run_cli(["view", model_log, "--rerun"])
    assert res.exit_code == 1 and res.stderr.count("\n") == 1 and "use --web" in res.stderr


# ------------------------------------------------------------------------------------------ browser
class WebSocket:
    """The smallest websocket client the DevTools protocol needs (text frames, client masking)."""

    def __init__(self, url, timeout=120.0):
        hostport, _, path = url[len("ws://") :].partition("/")
        host, _, port = hostport.partition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += self._exact(1)
        assert b" 101 " in head.split(b"\r\n")[0], head

    def _exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            part = self.sock.recv(min(1 << 20, n - len(buf)))
            if not part:
                raise ConnectionError("websocket closed")
            buf += part
        return bytes(buf)

    def send(self, text):
        data = text.encode()
        n = len(data)
        head = bytes([0x81]) + (
            bytes([0x80 | n])
            if n < 126
            else bytes([0x80 | 126]) + struct.pack(">H", n)
            if n < 65536
            else bytes([0x80 | 127]) + struct.pack(">Q", n)
        )
        mask = os.urandom(4)
        arr = np.frombuffer(data, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)
        self.sock.sendall(head + mask + arr.tobytes())

    def recv(self):
        parts = []
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            parts.append(self._exact(n))
            if b0 & 0x80:
                return b"".join(parts).decode()

    def close(self):
        self.sock.close()

    def call(self, ident, method, **params):
        self.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            msg = json.loads(self.recv())
            if msg.get("id") == ident:
                assert "error" not in msg, msg
                return msg.get("result", {})


def chromium():
    """Return the Chromium executable (Debian's `chromium`, installed by `make system-deps`) or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def count_near(img, rgb, tol=40):
    """Count pixels of ``img`` (H, W, 3+) within ``tol`` of ``rgb`` in every channel."""
    diff = np.abs(img[..., :3].astype(np.int16) - np.array(rgb, np.int16))
    return int(np.count_nonzero(np.all(diff <= tol, axis=-1)))


@pytest.fixture(scope="module")
def bundled_robot_log(tmp_path_factory):
    """A 2-env, 120-step log of the bundled robot: MuJoCo forward kinematics of a swinging arm, smooth gate."""
    mujoco = pytest.importorskip("mujoco")
    from moetape.schema.writer import LogSpec

    xml = bundled_xml()
    m = mujoco.MjModel.from_xml_string(xml)
    d = mujoco.MjData(m)
    bodies = list(range(1, m.nbody))
    spec = LogSpec(
        n_envs=2,
        obs_dim=8,
        action_dim=18,
        joint_names=[mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j) for j in range(1, 19)],
        body_names=[mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, b) for b in bodies],
        frames_per_step=1,
        term_names=["task_reaching_pos_err"],
        backend="synthetic",
    )
    path = tmp_path_factory.mktemp("robot") / "robot.h5"
    with LogWriter(str(path), spec, meta={"command_line": "test"}, model_xml=xml) as log:
        for s in range(120):
            steps, frames = synthetic_step(spec, s, 0, episode_len=1000)
            a = s / 120.0
            w = np.float32([0.5 + 0.45 * np.cos(2 * np.pi * a), 0.5 - 0.45 * np.cos(2 * np.pi * a)])
            steps["gate"] = np.tile(w, (2, 1))
            steps["gate_entropy"] = np.full(2, -np.sum(w * np.log(w + 1e-8)), np.float32)
            d.qpos[:] = m.qpos0
            d.qpos[7 + 12 :] = 0.8 * np.sin(2 * np.pi * a + np.arange(6))
            mujoco.mj_kinematics(m, d)
            frames["body_pos"] = np.tile(d.xpos[bodies].astype(np.float32), (1, 2, 1, 1))
            frames["body_quat_xyzw"] = np.tile(
                d.xquat[bodies][:, [1, 2, 3, 0]].astype(np.float32), (1, 2, 1, 1)
            )
            frames["root_pos"] = np.tile(d.xpos[1].astype(np.float32), (1, 2, 1))
            # the EE at the last body (the gripper), its target 10 cm ahead, both with its orientation
            ee, ee_q = d.xpos[-1].astype(np.float32), d.xquat[-1][[1, 2, 3, 0]].astype(np.float32)
            steps["ee_pos"], steps["ee_quat_xyzw"] = np.tile(ee, (2, 1)), np.tile(ee_q, (2, 1))
            steps["target_pos"] = np.tile(ee + np.float32([0.1, 0.0, 0.05]), (2, 1))
            steps["target_quat_xyzw"] = np.tile(ee_q, (2, 1))
            log.append(steps, frames)
    return str(path)


class Browser:
    """Headless Chromium (SwiftShader WebGL) driven through the DevTools protocol."""

    def __init__(self, exe, profile):
        self.proc = subprocess.Popen(
            [
                exe,
                "--headless=new",
                "--no-sandbox",
                "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "--window-size=1280,800",
                "--no-first-run",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.ws = None
        active = profile / "DevToolsActivePort"
        for _ in range(600):
            if active.exists() and active.read_text().strip():
                break
            time.sleep(0.1)
        port = active.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as resp:
            pages = json.load(resp)
        self.ws = WebSocket([p for p in pages if p["type"] == "page"][0]["webSocketDebuggerUrl"])
        self.ws.call(1, "Page.enable")

    def until(self, url, done, shot_path, tries=30):
        """Open ``url``; every 3 s take a screenshot until ``done(img)``; save the last; return it."""
        import imageio.v3 as iio

        self.ws.call(2, "Page.navigate", url=url)
        for i in range(tries):  # the app draws after the wasm loads and the data streams in
            time.sleep(3)
            shot = base64.b64decode(self.ws.call(10 + i, "Page.captureScreenshot", format="png")["data"])
            img = iio.imread(io.BytesIO(shot))
            if done(img):
                break
        shot_path.write_bytes(shot)
        return img

    def close(self):
        if self.ws is not None:
            self.ws.close()
        self.proc.terminate()
        self.proc.wait(30)


def split_view(img):
    """The 3D view's part and the plots' part of a screenshot of moetape's default layout."""
    h, w = img.shape[:2]
    return img[int(0.08 * h) : int(0.6 * h), : int(0.58 * w)], img[: int(0.6 * h), int(0.62 * w) :]


def test_web_viewer_in_headless_chromium_shows_robot_and_plots(bundled_robot_log, tmp_path):
    """`view --web` serves on 127.0.0.1; headless Chromium draws the robot and the gate plots (pixels checked)."""
    exe = chromium()
    if exe is None:
        pytest.skip("chromium is not installed (`make system-deps` installs it as root on Debian)")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    view = subprocess.Popen(
        [sys.executable, "-m", "moetape", "view", bundled_robot_log, "--web"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    browser = None
    try:
        url = view.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and "rerun%2Bhttp%3A%2F%2F127.0.0.1" in url, (
            view.stderr.read()
        )
        browser = Browser(exe, tmp_path / "profile")

        def counts(img):
            scene, side = split_view(img)
            robot = count_near(scene, (242, 140, 38))  # the trunk's orange material
            plots = count_near(side, GATE_COLORS[0], 30) + count_near(side, GATE_COLORS[1], 30)
            return robot, plots

        shot = tmp_path / "viewer.png"
        img = browser.until(url, lambda im: counts(im)[0] > 20 and counts(im)[1] > 200, shot)
        robot, plots = counts(img)
        assert img.std() > 10, "blank canvas"
        assert robot > 20, f"no robot pixels in the 3D view (screenshot: {shot})"
        assert plots > 200, f"no gate curves in the plots (screenshot: {shot})"
    finally:
        if browser is not None:
            browser.close()
        view.send_signal(signal.SIGINT)
        try:
            view.wait(30)
        except subprocess.TimeoutExpired:
            view.kill()
            view.wait()
        leftover = view.stderr.read()
        view.stdout.close()
        view.stderr.close()
        assert "Traceback" not in leftover, leftover


def test_per_field_rrd_in_headless_chromium_shows_skeletons_boxes_and_env_series(bundled_robot_log, tmp_path):
    """A per-field .rrd served by Rerun's own server: Chromium draws every env's skeleton, the pose boxes and the env series."""
    exe = chromium()
    if exe is None:
        pytest.skip("chromium is not installed (`make system-deps` installs it as root on Debian)")
    rrd = tmp_path / "fields.rrd"
    rx.export_rerun(bundled_robot_log, str(rrd), layout="per-field")
    grpc, web = rv.free_port(), rv.free_port()
    server = subprocess.Popen(
        [rv.rerun_executable(), "--bind", "127.0.0.1", "--port", str(grpc), "--serve-web"]
        + ["--web-viewer-port", str(web), str(rrd)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=rv.viewer_env(dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))),
    )
    browser = None
    try:
        for _ in range(300):  # the server listens once it has loaded the file
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", web)) == 0:
                    break
            assert server.poll() is None, "rerun exited"
            time.sleep(0.1)
        browser = Browser(exe, tmp_path / "profile")
        from moetape.replay.rerun_fields import PALETTE
        from moetape.replay.skeleton import BODY_RGBA

        def counts(img):
            scene, side = split_view(img)
            bodies = count_near(scene, [round(255 * c) for c in BODY_RGBA[:3]], 30)
            boxes = count_near(scene, (51, 230, 51), 30) + count_near(scene, (255, 217, 26), 30)
            series = count_near(side, PALETTE[0], 30) + count_near(side, PALETTE[1], 30)
            return bodies, boxes, series

        shot = tmp_path / "fields.png"
        img = browser.until(
            rv.web_url(web, grpc), lambda im: min(counts(im)) > 20 and counts(im)[2] > 200, shot
        )
        bodies, boxes, series = counts(img)
        assert img.std() > 10, "blank canvas"
        assert bodies > 20, f"no skeleton in the 3D view (screenshot: {shot})"
        assert boxes > 20, f"no EE / target boxes in the 3D view (screenshot: {shot})"
        assert series > 200, f"no per-env gate curves in the plots (screenshot: {shot})"
    finally:
        if browser is not None:
            browser.close()
        rv.stop_process(server)
