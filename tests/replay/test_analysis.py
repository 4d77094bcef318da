"""Gating statistics (`moetape stats`, analysis.summary) and custom analyses (plugins)."""

from __future__ import annotations

import json
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from moetape.cli import cli
from moetape.replay import analysis, plugins
from moetape.replay.analysis import Moments, SwitchStats, summary
from moetape.schema import reader
from moetape.schema.errors import InputError
from moetape.schema.reader import open_log
from moetape.schema.synthetic import small_spec, synthetic_step
from moetape.schema.writer import LogWriter, gate_entropy

DT = 0.02  # small_spec: sim_dt 0.005 * decimation 4

# Hand-chosen base weights (arm = 1 - base), 8 steps x 2 envs.
# env 0: episode 0 = steps 0-3 (dominant b b b a), episode 1 = steps 4-7 (a b b a)
# env 1: one episode, arm dominant throughout.
BASE = np.array(
    [[0.9, 0.2], [0.8, 0.2], [0.75, 0.2], [0.2, 0.2], [0.1, 0.2], [0.6, 0.2], [0.65, 0.2], [0.4, 0.2]]
)
EPISODE = np.array([[0, 0]] * 4 + [[1, 0]] * 4)


def write_gated(path, base, episode, *, err=None, target=None, root=None):
    """Write a log whose gate is [base, 1 - base] per env, with the given episode ids."""
    n_steps, n_envs = base.shape
    spec = small_spec(n_envs, frames_per_step=1, obs_dim=4, n_bodies=1)
    with LogWriter(str(path), spec, meta={"command_line": "test"}) as w:
        for s in range(n_steps):
            st, fr = synthetic_step(spec, s)
            b = base[s].astype(np.float32)
            st["gate"] = np.stack([b, np.float32(1) - b], axis=1)
            st.pop("gate_entropy")
            st["episode"] = episode[s].astype(np.int32)
            if err is not None:
                st["terms/task_reaching_pos_err"] = err[s].astype(np.float32)
            if target is not None:
                st["target_pos"] = target[s].astype(np.float32)
            if root is not None:
                fr["root_pos"] = root[s][None].astype(np.float32)
            w.append(st, fr)
    return str(path)


@pytest.fixture
def gated(tmp_path):
    """Path of the hand-made 8-step, 2-env log."""
    return write_gated(tmp_path / "gated.h5", BASE, EPISODE)


def _stats(path, **kw):
    with open_log(path) as lg:
        return summary(lg, **kw)


def test_usage_dominance_balance_exact(gated):
    """Usage (>0.5), dominance (>0.7) and balance (0.3-0.7) shares count the hand-made rows exactly."""
    d = _stats(gated)
    base, arm = d["experts"]
    assert (base["name"], arm["name"]) == ("base", "arm")
    assert (base["usage"], base["dominance"], base["balance"]) == (5 / 16, 3 / 16, 3 / 16)
    assert (arm["usage"], arm["dominance"], arm["balance"]) == (11 / 16, 10 / 16, 3 / 16)
    w = BASE.astype(np.float32).astype(np.float64)
    assert base["mean"] == pytest.approx(w.mean()) and base["std"] == pytest.approx(w.std())
    assert base["min"] == pytest.approx(0.1) and base["max"] == pytest.approx(0.9)
    assert d["selection"] == {
        "envs": [0, 1],
        "episode": None,
        "env_steps": 16,
        "duration_s": pytest.approx(0.32),
    }


def test_switching_rate_and_dwell_exact(gated):
    """Switches happen within an episode only; dwell runs end at switches and episode ends."""
    d = _stats(gated)
    assert d["switching"]["n_switches"] == 3
    assert d["switching"]["rate_hz"] == pytest.approx(3 / (16 * DT))
    base, arm = d["dwell"]
    assert base["n_runs"] == 2 and base["mean_s"] == pytest.approx(2.5 * DT)
    assert base["median_s"] == pytest.approx(2.5 * DT) and base["max_s"] == pytest.approx(3 * DT)
    assert arm["n_runs"] == 4 and arm["mean_s"] == pytest.approx(11 / 4 * DT)
    assert arm["median_s"] == pytest.approx(DT) and arm["max_s"] == pytest.approx(8 * DT)


def test_env_and_episode_selection(gated):
    """--env and --episode restrict every figure to the selected rows."""
    d = _stats(gated, env=1)
    assert d["experts"][1]["usage"] == 1.0 and d["switching"]["n_switches"] == 0
    assert d["dwell"][1]["max_s"] == pytest.approx(8 * DT)
    d = _stats(gated, episode=1)
    assert d["selection"]["env_steps"] == 4
    assert d["switching"]["n_switches"] == 2 and d["switching"]["rate_hz"] == pytest.approx(2 / (4 * DT))
    assert [w["n_runs"] for w in d["dwell"]] == [1, 2]


