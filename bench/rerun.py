"""How `moetape export rerun` compares with reading the same fields from the log.

Builds (once, cached in bench/out/) a synthetic log of E envs x S policy steps (default 64 x 15625 =
1M env-steps; frames_per_step=1, 3 bodies, no model: skeleton mode, ``moetape.schema.synthetic``),
plus one of another length (S x --other, default a quarter), to show that peak RSS does not grow
with the log. Each measurement runs in a fresh subprocess, --repeat times (best time, worst RSS):

    read_s          read every field the export reads (RecordingWriter.fields()), same env selection,
                    in the export's chunks (Log.iter_chunks, chunk_steps_for)
    export_s        ``export_rerun(log, out.rrd, env=...)``
    ratio           export_s / read_s                                           goal <= 3
    rrd_bytes       size of the .rrd
    rss_mb          peak RSS of the export subprocess (ru_maxrss)
    rerun_floor_s   Rerun alone: as many rows as the export sends (entities x steps, same chunks and
                    timelines), each a single float64 scalar of zeros, to an .rrd; floor_ratio =
                    rerun_floor_s / read_s: what no export of that many Rerun rows can go below
for one env (--env 0) and for all envs, on both logs. ``rss_flat`` compares the all-envs export's
peak RSS on the two logs (flat once both are a few chunks long: chunk_steps below).

    python bench/rerun.py [--json] [--steps S] [--envs E] [--other F] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")

_CHILD = r"""
import json, os, resource, sys, time
mode, log_path, out, env = sys.argv[1:5]
env = None if env == "all" else int(env)
from moetape.replay import rerun_export as rx
from moetape.schema.reader import open_log
t0 = time.perf_counter()
if mode == "read":
    with open_log(log_path) as log:
        envs = rx.select_envs(log, env)
        w = rx.RecordingWriter.__new__(rx.RecordingWriter)
        w.log, w.envs = log, envs
        w.scalar_metrics = [m for m in log.metric_names if log.dataset("metrics/" + m).ndim == 2]
        fields = rx.RecordingWriter.fields(w)
        sel = rx._env_selection(envs)
        per = rx.chunk_steps_for(log, fields, len(envs))
        n = 0
        for chunk in log.iter_chunks(fields, env=sel, chunk_steps=per):
            n += sum(a.nbytes for a in chunk.data.values())
    extra = {"bytes_read": n, "chunk_steps": per}
elif mode == "floor":
    # Rerun alone: as many rows (entities x steps, same chunks) as the export sends, each one float64
    # scalar on the same two timelines; no log read, no conversion
    import numpy as np
    from moetape.replay.rerun_columns import Columns
    with open_log(log_path) as log:
        envs = rx.select_envs(log, env)
        rec = rx.new_recording(log)
        w = rx.RecordingWriter(rec, log, envs)
        one = next(log.iter_chunks(w.fields(), env=rx._env_selection(envs), chunk_steps=1))
        entities = len([s for s in w.columns(one) if not s[0].endswith("/events")])
        per = rx.chunk_steps_for(log, w.fields(), len(envs))
        n_steps = log.n_steps
    t0 = time.perf_counter()
    rx.save_without_footer(rec, out, None)
    for s in range(0, n_steps, per):
        steps = np.arange(s, min(n_steps, s + per), dtype=np.int64)
        idx = [rx.rr.TimeColumn("step", sequence=steps), rx.rr.TimeColumn("sim_time", duration=steps * 0.02)]
        cols = Columns.scalars(np.zeros((entities, len(steps))))
        rec.flush()
        for k in range(entities):
            rec.send_columns(f"e{k}", indexes=idx, columns=[cols[k]])
    rec.flush()
    rec.disconnect()
    extra = {"rrd_bytes": os.path.getsize(out), "rows": entities * n_steps}
    os.remove(out)
else:
    info = rx.export_rerun(log_path, out, env=env, force=True)
    extra = {"rrd_bytes": info["bytes"]}
    os.remove(out)
