"""Sweeps on a real local dask cluster of 2 worker processes: stats --table, --group-by, derive --out-root."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

pytest.importorskip("distributed")

from moetape.cli import cli  # noqa: E402
from moetape.replay import sweep, sweep_table  # noqa: E402
from moetape.replay.analysis import summary  # noqa: E402
from moetape.schema.synthetic import small_spec, synthetic_step  # noqa: E402
from moetape.schema.writer import LogWriter  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CRASH_WRITER = os.path.join(HERE, "..", "schema", "crash_writer.py")
FIGURES = {
    "mean": ("experts", "mean"),
    "std": ("experts", "std"),
    "min": ("experts", "min"),
    "max": ("experts", "max"),
    "usage": ("experts", "usage"),
    "dominance": ("experts", "dominance"),
    "balance": ("experts", "balance"),
}


def write_run(path, *, ckpt, seed, n_steps=30, n_envs=2):
    """Write a synthetic log whose provenance names a checkpoint hash, a trajectory hash and a seed."""
    spec = small_spec(n_envs, frames_per_step=1)
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    prov = {
        "checkpoint_sha256": {"moe": ckpt},
        "trajectory_sha256": "t" * 64,
        "seed": seed,
        "backend": "synthetic",
    }
    with LogWriter(str(path), spec, meta={"command_line": "test", "provenance": prov}) as log:
        for s in range(n_steps):
            log.append(*synthetic_step(spec, s, seed))
    return str(path)


@pytest.fixture(scope="module")
def scheduler():
    """A local cluster of 2 worker processes on 127.0.0.1 for the module; yields its scheduler address."""
    with sweep.open_client(workers=2) as client:
        yield client.scheduler.address


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four logs: checkpoints a (seeds 1, 2) and b (seeds 3, 4)."""
    d = tmp_path_factory.mktemp("runs")
    return [
        write_run(d / f"{ck}{seed}" / "log.h5", ckpt=ck * 64, seed=seed, n_steps=20 + 5 * seed)
        for ck, seed in (("a", 1), ("a", 2), ("b", 3), ("b", 4))
    ]


