"""ZarrV2Writer against zarr itself: same chunk files, byte for byte, for any shape, chunking and row blocks."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moetape.replay import legacy_zarr


def _zarr_store(path, name, data, chunks):
    """Write ``data`` with zarr's own API in v2 format, with the writer's codec and fill value."""
    import zarr

    codec = legacy_zarr._blosc()
    if int(zarr.__version__.split(".")[0]) >= 3:
        g = zarr.open_group(store=path, mode="w-", zarr_format=2)
        a = g.create_array(
            name,
            shape=data.shape,
            chunks=chunks,
            dtype=data.dtype,
            compressors=codec,
            fill_value=0,
            order="C",
            config={"write_empty_chunks": True},
        )
    else:
        g = zarr.open_group(store=path, mode="w-")
        a = g.create_dataset(
            name, shape=data.shape, chunks=chunks, dtype=data.dtype, compressor=codec, fill_value=0, order="C"
        )
    a[...] = data


def _chunk_files(path, name):
    folder = os.path.join(path, name)
    out = {}
    for fname in os.listdir(folder):
        if not fname.startswith("."):
            with open(os.path.join(folder, fname), "rb") as f:
                out[fname] = f.read()
    return out


@st.composite
def arrays_and_blocks(draw):
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.integers(1, 9)) for _ in range(ndim))
    chunks = tuple(draw(st.integers(1, n + 2)) for n in shape)  # edge chunks and chunks larger than the array
    blocks, left = [], shape[0]
    while left:
        b = draw(st.integers(1, left))
        blocks.append(b)
        left -= b
    dtype = draw(st.sampled_from(["float32", "float64", "int64", "bool"]))
    return shape, chunks, blocks, dtype


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=arrays_and_blocks())
def test_writer_matches_zarr_chunk_files(tmp_path_factory, case):
    """Bands of one chunk (buffered) and of several (spilled) give zarr's own chunk files."""
    shape, chunks, blocks, dtype = case
    d = tmp_path_factory.mktemp("z")
    rng = np.random.default_rng(sum(shape) * 31 + len(blocks))
    data = (rng.random(shape) * 100).astype(dtype)
    ours, theirs = str(d / "ours.zarr"), str(d / "theirs.zarr")
    w = legacy_zarr.ZarrV2Writer(ours)
    w.create("a", shape, dtype, chunks=chunks)
    at = 0
    for b in blocks:
        w.append("a", data[at : at + b])
        at += b
    w.close()
    digest = w.tree_digest()
    _zarr_store(theirs, "a", data, chunks)
    assert _chunk_files(ours, "a") == _chunk_files(theirs, "a")
    assert [n for n in os.listdir(d) if n.startswith(".moetape-spill")] == []  # spill files removed
    entries = {}
    for root, _dirs, files in os.walk(ours):
        for fname in files:
            full = os.path.join(root, fname)
            with open(full, "rb") as f:
                import hashlib

                entries[os.path.relpath(full, ours)] = hashlib.sha256(f.read()).hexdigest()
    assert digest["sha256"] == legacy_zarr.tree_sha256(entries) and digest["files"] == len(entries)


def test_spilled_band_keeps_memory_to_chunks(tmp_path):
    """A band of many chunks goes through the spill file: values intact after several bands."""
    import zarr

    shape, chunks = (50, 6, 7), (16, 4, 3)
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    w = legacy_zarr.ZarrV2Writer(str(tmp_path / "s.zarr"))
    w.create("x", shape, "float32", chunks=chunks)
    assert w._arrays["x"].spill_fd is not None
    for i in range(0, 50, 7):
        w.append("x", data[i : i + 7])
    w.close()
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["x"][:], data)


def test_too_many_rows_is_refused(tmp_path):
    w = legacy_zarr.ZarrV2Writer(str(tmp_path / "t.zarr"))
    w.create("x", (3, 4, 2), "float32", chunks=(2, 2, 2))
    w.append("x", np.zeros((3, 4, 2), np.float32))
    with pytest.raises(ValueError, match="more rows"):
        w.append("x", np.zeros((1, 4, 2), np.float32))
    w.abort()
