"""Legacy files derived from a log: exact keys, nesting, dtypes, shapes and values; CLI; derive."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import warnings

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from moetape.cli import cli
from moetape.replay import export, legacy_map, legacy_pickle, legacy_zarr
from moetape.replay.derive import derive, sha256_file, sha256_tree
from moetape.schema import layout
from moetape.schema.reader import Log, open_log
from moetape.schema.synthetic import small_spec, synthetic_step
from moetape.schema.writer import LogWriter

SLASH_TERMS = ["task/reaching/pos_err", "task/reaching/orn_err"]
FRAME_KEYS = [
    "root_state",
    "root_pos",
    "root_xyzw_quat",
    "root_lin_vel",
    "root_ang_vel",
    "rigid_body_pos",
    "rigid_body_xyzw_quat",
    "dof_pos",
    "dof_vel",
    "contact_forces",
    "episode_time",
    "torque",
    "action",
    "obs",
    "target_positions",
    "target_quats_wxyz",
]
# The README snippet of the legacy scripts, as it was (it assumes numpy is imported as np).
LEGACY_SNIPPET = """
import numpy as np
# 加载权重统计
import pickle
with open('weight_stats.pkl', 'rb') as f:
    weight_stats = pickle.load(f)

# 分析权重分布
base_weights = np.array(weight_stats['base_weights'])
arm_weights = np.array(weight_stats['arm_weights'])

