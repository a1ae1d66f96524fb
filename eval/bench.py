"""Benchmarks, run side by side in one process and named by machine.

    python -m eval.bench render [--json PATH]     # simulator frames per second, single process
    python -m eval.bench model [--ckpt DIR]       # world-model training step and sampling speed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from nav_come.io import atomic_write_text


def machine() -> str:
    """A one-line description of this machine: CPU model, cores, and GPU if any."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores{gpu}"


def bench_render(sizes=(64, 128), frames: int = 300, seed: int = 0) -> list[dict]:
    """Frames per second of driving + rendering, one process, for each family and image size."""
    from envs.sim import Simulator

    rows = []
    for family in ("maze", "outdoor"):
        for size in sizes:
            sim = Simulator((family, seed), size)
            rng = np.random.default_rng(seed)
            sim.render()  # warm-up: GL context and textures
            start = time.perf_counter()
            for _ in range(frames):
                sim.step(rng.uniform(0.3, 1.0), rng.uniform(-1, 1))
                sim.render()
            fps = frames / (time.perf_counter() - start)
            sim.close()
            rows.append({"world": family, "image_size": size, "fps": round(fps, 1)})
    return rows


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench_model(ckpt, batch_train: int = 32, batch_sample: int = 120, steps: int = 5,
                repeats: int = 3) -> list[dict]:
    """Seconds per training step (batch 32) and frames/s of one-step predictions, bf16 and fp32 side by side."""
    import torch

    from nav_come.dit import dit_training_loss
    from nav_come.world_model import WorldModel, autocast

    wm = WorldModel.from_pretrained(ckpt)
    dit, (c, h, w), C = wm.dit, wm.latent_shape, wm.context
    g = torch.Generator().manual_seed(0)
    batch = {"context": torch.randn(batch_train, C, c, h, w, generator=g), "target": torch.randn(batch_train, c, h, w),
             "action": torch.randn(batch_train, 3), "shift": torch.ones(batch_train, dtype=torch.long)}
    opt = torch.optim.AdamW(dit.parameters(), lr=1e-6)
    size = wm.ae.config.image_size
    ctx, actions = torch.rand(1, C, 3, size, size), torch.randn(batch_sample, 3) * 0.3
    rows = []
    for bf16 in (True, False):
        dit.requires_grad_(True).train()

        def train_step(bf16=bf16):
            with autocast(torch.device("cpu"), bf16):
                loss = dit_training_loss(dit, batch, g)
            opt.zero_grad()
            loss.backward()
            opt.step()

        s_step = _median_seconds(train_step, repeats)
        dit.requires_grad_(False).eval()
        wm.bf16 = bf16
        s_pred = _median_seconds(lambda: wm.predict(ctx, actions, generator=g, steps=steps), repeats)
        rows.append({"bf16": bf16, "train_s_per_step": round(s_step, 3), "train_batch": batch_train,
                     "predict_frames_per_s": round(batch_sample / s_pred, 1), "predict_batch": batch_sample,
                     "sampler_steps": steps})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="nav_come benchmarks")
    p.add_argument("what", choices=["render", "model"])
    p.add_argument("--json", help="write the rows here too")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--ckpt", default="checkpoints/maze", help="world model folder for `model`")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}  (MUJOCO_GL={os.environ.get('MUJOCO_GL')}, threads {args.threads or 'default'})")
    if args.what == "render":
        rows = bench_render(frames=args.frames)
        print(f"{'world':<8} {'size':>5} {'frames/s':>9}")
        for r in rows:
            print(f"{r['world']:<8} {r['image_size']:>5} {r['fps']:>9.1f}")
    else:
        rows = bench_model(args.ckpt)
        print(f"{'bf16':<6} {'train s/step (B=32)':>20} {'predict frames/s (B=120)':>25}")
        for r in rows:
            print(f"{str(r['bf16']):<6} {r['train_s_per_step']:>20.3f} {r['predict_frames_per_s']:>25.1f}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"machine": machine(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
