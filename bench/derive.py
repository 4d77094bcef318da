"""How close `derive` (every legacy file, summary and plots; no video) runs to raw I/O of the same bytes.

Builds (once, cached in bench/out/) a 1M env-step synthetic log: 64 envs x 15625 policy steps,
frames_per_step=1, written with the schema writer and ``moetape.schema.synthetic``. Then measures:

    raw_s       read every committed steps/ and frames/ dataset with h5py, and write the same number
                of bytes to a file in bench/out with fsync
    derive_s    ``moetape.replay.derive.derive(log, out, video=False, force=True)``
    ratio_raw   derive_s / raw_s                                            goal <= 2
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
from typing import Any, Dict, List, Optional

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out")


def build_log(path: str, n_steps: int, n_envs: int) -> None:
    """Write the synthetic bench log (cached: kept when it exists with the same size)."""
    from moetape.schema.synthetic import small_spec, synthetic_step
    from moetape.schema.writer import LogWriter

    spec = small_spec(n_envs, frames_per_step=1)
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    with LogWriter(tmp, spec, meta={"command_line": "bench/derive.py", "config": {"bench": True}}) as log:
        for s in range(n_steps):
            log.append(*synthetic_step(spec, s, 0))
    os.replace(tmp, path)


def cached_log(n_steps: int, n_envs: int) -> str:
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, f"derive_{n_envs}x{n_steps}.h5")
    if not os.path.exists(path):
        t0 = time.perf_counter()
        build_log(path, n_steps, n_envs)
        print(f"built {path} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return path


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
    with h5py.File(log_path, "r") as f, open(sink, "wb") as out:
        n_steps, n_frames = (int(x) for x in f["n_committed"][()])
        for group, n in (("steps", n_steps), ("frames", n_frames)):
            datasets = _datasets(f[group])
            for ds in datasets:
                step = max(
                    1, (32 << 20) // max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64)))
                )
                for s in range(0, n, step):
                    block = ds[s : min(n, s + step)]
                    out.write(block.tobytes())
                    total += block.nbytes
        out.flush()
        os.fsync(out.fileno())
    seconds = time.perf_counter() - t0
    os.remove(sink)
    return {"raw_s": seconds, "raw_bytes": float(total)}


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
    if os.path.exists(out):  # deleted at the end: deleting ~60k files slows the filesystem for a while
        os.replace(out, os.path.join(OUT, "trash-derived"))
    _settle()
    t0 = time.perf_counter()
    manifest = derive(log_path, out, video=False, force=True)
    seconds = time.perf_counter() - t0
    return {
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


def measure_rss(log_path: str) -> Dict[str, float]:
    o = os.path.join(OUT, "rss")
    return {
        "zarr_policy": peak_rss_mb("export_zarr", log_path, o + ".zarr", "{'rows': 'policy'}"),
        "zarr_video": peak_rss_mb("export_zarr", log_path, o + ".zarr", "{'rows': 'video'}"),
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
    log_path = cached_log(args.steps, args.envs)
    raw = measure_raw(log_path)
    der = measure_derive(log_path)
    floor = measure_file_floor(der["zarr_files"])
    rss = measure_rss(log_path)
    for junk in ("trash-derived", "floor"):
        shutil.rmtree(os.path.join(OUT, junk), ignore_errors=True)
    result: Dict[str, Any] = {
        "env_steps": args.steps * args.envs,
        "n_envs": args.envs,
        "log_bytes": os.path.getsize(log_path),
        **raw,
        **der,
        "ratio_raw": der["derive_s"] / raw["raw_s"],
        "ratio_goal": 2.0,
        "zarr_file_floor_s": floor,
        "rss_mb": rss,
        "rss_goal_mb": 300.0,
        "render": measure_render(log_path),
    }
    if not args.json:
        print(
            "derive {:.2f} s vs raw read+write {:.2f} s: ratio {:.2f} (goal <= 2)".format(
                der["derive_s"], raw["raw_s"], result["ratio_raw"]
            )
        )
        print(f"just creating logs.zarr's {der['zarr_files']} files (4 threads): {floor:.2f} s")
        print("peak RSS (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items()))
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