print(f"Base专家使用频率: {np.mean(base_weights > 0.5):.2%}")
print(f"Arm专家使用频率: {np.mean(arm_weights > 0.5):.2%}")
print(f"平均权重熵: {np.mean(weight_stats['weight_entropy']):.3f}")
"""


def write_slash_log(path, n_steps=9, *, n_envs=3, frames_per_step=4, status=None):
    """A log whose terms have legacy "/" names; optionally with a run status forced afterwards."""
    spec = dataclasses.replace(small_spec(n_envs, frames_per_step=frames_per_step), term_names=SLASH_TERMS)
    with LogWriter(
        str(path), spec, meta={"command_line": "test", "config": {"seed": 3, "env": {"n": 1}}}
    ) as w:
        for s in range(n_steps):
            w.append(*synthetic_step(spec, s, 5))
    if status is not None:
        with h5py.File(str(path), "r+") as f:
            f[layout.RUN_STATUS][()] = np.bytes_(status)
    return str(path)


@pytest.fixture
def slash_log(tmp_path):
    """Path of a 9-step, 3-env log with substep frames and "/" term names."""
    return write_slash_log(tmp_path / "slash.h5")


def load(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


# ------------------------------------------------------------------------------ weight_stats / results


def test_weight_stats_exact(slash_log, tmp_path):
    """weight_stats.pkl: three lists of Python floats: env-0 gate columns and the env-mean entropy."""
    out = tmp_path / "weight_stats.pkl"
    res = run("export", "weight-stats", slash_log, "-o", out, "-q")
    assert res.exit_code == 0, res.output
    assert res.stderr.startswith("wrote ") and res.stdout == ""
    ws = load(out)
    assert list(ws) == ["base_weights", "arm_weights", "weight_entropy"]
    assert all(type(v) is list and len(v) == 9 and all(type(x) is float for x in v) for v in ws.values())
    with open_log(slash_log) as lg:
        gate, ent = lg.read("gate"), lg.read("gate_entropy")
    assert ws["base_weights"] == [float(x) for x in gate[:, 0, 0]]
    assert ws["arm_weights"] == [float(x) for x in gate[:, 0, 1]]
    np.testing.assert_allclose(ws["weight_entropy"], ent.astype(np.float64).mean(axis=1), rtol=1e-6)


def test_results_exact(slash_log, tmp_path):
    """moe_results.pkl: config dict, weight stats, per-step action/gate arrays, env-0 state before each step."""
    out = tmp_path / "moe_results.pkl"
    res = run("export", "results", slash_log, "-o", out, "-q")
    assert res.exit_code == 0, res.output
    r = load(out)
    assert list(r) == ["config", "weight_stats", "action_logs", "state_logs"]
    assert r["config"] == {"seed": 3, "env": {"n": 1}}
    assert list(r["action_logs"]) == ["actions", "moe_weights"]
    assert list(r["state_logs"]) == ["root_pos", "root_quat", "dof_pos"]
    with open_log(slash_log) as lg:
        action, gate = lg.read("action"), lg.read("gate")
        pos, quat, dof = (
            lg.read("frames/" + f, env=0)[::4] for f in ("root_pos", "root_quat_xyzw", "dof_pos")
        )
    for key, want, shape in (("actions", action, (3, 18)), ("moe_weights", gate, (3, 2))):
        got = r["action_logs"][key]
        assert type(got) is list and len(got) == 9
        assert all(type(a) is np.ndarray and a.dtype == np.float32 and a.shape == shape for a in got)
        np.testing.assert_array_equal(np.stack(got), want)
    for key, want, shape in (("root_pos", pos, (3,)), ("root_quat", quat, (4,)), ("dof_pos", dof, (18,))):
        got = r["state_logs"][key]
        assert all(a.dtype == np.float32 and a.shape == shape for a in got)
        np.testing.assert_array_equal(np.stack(got), want)


def test_results_without_weights(slash_log, tmp_path):
    """--no-weights leaves weight_stats and moe_weights empty, as the legacy run without --show_weights."""
    out = tmp_path / "r.pkl"
    assert run("export", "results", slash_log, "-o", out, "-q", "--no-weights").exit_code == 0
    r = load(out)
    assert r["weight_stats"] == {"base_weights": [], "arm_weights": [], "weight_entropy": []}
    assert r["action_logs"]["moe_weights"] == [] and len(r["action_logs"]["actions"]) == 9


# ------------------------------------------------------------------------------ logs.zarr / logs.pkl


def test_zarr_layout_and_values(slash_log, tmp_path):
    """logs.zarr: v2, flat, legacy names/shapes/dtypes, (1, E) chunks for 2-D arrays, rates as the only attributes."""
    import zarr

    out = tmp_path / "logs.zarr"
    res = run("export", "zarr", slash_log, "-o", out, "-q")
    assert res.exit_code == 0, res.output
    assert "36 substep rows at 200 Hz" in res.stderr
    with open(out / ".zgroup") as f:
        assert json.load(f) == {"zarr_format": 2}
    g = zarr.open_group(str(out), mode="r")
    n, s, e = 36, 9, 3
    with open_log(slash_log) as lg:
        lid = lg.log_id
        want = {k: lg.read(f) for k, f in legacy_map.FRAME_COPIES.items()}
        steps = lg.read("frames/step")
        action, obs = lg.read("action"), lg.read("obs")
        tpos, tquat = (
            lg.read("frames/target_future_pos", env=0),
            lg.read("frames/target_future_quat_xyzw", env=0),
        )
        terms = {t: lg.read("terms/" + t) for t in SLASH_TERMS}
        reward, timeout, gate = lg.read("reward"), lg.read("timeout"), lg.read("gate")
    assert dict(g.attrs) == {
        "sim_dt_s": 0.005,
        "decimation": 4,
        "policy_dt_s": 0.02,
        "frame_rate_hz": 200.0,
        "rows": "substep",
        "source_log_id": lid,
    }
    shapes = {
        "root_state": (n, e, 13),
        "root_pos": (n, e, 3),
        "root_xyzw_quat": (n, e, 4),
        "root_lin_vel": (n, e, 3),
        "root_ang_vel": (n, e, 3),
        "rigid_body_pos": (n, e, 3, 3),
        "rigid_body_xyzw_quat": (n, e, 3, 4),
        "dof_pos": (n, e, 18),
        "dof_vel": (n, e, 18),
        "contact_forces": (n, e, 3, 3),
        "episode_time": (n, e),
        "torque": (n, e, 18),
        "action": (n, e, 18),
        "obs": (n, e, 109),
        "target_positions": (n, 8, 3),
        "target_quats_wxyz": (n, 8, 4),
        "task_reaching_pos_err": (s, e),
        "task_reaching_orn_err": (s, e),
        "reward_total": (s, e),
        "time_outs": (s, e),
        "base_weights": (s,),
        "arm_weights": (s,),
        "weight_entropy": (s,),
    }
    arrays = dict(g.arrays())
    assert set(arrays) == set(shapes)
    for name, a in arrays.items():
        assert a.shape == shapes[name], name
        want_dtype = {"time_outs": np.bool_}.get(
            name, np.float64 if name.endswith(("weights", "entropy")) else np.float32
        )
        assert a.dtype == want_dtype, name
        want_chunks = (
            (1, a.shape[1]) if a.ndim == 2 else legacy_zarr.legacy_default_chunks(a.shape, a.dtype.itemsize)
        )
        assert a.chunks == want_chunks, name
        assert dict(a.attrs) == {}, name
    for key, value in want.items():
        np.testing.assert_array_equal(g[key][:], value)
    np.testing.assert_array_equal(
        g["root_state"][:],
        np.concatenate(
            [want["root_pos"], want["root_xyzw_quat"], want["root_lin_vel"], want["root_ang_vel"]], axis=-1
        ),
    )
    np.testing.assert_array_equal(g["action"][:], action[steps])
    np.testing.assert_array_equal(g["obs"][:], obs[steps])
    np.testing.assert_array_equal(g["target_positions"][:], tpos)
    wxyz = tquat[..., [3, 0, 1, 2]]
    wxyz = np.where(wxyz[..., :1] < 0, -wxyz, wxyz)
    np.testing.assert_array_equal(g["target_quats_wxyz"][:], wxyz)
    assert (g["target_quats_wxyz"][:][..., 0] >= 0).all()
    for t in SLASH_TERMS:
        np.testing.assert_array_equal(g[t.replace("/", "_")][:], terms[t])
    np.testing.assert_array_equal(g["reward_total"][:], reward)
    np.testing.assert_array_equal(g["time_outs"][:], timeout)
    np.testing.assert_array_equal(g["base_weights"][:], gate[:, 0, 0].astype(np.float64))


def test_pkl_matches_zarr(slash_log, tmp_path):
    """logs.pkl holds the logs.zarr data as per-row lists under the legacy groups, with the "/" names."""
    import zarr

    assert run("export", "pkl", slash_log, "-o", tmp_path / "logs.pkl", "-q").exit_code == 0
    assert run("export", "zarr", slash_log, "-o", tmp_path / "logs.zarr", "-q").exit_code == 0
    p = load(tmp_path / "logs.pkl")
    g = zarr.open_group(str(tmp_path / "logs.zarr"), mode="r")
    assert list(p) == ["config", "state_logs", "action_logs", "episode_logs", "task_logs", "weight_stats"]
    assert p["config"] == {"seed": 3, "env": {"n": 1}}
    assert list(p["state_logs"]) == list(legacy_map.STATE_KEYS)
    assert list(p["action_logs"]) == ["torque", "action", "obs"]
    assert list(p["episode_logs"]) == SLASH_TERMS + ["reward_total", "time_outs"]
    assert list(p["task_logs"]) == ["target_positions", "target_quats_wxyz"]
    for group in ("state_logs", "action_logs", "task_logs", "episode_logs"):
        for key, rows in p[group].items():
            assert type(rows) is list and all(type(r) is np.ndarray for r in rows)
            np.testing.assert_array_equal(np.stack(rows), g[key.replace("/", "_")][:])
            assert rows[0].dtype == g[key.replace("/", "_")].dtype
    for key, values in p["weight_stats"].items():
        assert all(type(v) is float for v in values)
        np.testing.assert_array_equal(np.array(values), g[key][:])


def test_rows_modes(slash_log, tmp_path):
    """policy = substep-0 rows; video = every round(200/24) = 8th row at 25 Hz; substep needs substep frames."""
    import zarr

    with open_log(slash_log) as lg:
        body = lg.read("frames/body_pos")
        pol = export.export_zarr(lg, str(tmp_path / "p.zarr"), rows="policy")
        vid = export.export_zarr(lg, str(tmp_path / "v.zarr"), rows="video")
    assert (pol["n_rows"], pol["frame_rate_hz"]) == (9, 50.0)
    assert (vid["n_rows"], vid["frame_rate_hz"]) == (5, 25.0)
    np.testing.assert_array_equal(
        zarr.open_group(str(tmp_path / "p.zarr"), mode="r")["rigid_body_pos"][:], body[::4]
    )
    v = zarr.open_group(str(tmp_path / "v.zarr"), mode="r")
    np.testing.assert_array_equal(v["rigid_body_pos"][:], body[::8])
    assert v.attrs["rows"] == "video" and v["time_outs"].shape == (9, 3)
    policy_log = write_slash_log(tmp_path / "policy.h5", frames_per_step=1)
    res = run("export", "zarr", policy_log, "-o", tmp_path / "x.zarr", "--rows", "substep", "-q")
    assert res.exit_code == 1 and res.stdout == ""
    assert (
        res.stderr.startswith("Error: ")
        and "--frames policy" in res.stderr
        and len(res.stderr.splitlines()) == 1
    )
    assert not os.path.exists(tmp_path / "x.zarr")
    res = run("export", "zarr", policy_log, "-o", tmp_path / "x.zarr", "-q")  # auto -> policy
    assert res.exit_code == 0 and "9 policy rows at 50 Hz" in res.stderr


def test_term_name_collision_is_refused(tmp_path):
    """A term that becomes an existing legacy name after "/" -> "_" is a one-line error."""
    spec = dataclasses.replace(small_spec(2), term_names=["time/outs"])
    path = str(tmp_path / "c.h5")
    with LogWriter(path, spec) as w:
        w.append(*synthetic_step(spec, 0))
    res = run("export", "pkl", path, "-o", tmp_path / "c.pkl", "-q")
    assert res.exit_code == 1 and "'time/outs' becomes 'time_outs'" in res.stderr


# ------------------------------------------------------------------------------ pickles load anywhere


def test_pickles_name_numpy_core_and_load_without_warnings(slash_log, tmp_path):
    """The pickles reference numpy.core (numpy 1.x's name), never numpy._core, and numpy 2 loads them silently."""
    out = tmp_path / "logs.pkl"
    export.export_pkl(slash_log, str(out))
    raw = out.read_bytes()
    assert b"numpy._core" not in raw and b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load(out)


def test_legacy_pickler_is_plain_data_only():
    """Anything but plain data and numpy arrays/scalars is refused; RowList pickles exactly like a list."""
    with pytest.raises(TypeError, match="not plain data"):
        legacy_pickle.dumps({"x": {1, 2}})
    with pytest.raises(TypeError, match="not plain numeric"):
        legacy_pickle.dumps(np.array(["a"]))
    blocks = [np.arange(12, dtype=np.float32).reshape(6, 2), np.ones((1500, 2), np.float32)]
    rows = legacy_pickle.RowList(blocks)
    assert legacy_pickle.dumps(rows) == legacy_pickle.dumps(rows.to_list())
    value = {"a": [1, -2, 2**70, 1.5, None, True, "é", b"\x00"], "t": (1, 2, 3, 4), "s": np.float32(2.5)}
    assert pickle.loads(legacy_pickle.dumps(value)) == value


def test_legacy_snippet_runs(slash_log, tmp_path):
    """The legacy README's weight analysis snippet runs unchanged on the exported weight_stats.pkl."""
    export.export_weight_stats(slash_log, str(tmp_path / "weight_stats.pkl"))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(LEGACY_SNIPPET, "legacy_snippet", "exec"), {})
    finally:
        os.chdir(cwd)


