"""Benchmark the log writer against the physical limit and the usual alternatives, in one run.

Payload per env-step: obs float32[109], action float32[18], gate float32[2], entropy and the
rest of a real moetape step (reward, done, episode, EE and target poses), plus one policy-rate
frame of simulator state (root pose and velocities, 18 joint positions/velocities/torques, one
body, 8 future targets). Every variant writes the same bytes; each runs in its own subprocess so
its peak RSS (ru_maxrss) is its own.

Variants:
  moetape     LogWriter: batched, background thread, fletcher32, flush per batch, fsync at the end
  raw         the same number of bytes written sequentially in 8 MB blocks, then fsync
  per_step    h5py datasets resized and written once per policy step (hand-written loggers)
  legacy      Python lists of arrays, pickled at the end (the legacy scripts)
  read_gate / read_all   stream the gate / every field of the moetape log via Log.iter_chunks

Usage: python bench/write.py [--env-steps 1000000] [--envs 64,4096] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out")
PER_STEP_CAP = 100_000  # env-steps for the slow per-step-resize variant (its rate is what is compared)


def spec_for(n_envs):
    from moetape.schema.writer import LogSpec

    return LogSpec(
        n_envs=n_envs,
        obs_dim=109,
        action_dim=18,
        joint_names=["j%d" % i for i in range(18)],
        body_names=["trunk"],
        frames_per_step=1,
        backend="bench",
    )


def step_arrays(spec, seed=0):
    """One policy step of every field (random, fixed per run: the writer's cost does not depend on values)."""
    from moetape.schema.synthetic import synthetic_step

    return synthetic_step(spec, 0, seed)


def flat_fields(spec):
    step, frames = step_arrays(spec)
    out = {k: np.asarray(v) for k, v in step.items()}
    out.update({"frames/" + k: np.asarray(v) for k, v in frames.items()})
    return out


def payload_bytes(spec):
    return sum(v.nbytes for v in flat_fields(spec).values())


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run_moetape(path, n_envs, n_steps):
    from moetape.schema.writer import LogWriter

    spec = spec_for(n_envs)
    step, frames = step_arrays(spec)
    t = time.perf_counter()
    with LogWriter(path, spec) as log:
        for _ in range(n_steps):
            log.append(step, frames)
    fsync_path(path)
    return time.perf_counter() - t


def run_raw(path, n_bytes):
    block = np.random.default_rng(0).integers(0, 255, 8 * 1024 * 1024, dtype=np.uint8).tobytes()
    t = time.perf_counter()
    with open(path, "wb") as f:
        left = n_bytes
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t


def run_per_step(path, n_envs, n_steps):
    import h5py

    spec = spec_for(n_envs)
    fields = flat_fields(spec)
    t = time.perf_counter()
    with h5py.File(path, "w") as f:
        ds = {
            k: f.create_dataset(
                k, shape=(0,) + v.shape, maxshape=(None,) + v.shape, dtype=v.dtype, chunks=True
            )
            for k, v in fields.items()
        }
        for s in range(n_steps):
            for k, v in fields.items():
                ds[k].resize(s + 1, axis=0)
                ds[k][s] = v
    fsync_path(path)
    return time.perf_counter() - t


def run_legacy(path, n_envs, n_steps):
    spec = spec_for(n_envs)
    fields = flat_fields(spec)
    t = time.perf_counter()
    logs = {k: [] for k in fields}
    for _ in range(n_steps):
        for k, v in fields.items():
            logs[k].append(v.copy())
    with open(path, "wb") as f:
        pickle.dump(logs, f, protocol=4)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t


def run_read(path, which):
    from moetape.schema.reader import open_log

    t = time.perf_counter()
    n = 0
    with open_log(path) as log:
        fields = ["gate"] if which == "gate" else log.fields()
        for chunk in log.iter_chunks(fields):
            n += sum(a.nbytes for a in chunk.data.values())
    return time.perf_counter() - t, n


def child(args):
    """Run one variant in this process and print its JSON result."""
    n_steps = args.env_steps // args.envs
    if args.variant == "moetape":
        secs = run_moetape(args.path, args.envs, n_steps)
    elif args.variant == "raw":
        secs = run_raw(args.path, args.bytes)
    elif args.variant == "per_step":
        secs = run_per_step(args.path, args.envs, n_steps)
    elif args.variant == "legacy":
        secs = run_legacy(args.path, args.envs, n_steps)
    else:
        secs, nbytes = run_read(args.path, args.variant.split("_", 1)[1])
        print(json.dumps({"seconds": secs, "bytes_read": nbytes, "peak_rss_mb": peak_rss_mb()}))
        return
    print(
        json.dumps({"seconds": secs, "file_bytes": os.path.getsize(args.path), "peak_rss_mb": peak_rss_mb()})
    )


def peak_rss_mb():
    """Peak resident set size of this process, MB (Linux reports ru_maxrss in KB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def spawn(variant, path, envs, env_steps, nbytes=0):
    """Run a variant in a fresh subprocess; return its result with the child's peak RSS."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--path",
        path,
        "--envs",
        str(envs),
        "--env-steps",
        str(env_steps),
        "--bytes",
        str(nbytes),
    ]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_run(runs):
    """The run with the median time (lower median for an even count), with every time listed."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    out = dict(ordered[(len(ordered) - 1) // 2])
    out["all_seconds"] = [round(r["seconds"], 3) for r in runs]
    return out


def bench_envs(envs, env_steps, repeat=3):
    from moetape.schema.writer import LogSpec  # noqa: F401 - fail early if moetape is missing

    n_steps = env_steps // envs
    real_env_steps = n_steps * envs
    per_env_step = payload_bytes(spec_for(envs)) / envs
    total = int(per_env_step * real_env_steps)
    os.makedirs(OUT, exist_ok=True)
    paths = {v: os.path.join(OUT, f"bench_{envs}_{v}") for v in ("moetape", "raw", "per_step", "legacy")}
    for p in paths.values():
        if os.path.exists(p):
            os.remove(p)
    res = {
        "envs": envs,
        "env_steps": real_env_steps,
        "payload_bytes_per_env_step": per_env_step,
        "payload_mb": round(total / 1e6, 1),
    }
    runs = {}
    # raw and moetape alternate `repeat` times and keep the median time: the disk here is noisy.
    raws, moes = [], []
    for i in range(repeat):
        raws.append(spawn("raw", paths["raw"], envs, env_steps, total))
        os.remove(paths["raw"])
        if i:
            os.remove(paths["moetape"])
        moes.append(spawn("moetape", paths["moetape"], envs, env_steps))
    runs["raw"] = median_run(raws)
    runs["moetape"] = median_run(moes)
    runs["read_gate"] = spawn("read_gate", paths["moetape"], envs, env_steps)
    runs["read_all"] = spawn("read_all", paths["moetape"], envs, env_steps)
    half = spawn("moetape", paths["moetape"] + ".quarter", envs, env_steps // 4)
    os.remove(paths["moetape"] + ".quarter")
    os.remove(paths["moetape"])
    per_step_env_steps = min(env_steps, max(PER_STEP_CAP, envs))
    runs["per_step"] = spawn("per_step", paths["per_step"], envs, per_step_env_steps)
    os.remove(paths["per_step"])
    runs["legacy"] = spawn("legacy", paths["legacy"], envs, env_steps)
    os.remove(paths["legacy"])
    for name in ("raw", "moetape", "legacy"):
        r = runs[name]
        r["mb_per_s"] = round(total / 1e6 / r["seconds"], 1)
        r["env_steps_per_s"] = round(real_env_steps / r["seconds"])
    ps = runs["per_step"]
    ps_env_steps = (per_step_env_steps // envs) * envs
    ps["env_steps"] = ps_env_steps
    ps["mb_per_s"] = round(per_env_step * ps_env_steps / 1e6 / ps["seconds"], 1)
    ps["env_steps_per_s"] = round(ps_env_steps / ps["seconds"])
    for name in ("read_gate", "read_all"):
        r = runs[name]
        r["mb_per_s"] = round(r["bytes_read"] / 1e6 / r["seconds"], 1)
    res["runs"] = runs
    res["moetape_rss_quarter_run_mb"] = half["peak_rss_mb"]
    res["ratio_raw"] = round(runs["moetape"]["mb_per_s"] / runs["raw"]["mb_per_s"], 3)
    res["ratio_per_step"] = round(runs["moetape"]["mb_per_s"] / ps["mb_per_s"], 1)
    res["ratio_legacy"] = round(runs["moetape"]["mb_per_s"] / runs["legacy"]["mb_per_s"], 2)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env-steps", type=int, default=1_000_000)
    ap.add_argument("--envs", default="64,4096")
    ap.add_argument("--repeat", type=int, default=3, help="alternating raw/moetape runs; the median is kept")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--bytes", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.variant = args.child
        args.envs = int(args.envs)
        child(args)
        return
    results = [bench_envs(int(e), args.env_steps, args.repeat) for e in args.envs.split(",")]
    for r in results:
        print(
            "{} envs, {} env-steps ({} MB):".format(r["envs"], r["env_steps"], r["payload_mb"]),
            file=sys.stderr,
        )
        for name, run in r["runs"].items():
            print(
                "  {:10s} {:8.1f} MB/s {:>12} env-steps/s  peak RSS {} MB".format(
                    name, run["mb_per_s"], run.get("env_steps_per_s", "-"), run["peak_rss_mb"]
                ),
                file=sys.stderr,
            )
        print(
            "  moetape / raw = {ratio_raw}  (goal >= 0.7); moetape / per-step resize = {ratio_per_step} "
            "(goal >= 10); writer RSS at 1/4 run {moetape_rss_quarter_run_mb} MB".format(**r),
            file=sys.stderr,
        )
    summary = {"ratio_raw": min(r["ratio_raw"] for r in results), "results": results}
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
