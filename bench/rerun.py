"""How `moetape export rerun` compares with reading the same fields from the log, per layout.

Builds (once, cached in bench/out/) a synthetic log of E envs x S policy steps (default 64 x 15625 =
1M env-steps; frames_per_step=1, 3 bodies, no model: skeleton mode, ``moetape.schema.synthetic``),
plus one of another length (S x --other, default half), to show that peak RSS does not grow
with the log. Each measurement runs in a fresh subprocess, --repeat times (best time, worst RSS):

    read_s          read every field the export reads (RecordingWriter.fields()), same env selection,
                    in the export's chunks (Log.iter_chunks, chunk_steps_for)
    export_s        ``export_rerun(log, out.rrd, env=..., layout=...)``
    ratio           export_s / read_s                                           goal <= 3
    rrd_bytes       size of the .rrd
    rss_mb          peak RSS of the export subprocess (ru_maxrss)
    rerun_alone_s   Rerun alone: the export's own columns for the whole log, built beforehand (not
                    timed), sent to an .rrd file and flushed; rerun_alone_ratio = rerun_alone_s /
                    read_s, what no export of that content through Rerun's file sink goes below
for one env (--env 0, per-env layout) and for all envs in both layouts (per-env: every env under
its own entity path; per-field: one entity per field holding every env), on both logs. ``rss_flat``
compares the all-envs exports' peak RSS on the two logs (flat once both are a few chunks long).

    python bench/rerun.py [--json] [--steps S] [--envs E] [--other F] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any, Dict

from logs import OUT, cached_log  # bench/ is on sys.path: this script's own folder

_CHILD = r"""
import json, os, resource, sys, time
mode, layout, log_path, out, env = sys.argv[1:6]
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
elif mode == "alone":
    # Rerun alone: every send_columns call of the export, its Arrow columns built beforehand
    with open_log(log_path) as log:
        envs = rx.select_envs(log, env)
        rec = rx.new_recording(log)
        w = rx.writer_for(layout)(rec, log, envs)
        per = rx.chunk_steps_for(log, w.fields(), len(envs))
        sends = [w.columns(c) for c in log.iter_chunks(w.fields(), env=rx._env_selection(envs), chunk_steps=per)]
        t0 = time.perf_counter()
        rx.save_without_footer(rec, out, None)
        for s in sends:
            rec.flush()
            w.send(s)
        rec.flush()
        rec.disconnect()
    extra = {"rrd_bytes": os.path.getsize(out), "send_calls": sum(len(s) for s in sends)}
    os.remove(out)
else:
    info = rx.export_rerun(log_path, out, env=env, force=True, layout=layout)
    extra = {"rrd_bytes": info["bytes"]}
    os.remove(out)
dt = time.perf_counter() - t0
print(json.dumps(dict(extra, seconds=dt, rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)))
"""


def run_child(mode: str, layout: str, log_path: str, env: str) -> Dict[str, Any]:
    out = os.path.join(OUT, "bench.rrd")
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, layout, log_path, out, env],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def best(mode: str, layout: str, log_path: str, env: str, repeat: int) -> Dict[str, Any]:
    """Run a measurement ``repeat`` times: the shortest time, the largest peak RSS."""
    runs = [run_child(mode, layout, log_path, env) for _ in range(max(1, repeat))]
    out = dict(runs[0])
    out["seconds"] = min(r["seconds"] for r in runs)
    out["rss_mb"] = max(r["rss_mb"] for r in runs)
    return out


def measure(log_path: str, env: str, layout: str, repeat: int, read: Dict[str, Any]) -> Dict[str, Any]:
    exp = best("export", layout, log_path, env, repeat)
    alone = best("alone", layout, log_path, env, repeat)
    return {
        "read_s": round(read["seconds"], 3),
        "export_s": round(exp["seconds"], 3),
        "ratio": round(exp["seconds"] / max(read["seconds"], 1e-9), 2),
        "rerun_alone_s": round(alone["seconds"], 3),
        "rerun_alone_ratio": round(alone["seconds"] / max(read["seconds"], 1e-9), 2),
        "send_calls": alone["send_calls"],
        "bytes_read": read["bytes_read"],
        "chunk_steps": read["chunk_steps"],
        "rrd_bytes": exp["rrd_bytes"],
        "rss_mb": round(exp["rss_mb"], 1),
        "read_rss_mb": round(read["rss_mb"], 1),
    }


def measure_log(log_path: str, repeat: int) -> Dict[str, Any]:
    """One env (per-env layout), and all envs in both layouts, against the same read."""
    read_one = best("read", "per-env", log_path, "0", repeat)
    read_all = best("read", "per-env", log_path, "all", repeat)
    return {
        "one_env": measure(log_path, "0", "per-env", repeat, read_one),
        "all_envs": {
            lay: measure(log_path, "all", lay, repeat, read_all) for lay in ("per-env", "per-field")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    parser.add_argument("--steps", type=int, default=15625)
    parser.add_argument("--envs", type=int, default=64)
    parser.add_argument(
        "--other", type=float, default=0.5, help="The second log's length, a factor of --steps (4 = longer)."
    )
    parser.add_argument("--repeat", type=int, default=3, help="Runs per measurement (best time, worst RSS).")
    args = parser.parse_args()
    other_steps = max(1, int(round(args.steps * args.other)))
    full = cached_log("rerun", args.steps, args.envs)
    other = cached_log("rerun", other_steps, args.envs)
    main_log, other_log = measure_log(full, args.repeat), measure_log(other, args.repeat)
    result: Dict[str, Any] = {
        "log": {
            "envs": args.envs,
            "steps": args.steps,
            "env_steps": args.envs * args.steps,
            "frames_per_step": 1,
        },
        **main_log,
        "other_log": {"steps": other_steps, **other_log},
        "rss_flat": {
            "steps": [args.steps, other_steps],
            **{
                f"all_envs_{lay}_rss_mb": [
                    main_log["all_envs"][lay]["rss_mb"],
                    other_log["all_envs"][lay]["rss_mb"],
                ]
                for lay in ("per-env", "per-field")
            },
            "chunks": [
                -(-args.steps // main_log["all_envs"]["per-env"]["chunk_steps"]),
                -(-other_steps // other_log["all_envs"]["per-env"]["chunk_steps"]),
            ],
        },
        "goal": "export_s <= 3 x read_s; rss_mb about the same for both log lengths (each a few chunks long)",
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