# ------------------------------------------------------------------------------ overwrite, crash, missing


def test_refuse_overwrite_then_force(log_path, tmp_path):
    """An existing output is an error (exit 1, nothing written) unless --force."""
    out = tmp_path / "w.pkl"
    assert run("export", "weight-stats", log_path, "-o", out, "-q").exit_code == 0
    before = out.read_bytes()
    res = run("export", "weight-stats", log_path, "-o", out, "-q")
    assert res.exit_code == 1 and res.stdout == ""
    assert res.stderr == f"Error: {out}: exists. Choose another path or pass --force to overwrite.\n"
    res = run("export", "weight-stats", log_path, "-o", out, "-q", "--force")
    assert res.exit_code == 0 and out.read_bytes() == before


def test_crashed_log_exports_committed_steps(tmp_path):
    """A log left "running" exports its committed steps and says so on stderr and in the manifest."""
    path = write_slash_log(tmp_path / "crashed.h5", n_steps=5, status="running")
    res = run("export", "weight-stats", path, "-o", tmp_path / "w.pkl", "-q")
    assert res.exit_code == 0 and "run status 'running'" in res.stderr and "5 committed steps" in res.stderr
    assert len(load(tmp_path / "w.pkl")["base_weights"]) == 5
    res = run("derive", path, "--out", tmp_path / "d", "--no-video", "-q", "--json")
    assert res.exit_code == 0, res.output
    manifest = json.loads(res.stdout)
    assert manifest["source"]["run_status"] == "running" and manifest["source"]["complete"] is False
    assert "crashed" in manifest["notes"][0] and "crashed" in res.stderr