dt = time.perf_counter() - t0
print(json.dumps(dict(extra, seconds=dt, rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)))
"""


def build_log(path: str, n_steps: int, n_envs: int) -> None:
    """Write the synthetic bench log under a temporary name, then rename it into place."""
    from moetape.schema.synthetic import small_spec, synthetic_step
    from moetape.schema.writer import LogWriter

    spec = small_spec(n_envs, frames_per_step=1)
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    with LogWriter(tmp, spec, meta={"command_line": "bench/rerun.py"}) as log:
        for s in range(n_steps):
            log.append(*synthetic_step(spec, s, 0))
    os.replace(tmp, path)


def cached_log(n_steps: int, n_envs: int) -> str:
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, f"rerun_{n_envs}x{n_steps}.h5")
    if not os.path.exists(path):
        t0 = time.perf_counter()
        build_log(path, n_steps, n_envs)
        print(f"built {path} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return path


def run_child(mode: str, log_path: str, env: str) -> Dict[str, Any]:
    out = os.path.join(OUT, "bench.rrd")
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, log_path, out, env],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def best(mode: str, log_path: str, env: str, repeat: int) -> Dict[str, Any]:
    """Run a measurement ``repeat`` times: the shortest time, the largest peak RSS."""
    runs = [run_child(mode, log_path, env) for _ in range(max(1, repeat))]
    out = dict(runs[0])
    out["seconds"] = min(r["seconds"] for r in runs)
    out["rss_mb"] = max(r["rss_mb"] for r in runs)
    return out


def measure(log_path: str, env: str, repeat: int) -> Dict[str, Any]:
    read = best("read", log_path, env, repeat)
    exp = best("export", log_path, env, repeat)
    floor = best("floor", log_path, env, repeat)
    return {
        "read_s": round(read["seconds"], 3),
        "export_s": round(exp["seconds"], 3),
        "ratio": round(exp["seconds"] / max(read["seconds"], 1e-9), 2),
        "rerun_rows": floor["rows"],
        "rerun_floor_s": round(floor["seconds"], 3),
        "floor_ratio": round(floor["seconds"] / max(read["seconds"], 1e-9), 2),
        "bytes_read": read["bytes_read"],
        "chunk_steps": read["chunk_steps"],
        "rrd_bytes": exp["rrd_bytes"],
        "rss_mb": round(exp["rss_mb"], 1),
        "read_rss_mb": round(read["rss_mb"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    parser.add_argument("--steps", type=int, default=15625)
    parser.add_argument("--envs", type=int, default=64)
    parser.add_argument(
        "--other", type=float, default=0.25, help="The second log's length, a factor of --steps (4 = longer)."
    )
    parser.add_argument("--repeat", type=int, default=3, help="Runs per measurement (best time, worst RSS).")
    args = parser.parse_args()
    other_steps = max(1, int(round(args.steps * args.other)))
    full = cached_log(args.steps, args.envs)
    other = cached_log(other_steps, args.envs)
    one, both = measure(full, "0", args.repeat), measure(full, "all", args.repeat)
    o_one, o_both = measure(other, "0", args.repeat), measure(other, "all", args.repeat)
    result = {
        "log": {
            "envs": args.envs,
            "steps": args.steps,
            "env_steps": args.envs * args.steps,
            "frames_per_step": 1,
        },
        "one_env": one,
        "all_envs": both,
        "other_log": {"steps": other_steps, "one_env": o_one, "all_envs": o_both},
        "rss_flat": {
            "steps": [args.steps, other_steps],
            "all_envs_rss_mb": [both["rss_mb"], o_both["rss_mb"]],
            "chunks": [-(-args.steps // both["chunk_steps"]), -(-other_steps // o_both["chunk_steps"])],
        },
        "goal": "export_s <= 3 x read_s; rss_mb about the same for both log lengths (each a few chunks long)",
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
