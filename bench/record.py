"""Benchmark the recorder: the same rollout with and without the event log, and the simulator's speed.

One run of ``moetape record``'s default length (1000 policy steps), 64 envs, the demo checkpoint and
trajectory, MuJoCo backend, substep frames (the default), the log written as ``moetape record``
writes it (LogWriter with its writer process, the backend writing frames into its batch rows:
LogWriter.frame_rows). Each round
runs the rollout without and with the log back to back, in alternating order; the timed part ends
when every step is committed. ``overhead`` = the median over rounds of (time with the log / time
without): these machines' speed drifts by +-10% over seconds, which a pair of adjacent runs mostly
cancels (``overhead_fastest``, fastest with / fastest without, is printed too). Goal <= 1.03.
``sim_ratio`` = backend physics substeps/s / bare ``mj_step`` substeps/s, the median over paired
10-step rounds, both sides stepping from the same states, with one frame row per step (goal >= 0.8,
from bench/sim_speed.py); ``sim_ratio_by_frames`` adds the same with --frames substep's four rows
(over a fifth of the steps).

Usage: python bench/record.py [--envs 64] [--steps 1000] [--rounds 9] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def rollout(policy, backend, n_steps, writer=None, substep=True):
    """Run n_steps policy steps; append every step to ``writer`` when given. Returns seconds."""
    from moetape.record.loop import step_row
    from moetape.schema.writer import gate_entropy

    obs = backend.reset()
    t = time.perf_counter()
    for _ in range(n_steps):
        action, gate = policy.policy_step(obs)
        frames_out = writer.frame_rows() if writer is not None else None  # as moetape record does
        res = backend.step(action, substep_frames=substep, frames_out=frames_out)
        if writer is not None:
            step = step_row(obs, action, gate, gate_entropy(gate), res, backend, ())
            writer.append(step, res.frames)
        obs = res.obs
    if writer is not None:
        writer.flush()
    return time.perf_counter() - t


def measure_overhead(n_envs=64, n_steps=1000, rounds=9, frames="substep"):
    import torch

    from moetape.record.demo import make_demo_checkpoint, make_demo_trajectory
    from moetape.record.loop import log_spec
    from moetape.record.mujoco_backend import MujocoBackend
    from moetape.record.policy import load_policy
    from moetape.record.trajectory import load_trajectories
    from moetape.schema.writer import LogWriter

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        ckpt = make_demo_checkpoint(os.path.join(d, "m.pt"))
        traj = load_trajectories(make_demo_trajectory(os.path.join(d, "t.pkl")))
        policy = load_policy(ckpt)
        backend = MujocoBackend(traj, n_envs=n_envs)
        info = backend.info
        spec = log_spec(info, policy.expert_names, substep=frames == "substep")
        substep = frames == "substep"
        with_log, without = [], []
        for r in range(rounds):
            if r % 2:
                without.append(rollout(policy, backend, n_steps, substep=substep))
            with LogWriter(os.path.join(d, f"log{r}.h5"), spec, model_xml=info.model_xml, process=True) as w:
                with_log.append(rollout(policy, backend, n_steps, w, substep=substep))
            os.remove(os.path.join(d, f"log{r}.h5"))
            if not r % 2:
                without.append(rollout(policy, backend, n_steps, substep=substep))
        backend.close()
    return {
        "n_envs": n_envs,
        "steps": n_steps,
        "seconds_without_log": without,
        "seconds_with_log": with_log,
        "overhead": round(statistics.median(w / wo for w, wo in zip(with_log, without)), 4),
        "overhead_fastest": round(min(with_log) / min(without), 4),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1000, help="policy steps per run (moetape record's default)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument(
        "--frames",
        choices=["substep", "policy"],
        default=None,
        help="one frame mode only (default: both; 'overhead' is the default mode's, substep)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from sim_speed import measure_sim_ratio

    modes = [args.frames] if args.frames else ["substep", "policy"]
    runs = {m: measure_overhead(args.envs, args.steps, args.rounds, m) for m in modes}
    res = dict(runs[modes[0]])
    res["overhead_by_frames"] = {m: r["overhead"] for m, r in runs.items()}
    sim = measure_sim_ratio(args.envs, args.steps)
    sim_substep = measure_sim_ratio(args.envs, args.steps // 5, substep_frames=True)
    res.update(
        {
            "sim_ratio": round(sim["sim_ratio"], 3),
            "env_steps_per_s": sim["env_steps_per_s"],
            "bare_mj_step_per_s": sim["bare_mj_step_per_s"],
            "sim_ratio_by_frames": {
                "policy": round(sim["sim_ratio"], 3),
                "substep": round(sim_substep["sim_ratio"], 3),
            },
        }
    )
    for mode, r in runs.items():
        print(
            "record, {} envs x {} steps, --frames {}: overhead {:.3f} (median of {} paired rounds; goal <= 1.03); "
            "fastest with log {:.3f} s / without {:.3f} s = {:.3f}".format(
                args.envs,
                args.steps,
                mode,
                r["overhead"],
                args.rounds,
                min(r["seconds_with_log"]),
                min(r["seconds_without_log"]),
                r["overhead_fastest"],
            ),
            file=sys.stderr,
        )
    print(
        "sim: {:.0f} substeps/s vs bare mj_step {:.0f}/s, sim_ratio {:.3f} (goal >= 0.8); "
        "with substep frames {:.3f}".format(
            res["env_steps_per_s"],
            res["bare_mj_step_per_s"],
            res["sim_ratio"],
            res["sim_ratio_by_frames"]["substep"],
        ),
        file=sys.stderr,
    )
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
