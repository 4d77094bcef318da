"""Train the demo MoE policy (QM-MoE variant B) with rsl_rl's PPO on the bundled MuJoCo EE-tracking task.

Writes, into --out-dir: demo_moe.pt (the rsl_rl checkpoint moetape record loads), demo_moe.json
(how it was made: script, seed, iterations, reward weights, final training figures and the figures
of the demo run) and training_curves.png. Needs the ``train`` extra: pip install 'moetape[train]'.
Deterministic for a seed on the CPU (one torch thread); uses a GPU for the networks when present.

Example: python scripts/train_demo_policy.py --out-dir record/assets/demo_policy --force
"""

from __future__ import annotations

import argparse
import os
import sys
import time

DEFAULT_OUT = os.path.join("record", "assets", "demo_policy")


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default=DEFAULT_OUT, help=f"folder for the outputs (default {DEFAULT_OUT})")
    p.add_argument("--iterations", type=int, default=1000, help="PPO iterations (default 1000)")
    p.add_argument("--n-envs", type=int, default=128, help="parallel MuJoCo envs (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    p.add_argument(
        "--demo-steps", type=int, default=500, help="steps of the closing demo evaluation (default 500)"
    )
    p.add_argument("--every", type=int, default=10, help="print a progress line every N iterations")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs in --out-dir")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    try:
        import torch

        from moetape.record import train_moe
    except ImportError as e:
        print(
            f"train_demo_policy.py needs rsl-rl-lib ({e.name} missing): pip install --no-deps 'rsl-rl-lib==2.3.3' && pip install 'moetape[train]'",
            file=sys.stderr,
        )
        return 1
    names = {"ckpt": "demo_moe.pt", "meta": "demo_moe.json", "png": "training_curves.png"}
    paths = {k: os.path.join(args.out_dir, v) for k, v in names.items()}
    existing = [p for p in paths.values() if os.path.exists(p)]
    if existing and not args.force:
        print(
            f"{existing[0]}: exists; pass --force to overwrite the training outputs in {args.out_dir}",
            file=sys.stderr,
        )
        return 1
    if args.iterations < 1 or args.n_envs < 1:
        print(
            f"--iterations and --n-envs must be >= 1, got {args.iterations} and {args.n_envs}",
            file=sys.stderr,
        )
        return 1
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    torch.set_num_threads(1)  # determinism on the CPU; the physics runs in its own threads
    cfg = train_moe.TrainConfig(seed=args.seed, iterations=args.iterations, n_envs=args.n_envs)
    start = time.perf_counter()

    def progress(it, row):
        if args.quiet or (it % args.every and it != cfg.iterations - 1):
            return
        figs = "  ".join(f"{k} {row[k]:.4f}" for k in train_moe.CURVE_KEYS)
        print(
            f"[{it + 1}/{cfg.iterations} {time.perf_counter() - start:.0f}s] {figs}",
            file=sys.stderr,
            flush=True,
        )

    result = train_moe.train(cfg, device=device, progress=progress)
    os.makedirs(args.out_dir, exist_ok=True)
    script = "scripts/train_demo_policy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = train_moe.metadata(cfg, result, script=script.strip(), device=device)
    ckpt = train_moe.checkpoint_dict(
        result["policy"], cfg.iterations, {"moetape_demo": True, "trained": True, **meta}
    )
    train_moe.save_checkpoint(ckpt, paths["ckpt"])
    meta["demo_figures"] = train_moe.evaluate_demo(paths["ckpt"], n_steps=args.demo_steps)
    train_moe.write_json(paths["meta"], meta)
    tmp_png = paths["png"] + f".tmp{os.getpid()}.png"
    train_moe.save_curves_png(result["curves"], tmp_png, title=f"demo MoE, PPO, seed {cfg.seed}")
    os.replace(tmp_png, paths["png"])
    if not args.quiet:
        print(f"demo figures: {meta['demo_figures']}", file=sys.stderr)
    print(paths["ckpt"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
