"""PNG plots (`moetape plot`, plots.plot_all): files, overwrite rules, streaming reductions."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

from moetape.cli import cli
from moetape.replay import plots
from moetape.replay.plots import Envelope, WeightHistogram, plot_all
from moetape.schema import reader
from moetape.schema.errors import InputError, OutputExistsError
from moetape.schema.reader import open_log
from moetape.schema.synthetic import small_spec, synthetic_step
from moetape.schema.writer import LogWriter

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_episodes(path, n_steps, n_envs=2, episode_len=7):
    """Write a log whose gate ramps with time and whose episodes last ``episode_len`` steps."""
    spec = small_spec(n_envs, frames_per_step=1, obs_dim=4, n_bodies=1)
    with LogWriter(str(path), spec) as w:
        for s in range(n_steps):
            st, fr = synthetic_step(spec, s)
            b = np.full(n_envs, 0.5 + 0.4 * np.sin(s / 5.0), dtype=np.float32)
            st["gate"] = np.stack([b, np.float32(1) - b], axis=1)
            st.pop("gate_entropy")
            st["episode"] = np.full(n_envs, s // episode_len, dtype=np.int32)
            w.append(st, fr)
    return str(path)


@pytest.fixture
def ep_log(tmp_path):
    """Path of a 30-step, 2-env log with episodes of 7 steps."""
    return write_episodes(tmp_path / "ep.h5", 30)


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_SIGNATURE


def test_plot_all_writes_both_pngs(ep_log, tmp_path):
    """plot_all writes gate_panels.png and timeline.png and leaves no temp files."""
    out = tmp_path / "plots"
    with open_log(ep_log) as lg:
        paths = plot_all(lg, str(out), env=1)
    assert [os.path.basename(p) for p in paths] == ["gate_panels.png", "timeline.png"]
    assert all(_is_png(p) for p in paths)
    assert sorted(os.listdir(out)) == ["gate_panels.png", "timeline.png"]


def test_existing_pngs_refused_without_force(ep_log, tmp_path):
    """An existing PNG is never overwritten without force; nothing is written then; force replaces."""
    out = tmp_path / "plots"
    out.mkdir()
    (out / "timeline.png").write_bytes(b"old")
    (out / "notes.txt").write_text("keep")
    with open_log(ep_log) as lg:
        with pytest.raises(OutputExistsError, match="timeline.png: exists"):
            plot_all(lg, str(out))
        assert sorted(os.listdir(out)) == ["notes.txt", "timeline.png"]
        plot_all(lg, str(out), force=True)
    assert _is_png(out / "timeline.png") and (out / "notes.txt").read_text() == "keep"


def test_episode_boundaries_found_across_chunks(ep_log, monkeypatch):
    """Episode starts are the steps where the episode id changes, also across chunk edges."""
    monkeypatch.setattr(reader, "STREAM_BYTES", 1)
    with open_log(ep_log) as lg:
        tr = plots._EnvTrace(lg, 0, lg.n_steps).run()
    assert tr.boundaries == [7, 14, 21, 28]


def test_envelope_decimates_exactly():
    """Min/max/mean per bin equal numpy's over each bin, however the rows are chunked."""
    n = 10_000
    v = np.sin(np.arange(n) / 37.0)[:, None]
    env = Envelope(n, 1, max_bins=100)
    for s in range(0, n, 333):
        env.update(np.arange(s, min(n, s + 333)), v[s : s + 333])
    lo, hi, mean = env.series(0)
    bins = v[:, 0].reshape(100, 100)
    np.testing.assert_allclose(lo, bins.min(axis=1))
    np.testing.assert_allclose(hi, bins.max(axis=1))
    np.testing.assert_allclose(mean, bins.mean(axis=1))
    assert env.times_s(0.02)[0] == pytest.approx(49.5 * 0.02)


def test_envelope_short_log_keeps_every_step_and_skips_nan():
    """With fewer steps than bins every step is its own bin; NaN values are left out."""
    env = Envelope(3, 1)
    env.update(np.arange(3), np.array([[1.0], [np.nan], [3.0]]))
    lo, hi, mean = env.series(0)
    assert env.n_bins == 3 and lo[0] == 1.0 and np.isnan(mean[1]) and hi[2] == 3.0


def test_histogram_box_stats_close_to_numpy():
    """Quartiles from the 1000-bin histogram are within one bin of numpy's percentiles."""
    rng = np.random.default_rng(0)
    w = rng.beta(2, 5, size=(20_000, 1))
    h = WeightHistogram(1)
    h.update(w[:7000])
    h.update(w[7000:])
    box = h.box(0, "base")
    for key, q in (("q1", 25), ("med", 50), ("q3", 75)):
        assert box[key] == pytest.approx(np.percentile(w, q), abs=1.5e-3)
    assert box["mean"] == pytest.approx(w.mean())
    dens, edges = h.shown(0)
    assert len(edges) == 51 and np.sum(dens * np.diff(edges)) == pytest.approx(1.0)


def test_long_log_memory_stays_bounded(tmp_path, monkeypatch):
    """Timeline and scatter sizes depend on the bin/point limits, not on the log length."""
    monkeypatch.setattr(plots, "MAX_BINS", 50)
    monkeypatch.setattr(plots, "MAX_SCATTER", 40)
    path = write_episodes(tmp_path / "long.h5", 400, n_envs=1, episode_len=1000)
    with open_log(path) as lg:
        tr = plots._EnvTrace(lg, 0, lg.n_steps).run()
        assert tr.weights.n_bins == 50 and sum(len(s) for s in tr.scatter) == 40
        plot_all(lg, str(tmp_path / "out"))


def test_plot_bad_inputs(ep_log, tmp_path):
    """Env out of range and an output path that is a file are one-line input errors."""
    with open_log(ep_log) as lg:
        with pytest.raises(InputError, match="--env 2 out of range"):
            plot_all(lg, str(tmp_path / "o"), env=2)
        f = tmp_path / "file"
        f.write_text("x")
        with pytest.raises(InputError, match="not a folder"):
            plot_all(lg, str(f))


def test_cli_plot(ep_log, tmp_path):
    """`moetape plot` prints the written paths; a rerun without --force fails with one line."""
    out = str(tmp_path / "p")
    r = CliRunner().invoke(cli, ["plot", ep_log, "-o", out, "--env", "0"])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [os.path.join(out, "gate_panels.png"), os.path.join(out, "timeline.png")]
    r = CliRunner().invoke(cli, ["plot", ep_log, "-o", out])
    assert r.exit_code == 1 and r.stderr.startswith("Error: ") and "--force" in r.stderr
    r = CliRunner().invoke(cli, ["plot", ep_log, "-o", out, "--force"])
    assert r.exit_code == 0
    r = CliRunner().invoke(cli, ["plot", ep_log])
    assert r.exit_code == 2  # -o is required: a usage error
