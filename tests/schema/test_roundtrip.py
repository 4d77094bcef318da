"""Property tests: whatever is appended is read back equal, in any batching."""

from __future__ import annotations

import os
import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moetape.schema.reader import open_log
from moetape.schema.synthetic import small_spec, synthetic_step
from moetape.schema.validate import validate
from moetape.schema.writer import LogWriter, gate_entropy


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_envs=st.integers(1, 5),
    n_steps=st.integers(0, 23),
    batch=st.integers(1, 9),
    fps=st.sampled_from([1, 4]),
    obs_dim=st.integers(1, 12),
    experts=st.integers(1, 4),
    metric_shape=st.sampled_from([(), (2,), (2, 3)]),
    seed=st.integers(0, 2**16),
)
def test_append_read_roundtrip(n_envs, n_steps, batch, fps, obs_dim, experts, metric_shape, seed):
    """Random shapes, envs, batch sizes and metrics round-trip exactly and validate cleanly."""
    spec = small_spec(n_envs, frames_per_step=fps, obs_dim=obs_dim, n_experts=experts)
    spec = type(spec)(**dict(spec.__dict__, metrics={"m": (metric_shape, "float32"), "flag": ((), "bool")}))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "r.h5")
        steps = [synthetic_step(spec, s, seed) for s in range(n_steps)]
        rng = np.random.default_rng(seed)
        for st_, _ in steps:
            st_["metrics/m"] = rng.random((n_envs,) + metric_shape).astype(np.float32)
            st_["metrics/flag"] = rng.random(n_envs) > 0.5
        with LogWriter(path, spec, batch_steps=batch, chunk_bytes=1024) as w:
            for st_, fr in steps:
                w.append(st_, fr)
        with open_log(path) as log:
            assert log.n_steps == n_steps and log.n_frames == n_steps * fps
            for name in ["obs", "gate", "done", "metrics/m", "metrics/flag", "terms/reward_total"]:
                got = log.read(name)
                want = np.stack([s[name] for s, _ in steps]) if steps else got[:0]
                np.testing.assert_array_equal(got, want)
            got = log.read("frames/body_pos")
            want = np.concatenate([f["body_pos"] for _, f in steps]) if steps else got[:0]
            np.testing.assert_array_equal(got, want)
            chunks = list(log.iter_chunks(["obs"], chunk_steps=max(1, batch - 1)))
            assert sum(c.stop - c.start for c in chunks) == n_steps
        assert validate(path) == []


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6))
def test_gate_entropy_formula(ws):
    """Entropy is -sum w ln(w + 1e-8), natural log, for any weights."""
    w = np.asarray(ws, dtype=np.float32)
    expected = -(w * np.log(w + np.float32(1e-8))).sum()
    assert np.isclose(gate_entropy(w[None])[0], expected, atol=1e-6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_steps=st.integers(1, 17),
    batch=st.integers(1, 6),
    fps=st.sampled_from([1, 4]),
    ways=st.lists(
        st.sampled_from(["copy", "in_place", "flush_between", "replaced"]), min_size=17, max_size=17
    ),
    seed=st.integers(0, 2**16),
)
def test_frames_written_in_place_roundtrip(n_steps, batch, fps, ways, seed):
    """Frames filled in place (frame_rows), copied, replaced in the dict, or with a flush between, read back equal."""
    spec = small_spec(3, frames_per_step=fps)
    steps = [synthetic_step(spec, s, seed) for s in range(n_steps)]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "p.h5")
        with LogWriter(path, spec, batch_steps=batch, chunk_bytes=1024) as w:
            for (st_, fr), way in zip(steps, ways):
                if way == "copy":
                    w.append(st_, fr)
                    continue
                rows = w.frame_rows()
                assert set(rows) == set(fr) - {"step", "substep"}  # the writer fills those
                for key in rows:
                    rows[key][...] = fr[key]
                if way == "flush_between":  # the partial batch is committed before this step's append
                    w.flush()
                if way == "replaced":
                    rows["body_pos"] = fr["body_pos"].copy()
                w.append(st_, rows)
        with open_log(path) as log:
            assert log.n_steps == n_steps
            for key in steps[0][1]:
                np.testing.assert_array_equal(
                    log.read("frames/" + key), np.concatenate([f[key] for _, f in steps])
                )
            np.testing.assert_array_equal(log.read("frames/step"), np.repeat(np.arange(n_steps), fps))
        assert validate(path) == []
