"""How close `derive` (every legacy file, summary and plots; no video) runs to raw I/O of the same bytes.

Builds (once, cached in bench/out/) a 1M env-step synthetic log: 64 envs x 15625 policy steps
(and a quarter-length one, to show that the zarr export's peak RSS does not grow with the log),
frames_per_step=1, written with the schema writer and ``moetape.schema.synthetic``. Then measures:

    derive_s    ``moetape.replay.derive.derive(log, out, video=False, force=True)``
    raw_files_s read every committed steps/ and frames/ dataset with h5py, and write files of the
                same relative paths and sizes as derive's outputs (the bytes come from the log),
                small files on 4 threads as derive's zarr writer does, no fsync (derive does none):
                the same bytes in and out, raw
    ratio_raw   derive_s / raw_files_s                                      goal <= 2
    raw_s       the first baseline: read the same datasets and write as many bytes as the *log* has
                to one file, with fsync. It leaves out the derived files' extra bytes (logs.pkl and
                logs.zarr both hold the data) and logs.zarr's file count; ``ratio_raw_one_file`` =
                derive_s / raw_s is printed for comparison with earlier reports.
    zarr_file_floor_s   seconds to only create as many small files as logs.zarr has (one per row
                for the legacy (1, E) chunks of 2-D arrays), for context on slow filesystems
    rss_mb      peak RSS of a fresh subprocess per output (getrusage(RUSAGE_CHILDREN).ru_maxrss in a
                small launcher process): the streamed logs.zarr (rows policy and video), and for
                information the pickles, which are in-memory lists by nature    goal <= 300 MB for zarr
    render      ``measure_render`` below (None until the render developer fills it in)

    python bench/derive.py [--json] [--steps N] [--envs E]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, List, Optional

import h5py
import numpy as np
from logs import OUT, cached_log  # bench/ is on sys.path: this script's own folder

DERIVE_META = {"command_line": "bench/derive.py", "config": {"bench": True}}


def _settle() -> None:
    """Flush other dirty pages first, so earlier writes (and deletes) are not timed as this phase's."""
    os.sync()
    time.sleep(0.5)


