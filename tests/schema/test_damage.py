"""Damaged logs: every reader command ends with exit 0 or 1 and one line, never hangs or tracebacks.

A seeded corpus: golden, freshly written and killed-writer logs, each damaged by truncation, flipped
bytes in the superblock, object headers, B-tree / chunk-index nodes and chunk data, and zeroed 4 KiB
blocks, at several offsets. Each damaged file gets one subprocess (damage_commands.py) that runs
every reader command on it under a hang guard; a few dozen cases here, hundreds under ``slow``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys

import h5py
import pytest
from helpers import GOLDEN, killed_log, write_log

from moetape.schema import io

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "damage_commands.py")
HANG_GUARD_S = 300
"""A guard against hangs, not a timing assertion: a damaged file used to hang every command for good."""

KINDS = ("truncate", "superblock", "object_header", "index_node", "chunk_data", "zero_block")
INDEX_SIGNATURES = (b"EAHD", b"EAIB", b"EASB", b"EADB", b"FAHD", b"FADB", b"BTHD", b"BTIN", b"BTLF", b"TREE")
HEAP_SIGNATURES = (b"FRHP", b"FHDB", b"FHIB", b"GCOL")


def _bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _signature_offsets(data: bytes, signatures) -> list:
    out = []
    for sig in signatures:
        start = data.find(sig)
        while start >= 0:
            out.append(start)
            start = data.find(sig, start + 1)
    return sorted(out)


def _chunk_offsets(path: str) -> list:
    """Return (byte offset, size) of every allocated data chunk in the file."""
    found = []
    with h5py.File(path, "r", swmr=io.needs_swmr(path), locking=False) as f:

        def visit(_name, obj):
            if isinstance(obj, h5py.Dataset) and obj.chunks:
                for i in range(obj.id.get_num_chunks()):
                    info = obj.id.get_chunk_info(i)
                    found.append((info.byte_offset, info.size))

        f.visititems(visit)
    return found


def damage(src: str, dst: str, kind: str, seed: int) -> str:
    """Copy ``src`` to ``dst`` damaged one way (see KINDS) at a seeded place; return a description."""
    rnd = random.Random(seed)
    shutil.copy(src, dst)
    data = _bytes(src)
    size = len(data)
    if kind == "truncate":
        n = rnd.randrange(48, size)
        os.truncate(dst, n)
        return f"truncated to {n} of {size} bytes"
    if kind == "zero_block":
        off = rnd.randrange(0, size - 4096)
        _write(dst, off, bytes(4096))
        return f"4 KiB zeroed at {off}"
    if kind == "superblock":
        places = [rnd.randrange(8, 48) for _ in range(rnd.choice((1, 2, 8)))]
    elif kind == "object_header":
        heads = _signature_offsets(data, (b"OHDR", b"OCHK") + HEAP_SIGNATURES)
        base = rnd.choice(heads)
        places = [base + rnd.randrange(4, 64) for _ in range(rnd.choice((1, 8)))]
    elif kind == "index_node":
        nodes = _signature_offsets(data, INDEX_SIGNATURES)
        base = rnd.choice(nodes)
        places = [base + rnd.randrange(0, 48) for _ in range(rnd.choice((1, 8)))]
    elif kind == "chunk_data":
        off, length = rnd.choice(_chunk_offsets(src))
        places = [off + rnd.randrange(0, length) for _ in range(8)]
    else:
        raise ValueError(kind)
    with open(dst, "r+b") as f:
        for p in places:
            f.seek(p)
            b = f.read(1)
            f.seek(p)
            f.write(bytes([b[0] ^ (1 << rnd.randrange(8))]))
    return f"{kind}: bit flips at {sorted(places)}"


def _write(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The undamaged logs the corpus starts from: golden ones, a fresh one, a killed writer's."""
    d = tmp_path_factory.mktemp("sources")
    fresh = str(d / "fresh.h5")
    write_log(fresh, 40, n_envs=3, seed=5, chunk_bytes=4096)
    out = {"fresh": fresh, "killed": killed_log(str(d / "killed.h5"))}
    for p in GOLDEN:
        out[os.path.basename(p)] = p
    return out


def cases(n: int, seed: int) -> list:
    """Return ``n`` seeded (source, kind, seed) cases, every kind and source in turn."""
    names = ["fresh", "killed"] + [os.path.basename(p) for p in GOLDEN]
    rnd = random.Random(seed)
    return [
        (names[(i // len(KINDS)) % len(names)], KINDS[i % len(KINDS)], rnd.randrange(1 << 30))
        for i in range(n)
    ]


ONE_LINE_COMMANDS = (
    "info",
    "info --json",
    "stats",
    "export",
    "compare",
    "upgrade",
    "salvage",
    "derive",
    "render",
)


def check_case(sources, tmp_path, name: str, kind: str, seed: int, *, heavy: bool = False) -> None:
    """Damage one log, run every reader command on it in a subprocess and check each outcome."""
    work = tmp_path / f"{name}-{kind}-{seed}"
    work.mkdir()
    bad = str(work / "damaged.h5")
    what = damage(sources[name], bad, kind, seed)
    before = _bytes(bad)
    argv = [sys.executable, DRIVER, bad, sources["fresh"], str(work)] + (["--heavy"] if heavy else [])
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} {what}: the commands did not finish within the {HANG_GUARD_S} s hang guard")
    assert proc.returncode == 0, f"{name} {what}: the driver died ({proc.returncode}): {proc.stderr[-2000:]}"
    results = json.loads(proc.stdout)
    for command, r in results.items():
        where = f"{name} {what}: {command}"
        assert not r["traceback"], f"{where}: traceback\n{r['stderr']}"
        assert r["exit"] in (0, 1), f"{where}: exit {r['exit']}\n{r['stderr']}"
        if r["exit"] == 1 and command in ONE_LINE_COMMANDS + ("open_log",):
            lines = [x for x in r["stderr"].strip().splitlines() if not x.startswith("note: ")]
            assert len(lines) == 1 and lines[0].startswith("Error: "), f"{where}: {r['stderr']!r}"
    assert _bytes(bad) == before, f"{name} {what}: a reader command modified the damaged log"


@pytest.mark.parametrize("name,kind,seed", cases(24, seed=14))
def test_damaged_log_every_command_ends_in_one_line(sources, tmp_path, name, kind, seed):
    """Every reader command on a damaged log exits 0 or 1 with one line, no traceback, no hang."""
    check_case(sources, tmp_path, name, kind, seed)


@pytest.mark.slow
@pytest.mark.parametrize("name,kind,seed", cases(300, seed=1400))
def test_damaged_log_corpus_slow(sources, tmp_path, name, kind, seed):
    """The large corpus: every reader command, derive and render included, on 300 damaged logs."""
    check_case(sources, tmp_path, name, kind, seed, heavy=seed % 10 == 0)
