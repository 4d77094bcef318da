"""record --out names a run folder: live runs are never replaced, --force replaces a finished run whole,
foreign folders and files are refused, a run that fails before its first step leaves nothing behind,
--flush-seconds is checked, and the end-of-run messages tell what the log holds."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("mujoco")

from moetape.cli import cli  # noqa: E402
from moetape.record.cli import _Display  # noqa: E402
from moetape.record.demo import make_demo_checkpoint, make_demo_trajectory  # noqa: E402
from moetape.record.runner import Metric, RunConfig, StepReport, record, summary_lines  # noqa: E402
from moetape.schema.errors import OutputExistsError  # noqa: E402
from moetape.schema.reader import open_log  # noqa: E402

BAD_ROBOT = "<mujoco><worldbody><body><geom type='nonsense'/></body></worldbody></mujoco>"


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    """The demo checkpoint and trajectory, made once for the module."""
    d = tmp_path_factory.mktemp("demo")
    return make_demo_checkpoint(str(d / "moe.pt")), make_demo_trajectory(str(d / "traj.pkl"))


def _args(demo_files, out, *extra):
    ckpt, traj = demo_files
    return ["record", "--moe_ckpt_path", ckpt, "--trajectory_file_path", traj, "--device", "cpu"] + [
        "--out",
        str(out),
        "-q",
        *extra,
    ]


def run(*args, **kwargs):
    return CliRunner().invoke(cli, list(args), **kwargs)


def _one_error_line(result):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def _log_id(path):
    with open_log(path) as log:
        return log.log_id


def _start_live(demo_files, out):
    """Start a long recording into ``out`` in a process of its own; return it once it has committed steps."""
    cmd = [sys.executable, "-m", "moetape"] + _args(demo_files, out, "--num_steps", "1000000")
    cmd += ["--flush-seconds", "0.2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    path = os.path.join(str(out), "log.h5")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with open_log(path) as log:
                if log.n_steps > 0:
                    return proc
        except Exception:  # noqa: BLE001 - not there yet, or mid-creation
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the recording did not start: " + proc.communicate()[1])


def test_force_refuses_a_run_folder_still_recording(demo_files, tmp_path):
    """--force into a folder whose recording is live is refused (one line); the live run goes on and keeps its log."""
    out = tmp_path / "live"
    proc = _start_live(demo_files, out)
    try:
        log_id = _log_id(str(out / "log.h5"))
        r = run(*_args(demo_files, out, "--num_steps", "3", "--force"))
        assert r.exit_code == 1
        line = _one_error_line(r)
        assert "still running" in line and f"pid {proc.pid}" in line
        # The same refusal in a process of its own releases every shared-memory block it made.
        second = subprocess.run(
            [sys.executable, "-m", "moetape"] + _args(demo_files, out, "--num_steps", "3"),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 1 and "still running" in second.stderr
        assert "leaked" not in second.stderr and "Traceback" not in second.stderr
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    with open_log(str(out / "log.h5")) as log:
        assert log.log_id == log_id and log.run_status == "interrupted"
        n = log.n_steps
    # the end-of-run message gives the count the log holds
    assert re.search(rf"holds the {n} steps committed", err), err
    assert os.listdir(str(out)) == ["log.h5"]


def test_killed_run_leaves_no_stuck_lock(demo_files, tmp_path):
    """A SIGKILLed recording does not keep its folder locked: --force then replaces it."""
    out = tmp_path / "killed"
    proc = _start_live(demo_files, out)
    proc.kill()
    proc.communicate(timeout=60)
    old = _log_id(str(out / "log.h5"))
    r = run(*_args(demo_files, out, "--num_steps", "3", "--force"))
    assert r.exit_code == 0, r.output
    assert _log_id(str(out / "log.h5")) != old
    assert sorted(os.listdir(str(out))) == ["log.h5"]


def test_force_on_finished_run_replaces_the_folder_whole(demo_files, tmp_path):
    """--force on a finished run leaves only the new log: no old derived files beside it."""
    out = tmp_path / "done"
    assert run(*_args(demo_files, out, "--num_steps", "3")).exit_code == 0
    old = _log_id(str(out / "log.h5"))
    for name in ("derived.json", "logs.pkl", "video.mp4", "weight_stats.pkl"):
        (out / name).write_text("old")
    (out / "derived").mkdir()
    (out / "derived" / "summary.json").write_text("{}")
    r = run(*_args(demo_files, out, "--num_steps", "4", "--force"))
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(str(out))) == ["log.h5"]
    with open_log(str(out / "log.h5")) as log:
        assert log.log_id != old and log.n_steps == 4
    log_path = str(out / "log.h5")
    assert r.stdout.strip() == log_path
    for command in ("info", "derive", "view"):
        assert f"moetape {command} {log_path}" in r.stderr


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("with_log", [False, True])
def test_foreign_folder_refused_and_untouched(demo_files, tmp_path, force, with_log):
    """A folder holding files moetape did not write is refused with one line, --force or not, trailing slash too."""
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    if with_log:
        (out / "log.h5").write_text("not ours to lose")
    before = sorted(os.listdir(str(out)))
    for target in (str(out), str(out) + os.sep):
        r = run(*_args(demo_files, target, "--num_steps", "3", *(["--force"] if force else [])))
        assert r.exit_code == 1
        assert "notes.txt" in _one_error_line(r) and "did not write" in r.stderr
        assert sorted(os.listdir(str(out))) == before
    assert (out / "notes.txt").read_text() == "mine"


def test_out_that_is_a_file_one_line(demo_files, tmp_path):
    """--out naming an existing file is refused with one line; the file stays."""
    target = tmp_path / "afile"
    target.write_text("x")
    r = run(*_args(demo_files, target, "--num_steps", "3", "--force"))
    assert r.exit_code == 1 and "is a file" in _one_error_line(r)
    assert target.read_text() == "x"


def test_failure_before_first_step_leaves_no_folder(demo_files, tmp_path):
    """A robot MuJoCo refuses or --visualize without a display: no run folder (nor parents) is left behind."""
    robot = tmp_path / "bad.xml"
    robot.write_text(BAD_ROBOT)
    out = tmp_path / "new" / "deep" / "run"
    r = run(*_args(demo_files, out, "--num_steps", "3", "--robot", str(robot)))
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "new").exists()
    r = run(
        *_args(demo_files, out, "--num_steps", "3", "--visualize"),
        env={"DISPLAY": None, "WAYLAND_DISPLAY": None},
    )
    assert r.exit_code == 1 and "no display" in _one_error_line(r)
    assert not (tmp_path / "new").exists()


def test_failure_before_first_step_keeps_the_run_it_would_replace(demo_files, tmp_path):
    """--force that fails before its first step puts the finished run back as it was."""
    out = tmp_path / "kept"
    assert run(*_args(demo_files, out, "--num_steps", "3")).exit_code == 0
    (out / "derived.json").write_text("old")
    old = _log_id(str(out / "log.h5"))
    robot = tmp_path / "bad.xml"
    robot.write_text(BAD_ROBOT)
    r = run(*_args(demo_files, out, "--num_steps", "3", "--force", "--robot", str(robot)))
    assert r.exit_code == 1
    assert sorted(os.listdir(str(out))) == ["derived.json", "log.h5"]
    assert _log_id(str(out / "log.h5")) == old and (out / "derived.json").read_text() == "old"


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_run_ended_before_first_step_by_api_leaves_nothing(demo_files, tmp_path, exc):
    """An error or Ctrl-C before the first step is in the log: no folder is left, and Ctrl-C reports 0 steps."""
    ckpt, traj = demo_files
    out = tmp_path / "api" / "run"
    cfg = RunConfig(moe_ckpt_path=ckpt, trajectory_file_path=traj, out=str(out), num_steps=5)

    def fail(backend, result):
        raise exc("stop")

    if exc is KeyboardInterrupt:
        result = record(cfg, metrics=[Metric("m", fail)], command_line="test")
        assert result.steps == 0 and result.log_path == "" and result.status == "interrupted"
    else:
        with pytest.raises(RuntimeError, match="stop"):
            record(cfg, metrics=[Metric("m", fail)], command_line="test")
    assert not (tmp_path / "api").exists()


def test_result_steps_are_the_logs_committed_steps(demo_files, tmp_path):
    """RunResult.steps is what the log holds."""
    ckpt, traj = demo_files
    cfg = RunConfig(moe_ckpt_path=ckpt, trajectory_file_path=traj, out=str(tmp_path / "r"), num_steps=7)
    result = record(cfg, command_line="test")
    with open_log(result.log_path) as log:
        assert result.steps == log.n_steps == 7


def test_run_folder_probe_sees_a_held_lock(tmp_path):
    """RunFolder.check and open refuse a folder another holder has locked; after close it opens."""
    from moetape.record.run_folder import LOCK_NAME, RunFolder

    first = RunFolder(str(tmp_path / "f"), force=True)
    first.open()
    assert os.path.exists(str(tmp_path / "f" / LOCK_NAME))
    with pytest.raises(OutputExistsError, match="still running"):
        RunFolder(str(tmp_path / "f"), force=True).check()
    with pytest.raises(OutputExistsError, match="still running"):
        RunFolder(str(tmp_path / "f"), force=True).open()
    first.abort()
    first.close()
    assert not (tmp_path / "f").exists()


def test_killed_before_first_step_old_run_is_put_back(tmp_path):
    """A replacement killed between open and its first step: the next open restores the old run first."""
    from moetape.record.run_folder import RunFolder

    out = tmp_path / "r"
    out.mkdir()
    (out / "log.h5").write_text("old log")
    (out / "derived.json").write_text("old")
    first = RunFolder(str(out), force=True)
    first.open()
    (out / "log.h5").write_text("new, never started")
    first._unlock()  # as the kernel does for a killed process
    with pytest.raises(OutputExistsError, match="--force"):
        RunFolder(str(out), force=False).open()
    assert sorted(os.listdir(str(out))) == ["derived.json", "log.h5"]
    assert (out / "log.h5").read_text() == "old log"


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_bad_flush_seconds_one_line_no_hang(demo_files, tmp_path, value):
    """--flush-seconds below 0 or not finite: one line, exit 1, no folder (a subprocess: it once hung)."""
    out = tmp_path / "flush"
    proc = subprocess.run(
        [sys.executable, "-m", "moetape"]
        + _args(demo_files, out, "--num_steps", "5", "--flush-seconds", value),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--flush-seconds" in lines[0] and ">= 0" in lines[0], proc.stderr
    assert not out.exists()


def test_zero_flush_seconds_commits_every_step(demo_files, tmp_path):
    """--flush-seconds 0 records to the end (every step committed on its own), without hanging."""
    out = tmp_path / "zero"
    proc = subprocess.run(
        [sys.executable, "-m", "moetape"]
        + _args(demo_files, out, "--num_steps", "25", "--flush-seconds", "0"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "25 steps x 1 envs" in proc.stderr
    with open_log(str(out / "log.h5")) as log:
        assert log.n_steps == 25 and log.ended_cleanly


def _report(step, n_committed):
    gate = np.array([[0.25, 0.75]], dtype=np.float32)
    return StepReport(step, 300, gate, np.array([0.5], dtype=np.float32), 100.0, n_committed)


def test_live_line_ends_on_the_final_committed_count(capsys):
    """With --show_weights on a terminal, the last live line shows what was committed at the end."""
    display = _Display(300, show_weights=True, quiet=False)
    display.live = True
    for s in range(300):
        display(_report(s, 256))
    display.close(300)
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\r\x1b[K")[-1]
    assert last.startswith("   300/300") and last.endswith("committed 300")


def test_summary_states_max_entropy_as_a_number():
    """The --show_weights summary writes the entropy maximum as a number (ln 2 = 0.693 for two experts)."""
    summary = {"steps": 3, "experts": {"base": {}, "arm": {}}, "mean_entropy": 0.5811}
    for e in summary["experts"].values():
        e.update(mean=0.5, std=0.1, usage_above_0_5=0.5)
    assert summary_lines(summary)[-1] == "  mean entropy: 0.5811 (max ln 2 = 0.693)"