def test_legacy_figures(gated):
    """The legacy figures use env 0 only and the env-mean entropy, whatever the selection."""
    for kw in ({}, {"env": 1}):
        lg = _stats(gated, **kw)["legacy"]
        assert lg["base_usage"] == 5 / 8 and lg["arm_usage"] == 3 / 8
        w = BASE.astype(np.float32)
        ent = gate_entropy(np.stack([w, np.float32(1) - w], axis=-1)).astype(np.float64)
        assert lg["mean_entropy"] == pytest.approx(ent.mean(axis=1).mean())


def test_streaming_in_one_step_chunks_gives_same_result(gated, monkeypatch):
    """Accumulators carry state across chunk boundaries: 1-step chunks give the same summary."""
    whole = _stats(gated)
    monkeypatch.setattr(reader, "STREAM_BYTES", 1)
    tiny = _stats(gated)
    _assert_close(tiny, whole)


def _assert_close(a, b, where=""):
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), where
        for k in a:
            _assert_close(a[k], b[k], where + "." + k)
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), where
    else:
        assert a == b, where


def test_correlation_signs_and_constant(tmp_path):
    """Error rising with the base weight gives r=+1 (arm -1); a constant weight gives None."""
    rng = np.random.default_rng(3)
    base = np.stack([rng.uniform(0.1, 0.9, 30), np.full(30, 0.3)], axis=1)
    episode = np.repeat(np.arange(3), 10)[:, None].repeat(2, axis=1)
    err = 2 * base + 0.1
    target = np.zeros((30, 2, 3))
    target[..., 0] = 3 * (1 - base)
    path = write_gated(tmp_path / "c.h5", base, episode, err=err, target=target, root=np.zeros((30, 2, 3)))
    c = _stats(path)["correlation"]
    assert c["ee_pos_err_source"] == "steps/terms/task_reaching_pos_err"
    env0 = c["by_env"][0]
    assert env0["r_ee_pos_err"] == [pytest.approx(1.0), pytest.approx(-1.0)]
    assert env0["r_target_distance"] == [pytest.approx(-1.0), pytest.approx(1.0)]
    assert c["by_env"][1]["r_ee_pos_err"] == [None, None]
    assert [r["episode"] for r in c["by_episode"]] == [0, 1, 2]
    assert c["overall"]["n"] == 60 and c["overall"]["r_ee_pos_err"][0] == pytest.approx(1.0)