def _datasets(group: h5py.Group) -> List[h5py.Dataset]:
    found: List[h5py.Dataset] = []
    group.visititems(lambda _name, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return found


def measure_raw(log_path: str) -> Dict[str, float]:
    """Read every committed dataset raw with h5py and write the same bytes to a file, fsync'ed."""
    sink = os.path.join(OUT, "raw.bin")
    _settle()
    t0 = time.perf_counter()
    total = 0
    with open(sink, "wb") as out:
        for block in _log_bytes(log_path):
            out.write(block)
            total += len(block)
        out.flush()
        os.fsync(out.fileno())
    seconds = time.perf_counter() - t0
    os.remove(sink)
    return {"raw_s": seconds, "raw_bytes": float(total)}


def _log_bytes(log_path: str) -> Iterator[memoryview]:
    """Yield the log's committed steps/ and frames/ rows as byte blocks of up to 32 MB, read with h5py."""
    with h5py.File(log_path, "r") as f:
        n_steps, n_frames = (int(x) for x in f["n_committed"][()])
        for group, n in (("steps", n_steps), ("frames", n_frames)):
            for ds in _datasets(f[group]):
                row = max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64)))
                step = max(1, (32 << 20) // row)
                for s in range(0, n, step):
                    yield memoryview(np.ascontiguousarray(ds[s : min(n, s + step)])).cast("B")


def measure_raw_files(log_path: str, files: List[Any]) -> Dict[str, float]:
    """Read the log raw and write ``files`` [(relative path, size)] with bytes taken from it, in order."""
    from concurrent.futures import ThreadPoolExecutor

    base = os.path.join(OUT, "raw-files")
    if os.path.exists(base):
        shutil.rmtree(base)
    for rel, _size in files:
        os.makedirs(os.path.dirname(os.path.join(base, rel)), exist_ok=True)
    _settle()
    t0 = time.perf_counter()
    blocks = _log_bytes(log_path)
    block, at, read = memoryview(b""), 0, 0

    def take(n: int) -> List[memoryview]:
        nonlocal block, at, read
        parts = []
        while n:
            if at == len(block):
                nxt = next(blocks, None)
                if nxt is not None:
                    read += len(nxt)
                block, at = (nxt if nxt is not None else block), 0  # past the log's end: reuse its last block
            k = min(n, len(block) - at)
            parts.append(block[at : at + k])
            at, n = at + k, n - k
        return parts

    def write(path: str, parts: List[memoryview]) -> None:
        with open(path, "wb") as out:
            for p in parts:
                out.write(p)

    lanes = [ThreadPoolExecutor(1) for _ in range(4)]  # one thread per folder, as derive's zarr writer
    folders: Dict[str, int] = {}
    pending = []
    for rel, size in files:
        parts = take(size)
        if size < (1 << 20):
            lane = folders.setdefault(os.path.dirname(rel), len(folders) % len(lanes))
            pending.append(lanes[lane].submit(write, os.path.join(base, rel), parts))
        else:
            write(os.path.join(base, rel), parts)
        if len(pending) > 4096:
            for fut in pending:
                fut.result()
            pending = []
    for fut in pending:
        fut.result()
    for ex in lanes:
        ex.shutdown()
    for rest in blocks:  # every log byte is read, as derive reads them
        read += len(rest)
    seconds = time.perf_counter() - t0
    shutil.rmtree(base)  # before the next phase's _settle()
    return {"raw_files_s": seconds, "raw_files_read_bytes": float(read)}


def measure_file_floor(n_files: int, lanes: int = 4) -> float:
    """Seconds to create ``n_files`` small files over ``lanes`` folders and threads: logs.zarr's legacy
    (1, E) chunks of 2-D arrays need one file per row, and on a slow filesystem this floor dominates."""
    from concurrent.futures import ThreadPoolExecutor

    base = os.path.join(OUT, "floor")
    if os.path.exists(base):
        shutil.rmtree(base)

    def make(lane: int) -> None:
        folder = os.path.join(base, str(lane))
        os.makedirs(folder)
        for i in range(lane, n_files, lanes):
            fd = os.open(os.path.join(folder, f"{i}.0"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, b"x" * 256)
            os.close(fd)

    _settle()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(lanes) as ex:
        list(ex.map(make, range(lanes)))
    return time.perf_counter() - t0


def measure_derive(log_path: str) -> Dict[str, Any]:
    from moetape.replay.derive import derive

    out = os.path.join(OUT, "derived")
    if os.path.exists(out):  # an earlier run's: deleted before _settle(), like the baseline's files
        shutil.rmtree(out)
    _settle()
    t0 = time.perf_counter()
    manifest = derive(log_path, out, video=False, force=True)
    seconds = time.perf_counter() - t0
    files = []
    for root, _dirs, names in os.walk(out):
        for name in names:
            full = os.path.join(root, name)
            files.append((os.path.relpath(full, out), os.path.getsize(full)))
    return {
        "files": sorted(files),
        "derive_s": seconds,
        "derived_bytes": sum(f["bytes"] for f in manifest["files"]),
        "derived_files": [f["name"] for f in manifest["files"]],
        "skipped": [s["name"] for s in manifest["skipped"]],
        "zarr_files": sum(len(files) for _, _, files in os.walk(os.path.join(out, "logs.zarr"))),
    }


_EXPORT = (
    "import sys; from moetape.replay import export as e; "
    "getattr(e, sys.argv[1])(sys.argv[2], sys.argv[3], force=True, **eval(sys.argv[4]))"
)
# A small launcher: its RUSAGE_CHILDREN peak is the export child's alone (a child forked from this
# big process would start with this process's high-water mark).
_LAUNCH = (
    "import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
)


def peak_rss_mb(function: str, log_path: str, out: str, options: str = "{}") -> float:
    """Run one export in a fresh subprocess; return its peak RSS in MB (RUSAGE_CHILDREN, Linux KiB)."""
    cmd = [sys.executable, "-c", _LAUNCH, sys.executable, "-c", _EXPORT, function, log_path, out, options]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{function} failed with exit status {proc.returncode}")
    if os.path.isdir(out):
        shutil.rmtree(out)
    elif os.path.exists(out):
        os.remove(out)
    return int(proc.stdout.split()[-1]) / 1024.0


def measure_rss(log_path: str, zarr_only: bool = False) -> Dict[str, float]:
    o = os.path.join(OUT, "rss")
    zarr = {
        "zarr_policy": peak_rss_mb("export_zarr", log_path, o + ".zarr", "{'rows': 'policy'}"),
        "zarr_video": peak_rss_mb("export_zarr", log_path, o + ".zarr", "{'rows': 'video'}"),
    }
    if zarr_only:
        return zarr
    return {
        **zarr,
        "weight_stats": peak_rss_mb("export_weight_stats", log_path, o + ".pkl"),
        "results_in_memory": peak_rss_mb("export_results", log_path, o + ".pkl"),
        "pkl_in_memory": peak_rss_mb("export_pkl", log_path, o + ".pkl"),
    }


def measure_render(log_path: str) -> Optional[Dict[str, Any]]:
    """Render fps of our FrameRenderer vs a bare mujoco.Renderer loop, in this run (bench/render.py).

    The 1M env-step log is synthetic and has no robot model, so the render comparison uses the
    demo recording when ``runs/demo/log.h5`` exists (``make demo``), else bench/render.py's own
    small log with a model. None when mujoco is not installed.
    """
    import importlib.util

    if importlib.util.find_spec("mujoco") is None:  # not imported here: the renderer picks MUJOCO_GL first
        return None
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from render import measure_render_fps, write_synthetic_log

    demo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runs", "demo", "log.h5")
    if not os.path.exists(demo):
        demo = os.path.join(OUT, "render_bench_log.h5")
        if not os.path.exists(demo):
            write_synthetic_log(demo)
    return measure_render_fps(demo, n_frames=200)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument(
        "--steps", type=int, default=15625, help="policy steps (default 15625 = 1M env-steps / 64)"
    )
    ap.add_argument("--envs", type=int, default=64)
    args = ap.parse_args()
    log_path = cached_log("derive", args.steps, args.envs, DERIVE_META)
    raw = measure_raw(log_path)
    # derive and its baseline alternate twice and the faster of each counts: creating logs.zarr's
    # tens of thousands of files takes 1-11 s on this VM's disk depending on its recent history.
    der = measure_derive(log_path)
    files = der.pop("files")
    raw_runs = [measure_raw_files(log_path, files)["raw_files_s"]]
    der_runs = [der["derive_s"], measure_derive(log_path)["derive_s"]]
    raw_runs.append(measure_raw_files(log_path, files)["raw_files_s"])
    der.update(derive_s=min(der_runs), derive_s_runs=der_runs)
    raw_files = {"raw_files_s": min(raw_runs), "raw_files_s_runs": raw_runs}
    floor = measure_file_floor(der["zarr_files"])
    rss = measure_rss(log_path)
    short = max(1, args.steps // 4)
    rss_short = measure_rss(cached_log("derive", short, args.envs, DERIVE_META), zarr_only=True)
    for junk in ("derived", "floor"):
        shutil.rmtree(os.path.join(OUT, junk), ignore_errors=True)
    result: Dict[str, Any] = {
        "env_steps": args.steps * args.envs,
        "n_envs": args.envs,
        "log_bytes": os.path.getsize(log_path),
        **raw,
        **der,
        **raw_files,
        "ratio_raw": der["derive_s"] / raw_files["raw_files_s"],
        "ratio_raw_one_file": der["derive_s"] / raw["raw_s"],
        "ratio_goal": 2.0,
        "zarr_file_floor_s": floor,
        "rss_mb": rss,
        f"rss_mb_at_{short * args.envs}_env_steps": rss_short,
        "rss_goal_mb": 300.0,
        "render": measure_render(log_path),
    }
    if not args.json:
        print(
            "derive {:.2f} s vs raw read + write of the same files {:.2f} s: ratio {:.2f} (goal <= 2); "
            "vs one raw file of the log's size {:.2f} s: {:.2f}".format(
                der["derive_s"],
                raw_files["raw_files_s"],
                result["ratio_raw"],
                raw["raw_s"],
                result["ratio_raw_one_file"],
            )
        )
        print(f"just creating logs.zarr's {der['zarr_files']} files (4 threads): {floor:.2f} s")
        print("peak RSS (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items()))
        print(
            f"peak RSS (MB) at {short * args.envs} env-steps: "
            + ", ".join(f"{k} {v:.0f}" for k, v in rss_short.items())
        )
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
