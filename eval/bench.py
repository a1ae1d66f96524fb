"""Benchmarks, run side by side in one process and named by machine.

    python -m eval.bench render [--json PATH]     # simulator frames per second, single process

Further subcommands (``plan``) arrive with the planner.
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="nav_come benchmarks")
    p.add_argument("what", choices=["render"])
    p.add_argument("--json", help="write the rows here too")
    p.add_argument("--frames", type=int, default=300)
    args = p.parse_args(argv)
    rows = bench_render(frames=args.frames)
    print(f"machine: {machine()}  (MUJOCO_GL={os.environ.get('MUJOCO_GL')})")
    print(f"{'world':<8} {'size':>5} {'frames/s':>9}")
    for r in rows:
        print(f"{r['world']:<8} {r['image_size']:>5} {r['fps']:>9.1f}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"machine": machine(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