def test_moments_merge_matches_numpy():
    """Grouped streaming co-moments equal numpy's over the whole data."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 3)) * [1, 5, 0.1] + [3, -2, 100]
    g = rng.integers(0, 4, 1000)
    m = Moments(3)
    for i in range(0, 1000, 37):
        m.update(g[i : i + 37], x[i : i + 37])
    for grp in range(4):
        xs = x[g == grp]
        assert m.std(grp, 1) == pytest.approx(xs[:, 1].std())
        assert m.corr(grp, 0, 2) == pytest.approx(np.corrcoef(xs[:, 0], xs[:, 2])[0, 1])


def test_switch_stats_ignores_excluded_rows():
    """Rows with key -1 (outside the selection) neither switch nor count as dwell."""
    s = SwitchStats(1, 2)
    s.update(np.array([[0], [1], [-1], [1], [1]]), np.array([[0], [0], [-1], [2], [2]]))
    s.finish()
    assert s.n_switches == 1 and s.n_rows == 4
    assert s.runs(0).tolist() == [1] and sorted(s.runs(1).tolist()) == [1, 2]


def test_bad_env_and_episode_are_input_errors(gated):
    """An env out of range or an absent episode raises InputError naming what exists."""
    with pytest.raises(InputError, match="out of range"):
        _stats(gated, env=2)
    with pytest.raises(InputError, match=r"episode 5 not in the log \(its envs have episodes 0-1\)"):
        _stats(gated, episode=5)
    with pytest.raises(InputError, match="env 1 has episodes 0-0"):
        _stats(gated, env=1, episode=1)


# ---------------------------------------------------------------------------- CLI
def test_cli_stats_json(gated):
    """--json prints one JSON document with format_version; nothing on stderr."""
    r = CliRunner().invoke(cli, ["stats", gated, "--json", "--no-registered"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["format_version"] == analysis.SUMMARY_FORMAT_VERSION
    assert d["switching"]["n_switches"] == 3 and d["plugins"] == {}
    assert r.stderr == ""


def test_cli_stats_human_table(gated):
    """The human report shows the aligned table and the legacy lines."""
    r = CliRunner().invoke(cli, ["stats", gated, "--no-registered"])
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "Base usage (>0.5): 62.50%" in out and "Arm usage (>0.5): 37.50%" in out
    assert "Mean entropy: " in out
    assert "switching rate     9.375 switches/s" in out
    header = next(line for line in out.splitlines() if line.startswith("expert   "))
    assert "usage >0.5" in header and "dominant >0.7" in header


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--env", "7"], "--env 7 out of range"),
        (["--env", "-1"], "--env -1 out of range"),
        (["--episode", "9"], "episode 9 not in the log"),
    ],
)
def test_cli_stats_bad_input_one_line(gated, args, msg):
    """Bad --env/--episode: exit 1 with one 'Error:' line on stderr."""
    r = CliRunner().invoke(cli, ["stats", gated, "--no-registered"] + args)
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: ") and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stdout == ""


# ---------------------------------------------------------------------------- plugins
PLUGIN_SRC = '''
import numpy as np

def count_steps(log):
    """Function analysis: returns its result directly."""
    return {"n_steps": log.n_steps, "arr": np.arange(2), "nan": float("nan")}

class MeanArm:
    fields = ["gate", "episode"]

    def __init__(self, log):
        self.total, self.n, self.starts = 0.0, 0, []

    def update(self, chunk):
        w = chunk.data["gate"][..., 1][chunk.data["selected"]]
        self.total += float(w.sum())
        self.n += int(w.size)
        self.starts.append(chunk.start)

    def result(self):
        return {"mean_arm": self.total / self.n, "n": self.n, "first": self.starts[0]}

NOT_CALLABLE = 3

def returns_list(log):
    return [1, 2]
'''


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """Name of a plugin module written into tmp_path and put on sys.path."""
    name = f"moetape_test_plugins_{abs(hash(str(tmp_path)))}"
    (tmp_path / (name + ".py")).write_text(textwrap.dedent(PLUGIN_SRC))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_plugins_function_and_streaming(gated, plugin_module):
    """Both protocols add JSON-ready results under plugins, keyed by the spec; selection applies."""
    specs = [plugin_module + ":count_steps", plugin_module + ":MeanArm"]
    r = CliRunner().invoke(
        cli,
        ["stats", gated, "--json", "--no-registered", "--episode", "1"]
        + [a for s in specs for a in ("--plugin", s)],
    )
    assert r.exit_code == 0, r.output
    p = json.loads(r.stdout)["plugins"]
    assert p[specs[0]] == {"n_steps": 8, "arr": [0, 1], "nan": None}
    arm = 1 - BASE[4:, 0].astype(np.float32)
    assert p[specs[1]]["n"] == 4 and p[specs[1]]["mean_arm"] == pytest.approx(arm.mean())
    assert p[specs[1]]["first"] == 0


def test_registered_entry_point_plugins(gated, plugin_module, monkeypatch):
    """Analyses of the moetape.analyses entry-point group run by default, not with --no-registered."""
    import importlib

    mod = importlib.import_module(plugin_module)
    ep = SimpleNamespace(name="steps", value=plugin_module + ":count_steps", load=lambda: mod.count_steps)
    monkeypatch.setattr(plugins, "_entry_points", lambda: [ep])
    r = CliRunner().invoke(cli, ["stats", gated, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["plugins"]["steps"]["n_steps"] == 8
    r = CliRunner().invoke(cli, ["stats", gated, "--json", "--no-registered"])
    assert json.loads(r.stdout)["plugins"] == {}


@pytest.mark.parametrize(
    "attr,msg",
    [
        (None, "expected MODULE:FUNCTION"),
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        (":missing", "has no attribute 'missing'"),
        (":NOT_CALLABLE", "not a function or class"),
        (":returns_list", "expected a dict, or an object with update(chunk) and result()"),
    ],
)
def test_bad_plugin_one_line_error(gated, plugin_module, attr, msg):
    """A bad --plugin spec or protocol violation is a one-line error with exit 1."""
    if attr is None:
        spec = "nocolon"
    elif attr.startswith(":"):
        spec = plugin_module + attr
    else:
        spec = attr
    r = CliRunner().invoke(cli, ["stats", gated, "--no-registered", "--plugin", spec])
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: ") and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_summary_accepts_path_and_callables(gated):
    """summary() takes a path and bare callables (as derive and notebooks use it)."""

    def steps(log):
        return {"n": log.n_steps}

    d = summary(gated, plugins=[steps])
    assert list(d["plugins"].values()) == [{"n": 8}]
    json.dumps(d)