def test_missing_field_is_named(slash_log, tmp_path, monkeypatch):
    """A log without a field an export needs gives a one-line error naming it."""
    real = Log.has_field
    monkeypatch.setattr(
        Log, "has_field", lambda self, name: name != "frames/contact_force" and real(self, name)
    )
    res = run("export", "zarr", slash_log, "-o", tmp_path / "z.zarr", "-q")
    assert res.exit_code == 1 and res.stdout == ""
    assert res.stderr == f"Error: {slash_log}: cannot export zarr: the log has no frames/contact_force.\n"
    assert run("export", "weight-stats", slash_log, "-o", tmp_path / "w.pkl", "-q").exit_code == 0


def test_progress_on_stderr_and_quiet(log_path, tmp_path):
    """The progress bar and the "wrote" line go to stderr (stdout stays empty); --quiet hides the bar."""
    res = run("export", "results", log_path, "-o", tmp_path / "r.pkl")
    assert res.exit_code == 0 and "exporting" in res.stderr and res.stdout == ""
    res = run("export", "results", log_path, "-o", tmp_path / "r2.pkl", "--quiet")
    assert res.exit_code == 0 and res.stderr.startswith("wrote ") and res.stderr.count("\n") == 1


def test_help_has_examples():
    """Every export/derive command has help with an example."""
    for args in (
        ["export"],
        ["export", "weight-stats"],
        ["export", "results"],
        ["export", "zarr"],
        ["export", "pkl"],
        ["derive"],
    ):
        res = run(*args, "--help")
        assert res.exit_code == 0 and "Example:" in res.stdout and "moetape " in res.stdout, args


