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


# ---------------------------------------------------------------------------- stats
def test_stats_legacy_figures_say_they_are_not_the_selection(log_path):
    """stats --env 1 --episode 2 labels the legacy figures as env 0 over all steps, not the selection."""
    r = run("stats", log_path, "--env", 1, "--episode", 1, "--no-registered")
    assert r.exit_code == 0, r.output
    head = [line for line in r.stdout.splitlines() if line.startswith("legacy figures")]
    assert head == [
        "legacy figures (weight_stats.pkl: env 0's gate, entropy averaged over all envs, all 12 steps): "
        "NOT limited to --env 1 / --episode 1"
    ]
    d = json.loads(run("stats", log_path, "--env", 1, "--episode", 1, "--json", "--no-registered").stdout)
    assert d["legacy"]["matches_selection"] is False
    assert d["legacy"]["scope"] == {
        "gate_env": 0,
        "entropy_envs": [0, 1],
        "start": 0,
        "stop": 12,
        "episode": None,
    }


def test_stats_running_log_says_partial(tmp_path):
    """stats on a log whose run status is 'running' says the figures are partial (text and JSON)."""
    p = tmp_path / "live.h5"
    write_log(p, 12)
    with h5py.File(p, "a") as f:
        f["run_status"][()] = b"running"
    r = run("stats", p, "--no-registered")
    assert r.exit_code == 0, r.output
    assert "partial    run status 'running': still recording (or crashed)" in r.stdout
    assert json.loads(run("stats", p, "--json", "--no-registered").stdout)["log"]["partial"] is True


def test_stats_clean_log_is_not_partial(log_path):
    """stats on a cleanly ended log has no partial line and partial false in JSON."""
    r = run("stats", log_path, "--no-registered")
    assert "partial" not in r.stdout
    assert json.loads(run("stats", log_path, "--json", "--no-registered").stdout)["log"]["partial"] is False


def test_stats_steps_range_and_episode_counts(log_path):
    """stats --steps 5:10 covers those steps only and counts episodes, timeouts and terminations."""
    d = json.loads(run("stats", log_path, "--steps", "5:10", "--json", "--no-registered").stdout)
    assert d["step_range"] == {"start": 5, "stop": 10}
    assert d["selection"]["env_steps"] == 10
    # synthetic: env 0 episodes of 5 steps (timeouts), env 1 of 6 steps (terminations)
    assert d["episodes"] == {"seen": 3, "finished": 2, "timeouts": 1, "terminations": 1, "unfinished": 1}
    assert d["legacy"]["n_steps"] == 5
    r = run("stats", log_path, "--steps", "5:10", "--no-registered")
    assert "steps 5-9: 10 env-steps" in r.stdout
    assert "episodes   3 seen, 2 finished (1 timeouts, 1 terminations), 1 unfinished" in r.stdout


def test_stats_whole_log_episode_counts(log_path):
    """stats without options counts every env's episodes over the whole log."""
    d = json.loads(run("stats", log_path, "--json", "--no-registered").stdout)
    # env 0: episodes 0-2 (done at 4, 9), env 1: episodes 0-1 (done at 5, 11)
    assert d["episodes"] == {"seen": 5, "finished": 4, "timeouts": 2, "terminations": 2, "unfinished": 1}


@pytest.mark.parametrize(
    "value, msg",
    [("20:", "--steps starts at 20 but the log has 12 committed steps"), ("4:4", "is empty")],
)
def test_stats_bad_step_range_one_line(log_path, value, msg):
    """A step range outside the log is one error line naming the log, exit 1."""
    r = run("stats", log_path, "--steps", value, "--no-registered")
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.startswith("Error: " + log_path) and msg in r.stderr and len(r.stderr.splitlines()) == 1


def test_stats_steps_not_a_range_is_usage_error(log_path):
    """--steps abc is a usage error (exit 2), as click reports bad values."""
    r = run("stats", log_path, "--steps", "abc")
    assert r.exit_code == 2 and "expected A:B" in r.stderr


def test_plot_steps_and_env(log_path, tmp_path):
    """plot --steps A:B --env N plots those steps of that env (the title says which)."""
    out = tmp_path / "plots"
    r = run("plot", log_path, "-o", out, "--steps", "3:9", "--env", 1)
    assert r.exit_code == 0, r.output
    assert (out / "timeline.png").exists() and (out / "gate_panels.png").exists()
    r = run("plot", log_path, "-o", tmp_path / "p2", "--steps", "30:")
    assert r.exit_code == 1 and "--steps starts at 30" in r.stderr


