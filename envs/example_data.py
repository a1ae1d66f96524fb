"""Small example data: a tiny dataset for tests, and the README's example images.

    python -m envs.example_data --images examples/        # context_0..3.png + goal.png
    python -m envs.example_data --images examples/outdoor --world outdoor   # the outdoor example
    python -m envs.example_data --dataset /tmp/tiny      # a few short trajectories, seconds to make

The example images come from a world with seed 1,000,000 (a maze, or an outdoor
world with ``--world outdoor``), one of the env's held-out seeds that no collected dataset uses: four context frames at
t-3..t and the goal frame 8 steps (2 s) later, the NWM planning setting. Beside them,
``episode/`` holds the drive up to t as a RECON-format trajectory (frames 0..t and their poses):
the history that ``plan.py --history`` gives a memory method such as CoME.
The true motion to the goal is written next to them in ``example.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from envs import collect
from nav_come.core.data import write_trajectory
from nav_come.core.data.actions import gt_waypoints
from nav_come.core.io import atomic_write_bytes, atomic_write_text

EXAMPLE_SEED = 1_000_000
EXAMPLE_T = {"maze": 60, "outdoor": 45}  # a step whose goal lies 8 steps ahead along a curve


def make_tiny_dataset(out, world: str = "maze", n_traj: int = 4, traj_len: int = 64, seed: int = 0,
                      image_size: int = 64) -> Path:
    """A few short trajectories in the collect layout (one worker; about a second per trajectory)."""
    collect.main(["--out", str(out), "--world", world, "--n-traj", str(n_traj), "--traj-len", str(traj_len),
                  "--seed", str(seed), "--workers", "1", "--traj-per-world", "1", "--image-size", str(image_size)])
    return Path(out)


def make_example_images(out, image_size: int = 64, world: str = "maze") -> Path:
    """Write context_0..3.png, goal.png, example.json and the history ``episode/`` under ``out``."""
    import cv2

    from envs.driver import Driver
    from envs.occupancy import OccupancyMap
    from envs.sim import Simulator

    sim = Simulator((world, EXAMPLE_SEED), image_size)
    try:
        driver = Driver(sim, OccupancyMap(sim.world), np.random.default_rng(0), mode="patrol")
        frames, poses, _ = driver.run(EXAMPLE_T[world] + 9)
    finally:
        sim.close()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t = EXAMPLE_T[world]
    names = {f"context_{k}.png": frames[t - 3 + k] for k in range(4)} | {"goal.png": frames[t + 8]}
    for name, img in names.items():
        ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        atomic_write_bytes(out / name, buf.tobytes())
    write_trajectory(out / "episode", frames[: t + 1], poses[: t + 1, :2], poses[: t + 1, 2])
    wp = gt_waypoints(poses[:, :2], poses[:, 2], t, 8, spacing=0.25)
    made_by = f"python -m envs.example_data --images {out}" + (f" --world {world}" if world != "maze" else "")
    meta = {"world": world, "world_seed": EXAMPLE_SEED, "t": t, "goal_offset": 8,
            "metric_waypoint_spacing": 0.25, "true_waypoints": np.round(wp, 4).tolist(), "made_by": made_by}
    atomic_write_text(out / "example.json", json.dumps(meta, indent=2))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write example images and/or a tiny dataset.")
    p.add_argument("--images", help="folder for the README's example context and goal images")
    p.add_argument("--dataset", help="folder for a tiny dataset")
    p.add_argument("--world", default="maze", choices=("maze", "outdoor"))
    args = p.parse_args(argv)
    if not (args.images or args.dataset):
        p.error("give --images DIR and/or --dataset DIR")
    if args.images:
        print(f"example images in {make_example_images(args.images, world=args.world)}")
    if args.dataset:
        print(f"tiny dataset in {make_tiny_dataset(args.dataset, args.world)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