# ------------------------------------------------------------------------------ derive


def test_derive_twice_is_byte_identical(slash_log, tmp_path):
    """Deriving twice gives byte-identical pickles and zarr stores, and the manifest lists their sha256."""
    m1 = derive(slash_log, str(tmp_path / "a"), video=False)
    m2 = derive(slash_log, str(tmp_path / "b"), video=False)
    names = ["weight_stats.pkl", "moe_results.pkl", "logs.pkl", "logs.zarr"]
    for name in names:
        a, b = tmp_path / "a" / name, tmp_path / "b" / name
        if a.is_dir():
            files = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
            assert files == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
            assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
        else:
            assert a.read_bytes() == b.read_bytes(), name
    entries = {f["name"]: f for f in m1["files"]}
    assert {f["name"]: f for f in m2["files"]} == entries
    for name in names:
        p = str(tmp_path / "a" / name)
        assert entries[name]["sha256"] == (sha256_tree(p) if os.path.isdir(p) else sha256_file(p))
    assert m1["source"]["sha256"] == sha256_file(slash_log) and m1["source"]["complete"] is True
    assert m1["parameters"] == {"rows": "auto", "weights": True, "video": False}
    assert {"name": "video.mp4", "reason": "--no-video"} in m1["skipped"]
    with open(tmp_path / "a" / "derived.json") as f:
        assert json.load(f) == m1