def test_plot_trace_covers_only_the_range(log_path):
    """The plotted envelope holds exactly the steps of the range, at their own times."""
    from moetape.replay.plots import _EnvTrace
    from moetape.schema.reader import open_log

    with open_log(log_path) as lg:
        tr = _EnvTrace(lg, 1, 6, start=3).run()
        gate = lg.read("gate", 3, 9, env=1)
    assert tr.weights.count[:, 0].sum() == 6
    lo, hi, mean = tr.weights.series(0)
    assert mean.tolist() == pytest.approx(gate[:, 0].astype(float).tolist())
    assert tr.weights.times_s(0.02)[0] == pytest.approx(3 * 0.02)


# ---------------------------------------------------------------------------- info
def test_info_fields_lists_datasets_with_shapes_and_dtypes(log_path):
    """info --fields lists every dataset with its committed shape, dtype and unit (text and JSON)."""
    r = run("info", log_path, "--fields")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert any(line.split() == ["steps/gate", "(12,", "2,", "2)", "float32"] for line in lines)
    assert any(line.split()[:5] == ["frames/root_pos", "(48,", "2,", "3)", "float32"] for line in lines)
    assert any(line.split() == ["steps/done", "(12,", "2)", "bool"] for line in lines)
    d = json.loads(run("info", log_path, "--fields", "--json").stdout)
    by_path = {f["path"]: f for f in d["fields"]}
    assert by_path["steps/obs"]["shape"] == [12, 2, 109] and by_path["steps/obs"]["dtype"] == "float32"
    assert by_path["frames/root_pos"]["unit"] == "m" and by_path["frames/root_pos"]["frame"] == "world"
    assert "fields" not in json.loads(run("info", log_path, "--json").stdout)


def test_info_episode_counts(log_path):
    """info counts episodes seen and finished, and timeouts versus terminations."""
    d = json.loads(run("info", log_path, "--json").stdout)
    assert d["episodes"] == {"seen": 5, "finished": 4, "timeouts": 2, "terminations": 2, "unfinished": 1}
    r = run("info", log_path)
    assert "episodes        5 seen, 4 finished (2 timeouts, 2 terminations), 1 unfinished" in r.stdout


def test_info_several_logs(log_path, tmp_path):
    """info on several logs prints one block each; --json prints one list."""
    other = tmp_path / "other.h5"
    write_log(other, 7)
    r = run("info", log_path, other)
    assert r.exit_code == 0, r.output
    assert r.stdout.count("format_version") == 2
    assert f"log             {log_path}" in r.stdout and f"log             {other}" in r.stdout
    docs = json.loads(run("info", log_path, other, "--json").stdout)
    assert [d["n_steps"] for d in docs] == [12, 7]


def test_info_several_logs_one_bad(log_path, truncated_log):
    """A bad log among several is an error line (and a JSON entry); the others are shown; exit 1."""
    r = run("info", log_path, truncated_log)
    assert r.exit_code == 1
    assert r.stdout.count("format_version") == 1
    assert r.stderr.startswith("Error: " + truncated_log) and len(r.stderr.strip().splitlines()) == 1
    r = run("info", truncated_log, log_path, "--json")
    assert r.exit_code == 1
    docs = json.loads(r.stdout)
    assert docs[0]["path"] == truncated_log and "shorter than HDF5" in docs[0]["error"]
    assert docs[1]["n_steps"] == 12