def single_stats(path, *args):
    """Return `moetape stats PATH --json` as a dict."""
    r = CliRunner().invoke(cli, ["stats", path, "--json", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def expected_row(d, k):
    """The figures of expert k in a `stats --json` document, under the table's column names."""
    e, w, corr = d["experts"][k], d["dwell"][k], d["correlation"]["overall"]
    return {
        **{col: e[key] for col, (_, key) in FIGURES.items()},
        "entropy_mean": d["entropy"]["mean"],
        "switch_rate_hz": d["switching"]["rate_hz"],
        "n_switches": d["switching"]["n_switches"],
        "dwell_n_runs": w["n_runs"],
        "dwell_mean_s": w["mean_s"],
        "dwell_median_s": w["median_s"],
        "dwell_max_s": w["max_s"],
        "r_ee_pos_err": corr["r_ee_pos_err"][k],
        "r_target_distance": corr["r_target_distance"][k],
        "ee_pos_err_m": corr["mean_ee_pos_err_m"],
        "env_steps": d["selection"]["env_steps"],
        "n_steps": d["log"]["n_steps"],
        "log_id": d["log"]["log_id"],
        "expert": d["expert_names"][k],
    }


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_table_equals_single_log_stats(tmp_path, runs, scheduler, suffix):
    """Every row of the table equals the single-log `stats --json` figures value for value (csv, parquet, json)."""
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    out = str(tmp_path / f"sweep{suffix}")
    r = CliRunner().invoke(cli, ["stats", *runs, "--table", out, "--scheduler", scheduler, "-q"])
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    assert f"wrote {out} (8 rows)" in r.stderr
    kind, rows = sweep_table.read_table(out)
    assert kind == "logs"
    assert len(rows) == 8
    for path in runs:
        d = single_stats(path)
        mine = [row for row in rows if row["path"] == path]
        assert [row["expert"] for row in mine] == ["base", "arm"]
        for k, row in enumerate(mine):
            assert {c: row[c] for c in expected_row(d, k)} == expected_row(d, k)
            assert row["checkpoint"].startswith("moe:") and row["seed"] in (1, 2, 3, 4)
            assert row["error"] is None and row["partial"] is False


def test_table_refuses_overwrite_before_running(tmp_path, runs):
    """An existing --table file is refused without --force, before any cluster starts (one line, exit 1)."""
    out = tmp_path / "t.csv"
    out.write_text("mine")
    r = CliRunner().invoke(cli, ["stats", *runs, "--table", str(out)])
    assert r.exit_code == 1
    assert "Error:" in r.stderr and "--force" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert out.read_text() == "mine"


def test_group_by_checkpoint(tmp_path, runs, scheduler):
    """--group-by checkpoint gives, per checkpoint and expert, the number of logs and each figure's mean and std."""
    out = str(tmp_path / "g.json")
    r = CliRunner().invoke(
        cli, ["stats", *runs, "--table", out, "--group-by", "checkpoint", "--scheduler", scheduler, "-q"]
    )
    assert r.exit_code == 0, r.output
    kind, rows = sweep_table.read_table(out)
    assert kind == "groups"
    assert sorted((row["group"][:5], row["expert"]) for row in rows) == [
        ("moe:a", "arm"),
        ("moe:a", "base"),
        ("moe:b", "arm"),
        ("moe:b", "base"),
    ]
    docs = {p: single_stats(p) for p in runs}
    for row in rows:
        members = runs[:2] if row["group"] == "moe:" + "a" * 64 else runs[2:]
        k = 0 if row["expert"] == "base" else 1
        usage = [docs[p]["experts"][k]["usage"] for p in members]
        err = [docs[p]["correlation"]["overall"]["mean_ee_pos_err_m"] for p in members]
        assert row["n_logs"] == 2
        assert row["usage_mean"] == pytest.approx(statistics.fmean(usage), rel=1e-12)
        assert row["usage_std"] == pytest.approx(statistics.stdev(usage), rel=1e-12)
        assert row["ee_pos_err_m_mean"] == pytest.approx(statistics.fmean(err), rel=1e-12)


def test_per_env_split_large_log(tmp_path, scheduler):
    """--per env splits a log far larger than the others into env ranges; its rows equal stats --env of each env."""
    small = [write_run(tmp_path / f"s{i}.h5", ckpt="c" * 64, seed=i, n_steps=10, n_envs=2) for i in range(3)]
    big = write_run(tmp_path / "big.h5", ckpt="c" * 64, seed=9, n_steps=400, n_envs=6)
    tasks = sweep.plan_stats(small + [big], per="env")
    assert len([t for t in tasks if t.path == big]) > 1
    assert sorted(t.envs for t in tasks if t.path == big)[0][0] == 0
    out = str(tmp_path / "e.csv")
    r = CliRunner().invoke(
        cli, ["stats", *small, big, "--per", "env", "--table", out, "--scheduler", scheduler]
    )
    assert r.exit_code == 0, r.output
    _, rows = sweep_table.read_table(out)
    mine = [row for row in rows if row["path"] == big]
    assert [(row["env"], row["expert"]) for row in mine] == [
        (e, x) for e in range(6) for x in ("base", "arm")
    ]
    for env in range(6):
        d = single_stats(big, "--env", str(env))
        for k, row in enumerate(mine[2 * env : 2 * env + 2]):
            assert {c: row[c] for c in expected_row(d, k)} == expected_row(d, k)


def _set_stream_bytes(client, n):
    """Set the reader's chunk size (bytes) in every worker process of ``client``."""
    client.run(exec, f"import moetape.schema.reader as r; r.STREAM_BYTES = {int(n)}", {})


def test_whole_log_rows_split_into_step_ranges(tmp_path, scheduler, monkeypatch):
    """A log far larger than the others is split into step ranges at chunk boundaries; its rows equal stats --json."""
    import distributed

    from moetape.replay import analysis
    from moetape.schema import reader

    small = [write_run(tmp_path / f"s{i}.h5", ckpt="c" * 64, seed=i, n_steps=10, n_envs=2) for i in range(3)]
    big = write_run(tmp_path / "big.h5", ckpt="c" * 64, seed=9, n_steps=400, n_envs=6)
    default = reader.STREAM_BYTES
    monkeypatch.setattr(reader, "STREAM_BYTES", 2000)  # chunks of a few dozen steps, here and on the workers
    with reader.open_log(big) as log:
        per = analysis.chunk_steps(log)
    assert 1 < per < 100
    tasks = sweep.plan_stats(small + [big])
    assert [t.steps for t in tasks if t.path != big] == [None, None, None]
    ranges = [t.steps for t in tasks if t.path == big]
    assert len(ranges) > 1
    assert ranges[0][0] == 0 and ranges[-1][1] == 400
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(a % per == 0 and b > a for a, b in ranges)
    out = str(tmp_path / "steps.json")
    with distributed.Client(scheduler) as client:
        _set_stream_bytes(client, 2000)
        try:
            r = CliRunner().invoke(
                cli, ["stats", *small, big, "--table", out, "--scheduler", scheduler, "-q"]
            )
        finally:
            _set_stream_bytes(client, default)
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    _, rows = sweep_table.read_table(out)
    assert len(rows) == 8
    for path in small + [big]:
        d = single_stats(path)
        mine = [row for row in rows if row["path"] == path]
        assert [row["expert"] for row in mine] == ["base", "arm"]
        for k, row in enumerate(mine):
            assert {c: row[c] for c in expected_row(d, k)} == expected_row(d, k)
            assert row["episodes_seen"] == d["episodes"]["seen"] and row["env"] is None
            assert row["episodes_finished"] == d["episodes"]["finished"]
            assert (row["step_start"], row["step_stop"], row["duration_s"]) == (
                0,
                400 if path == big else 10,
                d["selection"]["duration_s"],
            )
            assert row["error"] is None
    big_stats = single_stats(big)
    assert big_stats["switching"]["n_switches"] > 0 and big_stats["dwell"][0]["n_runs"] > len(ranges)


def test_corrupt_truncated_and_live_logs(tmp_path, runs, scheduler):
    """A corrupt and a truncated log get error rows, a live one a note; the good rows are complete; exit 1."""
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"not a log" * 100)
    truncated = tmp_path / "truncated.h5"
    with open(runs[0], "rb") as f:
        data = f.read()
    truncated.write_bytes(data[: len(data) // 2])
    live = str(tmp_path / "live.h5")
    writer = subprocess.Popen(
        [sys.executable, CRASH_WRITER, live, "3", "thread"], stdout=subprocess.PIPE, text=True
    )
    try:
        while int(writer.stdout.readline()) < 5:  # wait until it has committed a few steps
            pass
        out = str(tmp_path / "t.csv")
        logs = [runs[0], str(corrupt), live, str(truncated), runs[1]]
        r = CliRunner().invoke(cli, ["stats", *logs, "--table", out, "--scheduler", scheduler, "-q"])
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
    assert r.exit_code == 1
    _, rows = sweep_table.read_table(out)
    by_path = {}
    for row in rows:
        by_path.setdefault(row["path"], []).append(row)
    assert [p for p in by_path] == logs  # the order of the command line
    for p in (str(corrupt), str(truncated)):
        assert len(by_path[p]) == 1 and by_path[p][0]["error"] and by_path[p][0]["mean"] is None
    assert all(row["partial"] and "still recording" in row["note"] for row in by_path[live])
    for p in runs[:2]:
        d = single_stats(p)
        assert [row["mean"] for row in by_path[p]] == [e["mean"] for e in d["experts"]]
    err = r.stderr.strip().splitlines()
    assert any(line.startswith("error: ") and "corrupt.h5" in line for line in err)
    assert any(line.startswith("error: ") and "truncated.h5" in line for line in err)
    assert any(line.startswith("note: ") and "live.h5" in line for line in err)
    assert err[-1].startswith("Error: 2 of 5 logs could not be read and 1 are still recording")
    assert "Traceback" not in r.output


def test_killed_worker_task_is_rerun(tmp_path):
    """A worker process killed while it holds tasks has them rerun: the table is still complete and equal."""
    paths = [write_run(tmp_path / f"k{i}.h5", ckpt="k" * 64, seed=i, n_steps=200, n_envs=4) for i in range(8)]
    tasks = sweep.plan_stats(paths)
    killed = []
    with sweep.open_client(workers=2) as client:
        pids = client.run(os.getpid)

        def kill_busy_worker(n_done):
            if killed:
                return
            busy = [w for w, keys in client.processing().items() if keys]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(busy[0])

        rows = sweep.run_stats(client, tasks, on_result=kill_busy_worker)
        assert killed, "no worker held a task after the first result"
        client.wait_for_workers(2)
        assert set(client.run(os.getpid).values()).isdisjoint({pids[killed[0]]})
    assert len(rows) == 16 and not any(row["error"] for row in rows)
    for p in paths:
        d = summary(p)
        assert [row["mean"] for row in rows if row["path"] == p] == [e["mean"] for e in d["experts"]]


def test_local_cluster_listens_on_loopback_only():
    """The local cluster's scheduler, workers, nannies and HTTP servers listen on 127.0.0.1 only."""
    psutil = pytest.importorskip("psutil")
    with sweep.open_client(workers=2) as client:
        me = psutil.Process()
        procs = [me] + me.children(recursive=True)
        listening = [
            c.laddr for p in procs for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN
        ]
        n_workers = len(client.scheduler_info()["workers"])
    assert n_workers == 2
    assert len(listening) >= 5  # scheduler + its HTTP server + 2 workers + 2 nannies
    assert {addr.ip for addr in listening} == {"127.0.0.1"}


def test_derive_out_root(tmp_path, runs, scheduler):
    """derive LOG... --out-root gives each log the folder a single derive gives; a bad log is reported, exit 1."""
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"x" * 64)
    root = tmp_path / "derived"
    r = CliRunner().invoke(
        cli,
        [
            "derive",
            runs[0],
            runs[1],
            str(bad),
            "--out-root",
            str(root),
            "--no-video",
            "--scheduler",
            scheduler,
            "-q",
        ],
    )
    assert r.exit_code == 1
    assert "bad.h5" in r.stderr and "1 of 3 logs could not be derived" in r.stderr
    single = tmp_path / "single"
    r1 = CliRunner().invoke(cli, ["derive", runs[0], "--out", str(single), "--no-video", "-q"])
    assert r1.exit_code == 0, r1.output
    folders = sweep.derive_folders([runs[0], runs[1], str(bad)], str(root))
    assert folders[0].startswith(str(root)) and folders[0].endswith(os.path.join("runs0", "a1", "log"))
    for f in folders[:2]:
        assert os.path.isfile(os.path.join(f, "derived.json"))
    assert not os.path.exists(folders[2])

    def digests(folder):
        with open(os.path.join(folder, "derived.json")) as f:
            manifest = json.load(f)
        return {f["name"]: f["sha256"] for f in manifest["files"]}

    assert digests(folders[0]) == digests(str(single))


def test_derive_several_logs_need_out_root(runs):
    """derive with several logs and no --out-root (or with --out) is a usage error, exit 2."""
    r = CliRunner().invoke(cli, ["derive", runs[0], runs[1]])
    assert r.exit_code == 2 and "--out-root" in r.stderr
    r = CliRunner().invoke(cli, ["stats", runs[0], runs[1], "--env", "0"])
    assert r.exit_code == 2 and "--per env" in r.stderr


def test_plot_table(tmp_path, runs, scheduler):
    """plot --table draws the sweep (gate usage and EE error per group) as sweep.png."""
    out = str(tmp_path / "g.csv")
    r = CliRunner().invoke(
        cli, ["stats", *runs, "--table", out, "--group-by", "checkpoint", "--scheduler", scheduler, "-q"]
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["plot", "--table", out, "-o", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    png = tmp_path / "p" / "sweep.png"
    assert r.stdout.strip() == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = CliRunner().invoke(cli, ["plot", "-o", str(tmp_path / "p")])
    assert r.exit_code == 2 and "--table" in r.stderr


@pytest.mark.slow
def test_ctrl_c_stops_the_cluster(tmp_path):
    """SIGINT during a sweep ends moetape and its local cluster: no scheduler or worker process is left."""
    psutil = pytest.importorskip("psutil")
    paths = [
        write_run(tmp_path / f"c{i}.h5", ckpt="c" * 64, seed=i, n_steps=400, n_envs=8) for i in range(40)
    ]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "moetape",
            "stats",
            *paths,
            "--workers",
            "2",
            "--table",
            str(tmp_path / "t.csv"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    parent = psutil.Process(proc.pid)
    while len(parent.children(recursive=True)) < 2:  # the 2 worker processes (nannies run in moetape's)
        assert proc.poll() is None
        time.sleep(0.05)
    children = parent.children(recursive=True)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    _, alive = psutil.wait_procs(children, timeout=60)
    assert alive == []
    assert proc.returncode != 0, err
    assert "Traceback" not in err
    assert not (tmp_path / "t.csv").exists()