def test_derive_cli_refuses_existing_outputs(log_path, tmp_path):
    """derive fails before writing anything when derived files exist, and overwrites with --force."""
    out = tmp_path / "d"
    res = run("derive", log_path, "--out", out, "--no-video", "-q")
    assert res.exit_code == 0, res.output
    assert "logs.zarr" in res.stdout and res.stdout.rstrip().endswith("derived.json")
    res = run("derive", log_path, "--out", out, "--no-video", "-q")
    assert res.exit_code == 1 and res.stdout == "" and "--force" in res.stderr
    assert run("derive", log_path, "--out", out, "--no-video", "-q", "--force").exit_code == 0


def test_derive_skips_hooks_whose_module_is_missing(log_path, tmp_path, monkeypatch):
    """A missing hook module (e.g. the renderer) is listed as skipped; the legacy files are still written."""
    import sys

    monkeypatch.setitem(sys.modules, "moetape.replay.render", None)  # import raises ImportError(name=...)
    m = derive(log_path, str(tmp_path / "d"), video=True)
    assert any(s["name"] == "video.mp4" and "moetape.replay.render" in s["reason"] for s in m["skipped"])
    assert {"weight_stats.pkl", "logs.zarr"} <= {f["name"] for f in m["files"]}


# ------------------------------------------------------------------------------ legacy wrapper scripts


def _script(name):
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location(
        "_script_" + name, os.path.join(root, "scripts", name + ".py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_record(calls, frames_per_step=4):
    def record(cmd):
        calls.append(cmd)
        out = cmd[cmd.index("--out") + 1]
        os.makedirs(out, exist_ok=True)
        return write_slash_log(
            os.path.join(out, "log.h5"), n_steps=6, n_envs=1, frames_per_step=frames_per_step
        )

    return record


def test_play_moe_ee_task_wrapper(tmp_path, capsys):
    """The full-script wrapper passes the legacy flags to `moetape record` and writes the legacy files."""
    mod = _script("play_moe_ee_task")
    calls = []
    out = str(tmp_path / "run")
    args = [
        "--moe_ckpt_path",
        "m.pt",
        "--base_ckpt_path",
        "b.pt",
        "--arm_ckpt_path",
        "a.pt",
        "--trajectory_file_path",
        "t.pkl",
        "--num_envs",
        "3",
        "--num_steps",
        "6",
        "--out",
        out,
    ]
    assert mod.main(args + ["--show_weights"], record=_fake_record(calls)) == 0
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "moetape", "record"] and "--show_weights" in cmd
    assert cmd[cmd.index("--base_ckpt_path") + 1] == "b.pt" and cmd[cmd.index("--frames") + 1] == "substep"
    assert sorted(os.listdir(out)) == ["log.h5", "logs.pkl", "logs.zarr", "weight_stats.pkl"]
    assert len(load(os.path.join(out, "logs.pkl"))["state_logs"]["root_pos"]) == 24  # every substep
    out2 = str(tmp_path / "vis")
    assert mod.main(args[:-1] + [out2, "--visualize"], record=_fake_record(calls)) == 0
    assert calls[1][calls[1].index("--num_envs") + 1] == "1" and "--visualize" in calls[1]
    assert sorted(os.listdir(out2)) == ["log.h5", "logs.pkl", "logs.zarr"]
    p = load(os.path.join(out2, "logs.pkl"))
    assert len(p["state_logs"]["root_pos"]) == 3 and p["weight_stats"]["base_weights"] == []  # 25 Hz rows


def test_play_moe_simple_wrapper(tmp_path):
    """The simple-script wrapper records one frame row per step and writes moe_results.pkl only."""
    mod = _script("play_moe_simple")
    calls = []
    out = str(tmp_path / "run")
    argv = [
        "--moe_ckpt_path",
        "m.pt",
        "--trajectory_file_path",
        "t.pkl",
        "--num_steps",
        "6",
        "--out",
        out,
        "--device",
        "cpu",
    ]
    assert mod.main(argv, record=_fake_record(calls, frames_per_step=1)) == 0
    assert (
        calls[0][calls[0].index("--frames") + 1] == "policy"
        and calls[0][calls[0].index("--device") + 1] == "cpu"
    )
    assert sorted(os.listdir(out)) == ["log.h5", "moe_results.pkl"]
    r = load(os.path.join(out, "moe_results.pkl"))
    assert r["action_logs"]["moe_weights"] == [] and len(r["state_logs"]["dof_pos"]) == 6