# ---------------------------------------------------------------------------- compare
def test_compare_different_env_counts_compares_common_envs(tmp_path):
    """compare of a 3-env and a 2-env log compares envs 0-1 and says so (stderr warning, report, JSON)."""
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_log(a, 10, n_envs=3)
    write_log(b, 10, n_envs=2)
    r = run("compare", a, b, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["n_envs"] == 2 and d["envs"] == [0, 1]
    assert (d["a"]["n_envs"], d["b"]["n_envs"]) == (3, 2)
    assert "comparing the envs both have, 0-1" in r.stderr
    r = run("compare", a, b)
    assert "common steps  10 x 2 envs (envs 0-1, the envs both have: A has 3, B has 2)" in r.stdout


def test_compare_common_envs_match_exactly(tmp_path):
    """The envs both logs have are compared row by row: a log against its own first envs differs by 0."""
    import numpy as np

    from moetape.schema.synthetic import small_spec, synthetic_step
    from moetape.schema.writer import LogWriter

    big, small = tmp_path / "big.h5", tmp_path / "small.h5"
    spec3, spec2 = small_spec(3), small_spec(2)
    with LogWriter(str(big), spec3) as w3, LogWriter(str(small), spec2) as w2:
        for s in range(6):
            st, fr = synthetic_step(spec3, s)
            w3.append(st, fr)
            cut = {k: (v[:2] if np.ndim(v) >= 1 and np.shape(v)[0] == 3 else v) for k, v in st.items()}
            fcut = {k: (v[:, :2] if np.ndim(v) >= 2 and np.shape(v)[1] == 3 else v) for k, v in fr.items()}
            w2.append(cut, fcut)
    d = json.loads(run("compare", big, small, "--json").stdout)
    assert d["mean_abs_gate_diff"] == [0.0, 0.0] and d["mean_abs_action_diff"]["all"] == 0.0


# ---------------------------------------------------------------------------- the root group
@pytest.mark.parametrize("typo, meant", [("stat", "stats"), ("inof", "info"), ("verfy", "verify")])
def test_mistyped_command_did_you_mean(typo, meant):
    """A mistyped command is a usage error (exit 2) that suggests the closest command."""
    r = run(typo, "x.h5")
    assert r.exit_code == 2 and r.stdout == ""
    assert f"No such command '{typo}'. Did you mean '{meant}'?" in r.stderr


def test_unknown_command_lists_commands():
    """A name close to no command gets the list of commands, exit 2."""
    r = run("zzzz")
    assert r.exit_code == 2 and "Did you mean" not in r.stderr and "Commands: compare, " in r.stderr


def _complete(words, cword):
    return CliRunner().invoke(
        cli,
        [],
        prog_name="moetape",
        env={"_MOETAPE_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)},
    )


def test_shell_completion_of_commands_and_options():
    """bash completion lists commands from the lazy group and a command's options (README's recipe)."""
    r = _complete("moetape st", 1)
    assert r.exit_code == 0 and r.stdout.split() == ["plain,stats"]
    r = _complete("moetape stats --st", 2)
    assert r.exit_code == 0 and "plain,--steps" in r.stdout.split()
    r = CliRunner().invoke(cli, [], prog_name="moetape", env={"_MOETAPE_COMPLETE": "bash_source"})
    assert r.exit_code == 0 and "_moetape_completion" in r.stdout


def test_shell_completion_imports_no_command():
    """Completing command names imports no command module (works without torch and mujoco)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['mujoco'] = None\n"
        "from moetape.cli import cli\n"
        "try:\n    cli(prog_name='moetape')\n"
        "except SystemExit as e:\n"
        "    loaded = sorted(m for m in sys.modules if m.startswith('moetape.') and m.endswith('cli'))\n"
        "    print('LOADED', loaded)\n    raise\n"
    )
    env = dict(os.environ, _MOETAPE_COMPLETE="zsh_complete", COMP_WORDS="moetape ", COMP_CWORD="1")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "record" in p.stdout and "verify" in p.stdout and "Play an MoE checkpoint" in p.stdout
    assert "LOADED ['moetape.cli']" in p.stdout


def test_verify_goes_on_past_a_damaged_range(tmp_path, monkeypatch):
    """With small chunks and reads, every damaged chunk is named by its steps; no false continuity problem."""
    from moetape.schema import validate as validate_mod

    p = str(tmp_path / "many.h5")
    write_log(p, 40, chunk_bytes=2000, batch_steps=4)
    with h5py.File(p, "r") as f:
        ds = f["steps/action"]
        assert ds.chunks[0] == 4
        offsets = [ds.id.get_chunk_info_by_coord((s, 0, 0)).byte_offset for s in (8, 28)]
    with open(p, "r+b") as fh:
        for off in offsets:
            fh.seek(off + 4)
            fh.write(b"\xff" * 8)
    monkeypatch.setattr(validate_mod, "STREAM_BYTES", 1)  # one step per read
    problems = validate_mod.validate(p)
    assert [(x.where, x.what.split(" (")[0]) for x in problems] == [
        ("steps/action", "checksum or read failure in steps 8-11"),
        ("steps/action", "checksum or read failure in steps 28-31"),
    ]
