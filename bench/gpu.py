"""Benchmark the MuJoCo Warp backend: bare loop, backend without the log, and ``moetape record``'s loop.

Per env count, after one warm-up step of each kind (kernels compiled or loaded from warp's cache):

  bare      MuJoCo Warp physics (4 substeps of ``mujoco_warp.step``) + the MoE policy on the device,
            fed the device observation tensor; no task maths, no host copy, no log
  backend   ``moetape record``'s loop without the log: the policy on the device observation tensor,
            its action tensor -> WarpBackend.launch_step (task maths on the device), the log's fields
            copied to the host once per step, step t's copy waited for after step t + 1 is launched
  record    the same loop with the log: LogWriter (writer process), frames written into its batch
            rows (frames_out), every step committed before the clock stops

``sim_ratio`` = backend env-steps/s / bare env-steps/s; ``overhead`` = record time / backend time.
``log_mb_per_s`` = bytes the log received (uncompressed rows) / record time; ``raw_write_mb_per_s``
= the same bytes written in 8 MB blocks then fsync, in the same folder, this run. Peak host RSS
(ru_maxrss) and, on CUDA, peak device memory in use (cudaMemGetInfo, every allocator) are given.
Goals on a GPU at 4096 envs with policy-rate frames: overhead <= 1.05, sim_ratio >= 0.9.

Usage: python bench/gpu.py [--device cuda:0|cpu] [--envs 1024,4096,8192] [--steps 200]
                           [--frames policy|substep] [--dir FOLDER] [--json]
With --device cpu (warp's CPU device; the default when no CUDA device is visible) the defaults are
small: --envs 4,16 --steps 20. There the loop is the same but nothing overlaps (torch and warp run
synchronously on the CPU): the figures check the path, the overlap shows only on CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import sys
import tempfile
import time


def make_inputs(d):
    """A random variant-B MoE checkpoint (109-128-64-32-18 experts, 109-128-64-2 gate) and a trajectory."""
    import numpy as np
    import torch

    gen = torch.Generator().manual_seed(0)

    def mlp(sizes, prefix, scale):
        out = {}
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            out[f"{prefix}{2 * i}.weight"] = scale * torch.randn(n_out, n_in, generator=gen)
            out[f"{prefix}{2 * i}.bias"] = scale * torch.randn(n_out, generator=gen)
        return out

    sd = mlp((109, 128, 64, 2), "obs_moe.mlp.", 0.1)
    for name in ("base", "arm"):
        sd[f"ac_{name}.std"] = torch.ones(18)
        sd.update(mlp((109, 128, 64, 32, 18), f"ac_{name}.actor.", 0.02))
        sd.update(mlp((109, 128, 64, 32, 1), f"ac_{name}.critic.", 0.02))
    ckpt = os.path.join(d, "moe.pt")
    torch.save({"model_state_dict": sd, "optimizer_state_dict": {}, "iter": 0, "infos": None}, ckpt)
    t = np.arange(1600) * 0.005
    eps = [
        {
            "ee_pos": np.stack([0.3 + 0.1 * np.cos(t + k), 0.1 * np.sin(t), 0.5 + 0 * t], -1),
            "ee_axis_angle": np.stack([0 * t, np.pi / 2 + 0.2 * np.sin(t), 0 * t], -1),
        }
        for k in range(4)
    ]
    traj = os.path.join(d, "traj.pkl")
    with open(traj, "wb") as f:
        pickle.dump(eps, f, protocol=3)
    return ckpt, traj


class DeviceMemory:
    """Peak device memory in use (CUDA: total - free, every allocator); None on the CPU device."""

    def __init__(self, device):
        self.device = device
        self.peak = None

    def sample(self):
        if self.device.startswith("cuda"):
            import torch

            free, total = torch.cuda.mem_get_info(torch.device(self.device))
            self.peak = max(self.peak or 0, total - free)


def sync(device):
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(torch.device(device))


def bare_loop(backend, policy, n_steps, mem):
    """Physics + policy on the device: seconds for n_steps."""
    import mujoco_warp as mjw
    import torch
    import warp as wp

    from moetape.record.warp_task import Scope

    module = policy.module
    obs = backend.obs_tensor
    with torch.no_grad(), Scope(backend.wp_device, backend._stream):
        sync(backend.wp_device)
        t = time.perf_counter()
        for _ in range(n_steps):
            gate = module.get_moe_weights(obs)
            action = module.blend(obs, gate)
            backend.s.ctrl[:, backend.c.act] = (backend.c.default_pos32 + 0.25 * action).float()
            for _ in range(backend.info.decimation):
                mjw.step(backend.m, backend.d)
        sync(backend.wp_device)
        wp.synchronize()
        seconds = time.perf_counter() - t
    mem.sample()
    return seconds


def loop(backend, policy, n_steps, substep, writer=None):
    """moetape record's loop (loop._device_loop, without display): the policy on the device
    observation tensor, its action tensor back to the backend, step t appended after step t + 1 is
    launched. Seconds for n_steps, all committed (with a writer)."""
    from moetape.record.loop import step_row
    from moetape.schema.writer import gate_entropy

    def append(pending, obs):
        res = pending.wait(writer.frame_rows() if writer is not None else None)
        if writer is not None:
            gate = res.kept["gate"]
            step = step_row(obs, res.kept["action"], gate, gate_entropy(gate), res, backend, ())
            writer.append(step, res.frames)
        return res.obs

    obs = backend.reset()
    t = time.perf_counter()
    pending = None
    for _ in range(n_steps):
        action, gate = policy.policy_step_tensor(backend.obs_tensor)
        launched = backend.launch_step(action, substep_frames=substep, keep={"action": action, "gate": gate})
        if pending is not None:
            obs = append(pending, obs)
        pending = launched
    append(pending, obs)
    if writer is not None:
        writer.flush()
    return time.perf_counter() - t


def raw_write_mb_per_s(folder, n_bytes):
    """MB/s of writing n_bytes in 8 MB blocks, then fsync, in ``folder`` (bench/write.py's baseline)."""
    from write import run_raw  # bench/ is on sys.path: this script's own folder

    path = os.path.join(folder, "raw.bin")
    seconds = run_raw(path, n_bytes)
    os.remove(path)
    return n_bytes / 1e6 / seconds


def measure(n_envs, n_steps, device, frames, folder, ckpt, traj_path):
    import numpy as np

    from moetape.record.loop import log_spec
    from moetape.record.policy import load_policy
    from moetape.record.trajectory import load_trajectories
    from moetape.record.warp_backend import WarpBackend
    from moetape.schema.writer import LogWriter

    substep = frames == "substep"
    mem = DeviceMemory(device)
    traj = load_trajectories(traj_path)
    policy = load_policy(ckpt, device=device)
    backend = WarpBackend(traj, n_envs=n_envs, device=device)
    try:
        info = backend.info
        spec = log_spec(info, policy.expert_names, substep=substep)
        loop(backend, policy, 1, substep)  # warm-up: kernels loaded, caches touched
        bare_loop(backend, policy, 1, mem)
        bare = bare_loop(backend, policy, n_steps, mem)
        plain = loop(backend, policy, n_steps, substep)
        mem.sample()
        path = os.path.join(folder, f"gpu_bench_{n_envs}.h5")
        with LogWriter(path, spec, model_xml=info.model_xml, process=True) as w:
            with_log = loop(backend, policy, n_steps, substep, w)
        mem.sample()
        from moetape.schema import layout

        fps = spec.frames_per_step
        step_bytes = sum(
            int(np.prod(s)) * np.dtype(d).itemsize * (fps if layout.stream_of(p) else 1)
            for p, (s, d) in spec.datasets().items()
        )
        file_bytes = os.path.getsize(path)
        os.remove(path)
        log_bytes = step_bytes * n_steps
        env_steps = n_envs * n_steps
        return {
            "n_envs": n_envs,
            "steps": n_steps,
            "frames": frames,
            "bare_env_steps_per_s": round(env_steps / bare, 1),
            "backend_env_steps_per_s": round(env_steps / plain, 1),
            "record_env_steps_per_s": round(env_steps / with_log, 1),
            "sim_ratio": round(bare / plain, 4),
            "overhead": round(with_log / plain, 4),
            "log_bytes_per_step": step_bytes,
            "log_file_bytes": file_bytes,
            "log_mb_per_s": round(log_bytes / 1e6 / with_log, 2),
            "raw_write_mb_per_s": round(raw_write_mb_per_s(folder, max(log_bytes, 64 << 20)), 1),
            "peak_device_mem_mb": None if mem.peak is None else round(mem.peak / 1e6, 1),
            "peak_host_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        }
    finally:
        backend.close()


def default_device():
    import warp as wp

    wp.config.log_level = wp.LOG_ERROR
    wp.init()
    return "cuda:0" if wp.get_cuda_device_count() > 0 else "cpu"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cuda:N or cpu [cuda:0 when warp sees one, else cpu]")
    ap.add_argument("--envs", default=None, help="comma-separated env counts [1024,4096,8192; cpu: 4,16]")
    ap.add_argument("--steps", type=int, default=None, help="policy steps per measurement [200; cpu: 20]")
    ap.add_argument("--frames", choices=("policy", "substep"), default="policy")
    ap.add_argument("--dir", default=None, help="folder for the logs (the disk measured) [a temporary one]")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = args.device or default_device()
    cpu = device == "cpu"
    envs = [int(e) for e in (args.envs or ("4,16" if cpu else "1024,4096,8192")).split(",")]
    steps = args.steps or (20 if cpu else 200)
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        ckpt, traj = make_inputs(d)
        results = [measure(e, steps, device, args.frames, d, ckpt, traj) for e in envs]
    import torch
    import warp as wp

    out = {
        "device": device,
        "device_name": torch.cuda.get_device_name(torch.device(device)) if not cpu else "warp cpu",
        "warp": wp.__version__,
        "frames": args.frames,
        "results": results,
    }
    if args.json:
        print(json.dumps(out))
        return
    print(f"device {out['device']} ({out['device_name']}), frames {args.frames}")
    for r in results:
        print(
            "{n_envs:>6} envs: bare {bare_env_steps_per_s:>10.0f} env-steps/s, backend {backend_env_steps_per_s:>10.0f}, "
            "record {record_env_steps_per_s:>10.0f}; sim_ratio {sim_ratio:.3f}, overhead {overhead:.3f}; log "
            "{log_mb_per_s:.1f} MB/s vs raw {raw_write_mb_per_s:.0f} MB/s; host RSS {peak_host_rss_mb} MB, "
            "device {peak_device_mem_mb} MB".format(**r)
        )


if __name__ == "__main__":
    sys.exit(main())
