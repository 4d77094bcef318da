"""A stats sweep on local dask workers against a plain loop of single-log `stats` in one process.

Builds (once, cached in bench/out/) one synthetic log of ``--env-steps`` env-steps (``--envs`` envs,
frames_per_step=1) and a half-length one, and links each ``--logs`` times under other names (the sweep opens
and reads every one; identical content does not matter to it). Then measures:

    loop_s          ``analysis.summary(path)`` for every log, in this process, one after the other
    sweep_1_s       ``sweep.run_stats`` on a local cluster of 1 worker process (cluster start excluded;
                    ``start_1_s`` is the start)                   goal: sweep_1_s / loop_s <= 1
    sweep_2_s       the same with 2 worker processes              goal: speedup_2 = sweep_1_s / sweep_2_s >= 1.7
    rss_mb          peak RSS (ru_maxrss) of each worker process after the sweep, per log length: flat in
                    log length means the stream is bounded             goal <= 300 MB
    rows_equal      the 2-worker table's figures equal the loop's summaries, value for value

    python bench/sweep.py [--json] [--logs 32] [--env-steps 100000] [--envs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from typing import Any, Dict, List

from logs import OUT, cached_log  # bench/ is on sys.path: this script's own folder


def copies(src: str, n: int, tag: str) -> List[str]:
    folder = os.path.join(OUT, f"sweep_{tag}")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        p = os.path.join(folder, f"log{i:03d}.h5")
        if not os.path.exists(p) or os.path.getsize(p) != os.path.getsize(src):
            if os.path.exists(p):
                os.remove(p)
            try:
                os.link(src, p)  # the same bytes under another name: no disk space for 32 copies
            except OSError:
                shutil.copyfile(src, p)
        paths.append(p)
    return paths


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_sweep(paths: List[str], workers: int) -> Dict[str, Any]:
    """Time run_stats on a fresh local cluster; return wall times, rows and each worker's peak RSS."""
    from moetape.replay import sweep

    t0 = time.perf_counter()
    with sweep.open_client(workers=workers) as client:
        client.wait_for_workers(workers)
        t1 = time.perf_counter()
        rows = sweep.run_stats(client, sweep.plan_stats(paths))
        t2 = time.perf_counter()
        rss = sorted(client.run(_peak_rss_mb).values())
    return {"start_s": t1 - t0, "wall_s": t2 - t1, "rows": rows, "rss_mb": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--logs", type=int, default=32)
    ap.add_argument("--env-steps", type=int, default=100_000)
    ap.add_argument("--envs", type=int, default=4)
    args = ap.parse_args()
    from moetape.replay.analysis import summary

    n_steps = args.env_steps // args.envs
    full = copies(cached_log("sweep", n_steps, args.envs), args.logs, f"{args.envs}x{n_steps}")
    half = copies(cached_log("sweep", n_steps // 2, args.envs), 4, f"{args.envs}x{n_steps // 2}")

    t0 = time.perf_counter()
    loop = [summary(p) for p in full]
    loop_s = time.perf_counter() - t0
    one = run_sweep(full, 1)
    two = run_sweep(full, 2)
    short = run_sweep(half, 2)
    expected = [e["mean"] for d in loop for e in d["experts"]]
    got = [r["mean"] for r in two["rows"]]
    switch = [d["switching"]["rate_hz"] for d in loop for _ in d["experts"]]
    result = {
        "logs": args.logs,
        "env_steps_per_log": n_steps * args.envs,
        "envs": args.envs,
        "cpu_count": os.cpu_count(),
        "loop_s": round(loop_s, 3),
        "sweep_1_s": round(one["wall_s"], 3),
        "sweep_2_s": round(two["wall_s"], 3),
        "start_1_s": round(one["start_s"], 3),
        "start_2_s": round(two["start_s"], 3),
        "ratio_1_vs_loop": round(one["wall_s"] / loop_s, 3),
        "speedup_2": round(one["wall_s"] / two["wall_s"], 3),
        "rss_mb": {
            f"{n_steps * args.envs}_env_steps": [round(x, 1) for x in two["rss_mb"]],
            f"{(n_steps // 2) * args.envs}_env_steps": [round(x, 1) for x in short["rss_mb"]],
        },
        "rows_equal": got == expected and [r["switch_rate_hz"] for r in two["rows"]] == switch,
    }
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for k, v in result.items():
            print(f"{k:20s} {v}")


if __name__ == "__main__":
    main()
