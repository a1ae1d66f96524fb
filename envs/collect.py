"""Collect a RECON-format dataset in the simulator.

    python -m envs.collect --out DIR --world outdoor|maze --n-traj N --traj-len T --seed S --workers W
                           [--wall-push P]

Output (other tools read it):
- ``DIR/<traj_name>/{0.jpg …, traj_data.pkl}``, 4 Hz, positions in metres; the pickle also
  holds ``commanded`` (T, 3) and ``contact`` (T,) (:mod:`nav_come.core.data.recon`);
  ``--wall-push P`` makes the driver push into a wall and back off with probability P per
  frame (``envs.driver``), so that contact is in the data;
- ``DIR/splits/{train,val,test}/traj_names.txt``; train, val and test come from
  disjoint sets of world seeds, so test worlds are never seen in training;
- ``DIR/splits/{val,test}/navigation_eval.json``: ``[{"traj", "t"}]``, goal at t+8,
  at least 4 context frames up to t;
- ``DIR/splits/{val,test}/memory_eval.json``: ``[{"traj", "t", "context", "horizon"}]``
  where every future frame t+1..t+horizon revisits a place (0.5 m, 30°) first
  seen more than 32 frames before t;
- ``DIR/dataset.json``: world family, seeds, image size, rate, spacing, revisit shares.

World seeds are drawn below 1,000,000; the gymnasium env's default episodes use
seeds from 1,000,000 up, so they are held out from every collected dataset.
Each trajectory is written atomically and is a pure function of (seed, index):
an interrupted run resumes where it stopped and produces the same dataset.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from envs.worlds import CAMERA_FOVY, CAMERA_HEIGHT, FAMILIES
from nav_come.core.data.actions import revisit_mask
from nav_come.core.data.recon import read_trajectory, write_split, write_trajectory
from nav_come.core.io import atomic_write_text

SPLIT_FRACTIONS = {"test": 0.1, "val": 0.1}
NAV_GOAL = 8  # goal offset of navigation_eval samples (2 s at 4 Hz)
NAV_CONTEXT = 4
MEMORY_HORIZON = 8
MEMORY_GAP = 32
MEMORY_MIN_CONTEXT = 50


@dataclass(frozen=True)
class Job:
    name: str
    world: str
    world_seed: int
    driver_seed: int
    traj_len: int
    image_size: int
    wall_push: float = 0.0


def plan_jobs(world: str, n_traj: int, traj_len: int, seed: int, image_size: int,
              traj_per_world: int, wall_push: float = 0.0) -> tuple[list[Job], dict[str, list[int]]]:
    """Every trajectory to collect, and the world seeds of each split (disjoint)."""
    rng = np.random.default_rng(seed)
    n_worlds = math.ceil(n_traj / traj_per_world)
    seeds = [int(s) for s in rng.choice(1_000_000, size=n_worlds, replace=False)]
    n_test = max(1, round(SPLIT_FRACTIONS["test"] * n_worlds)) if n_worlds > 1 else 0
    n_val = max(1, round(SPLIT_FRACTIONS["val"] * n_worlds)) if n_worlds > 2 else 0
    splits = {"test": seeds[:n_test], "val": seeds[n_test : n_test + n_val], "train": seeds[n_test + n_val :]}
    jobs = []
    for k in range(n_traj):
        ws = seeds[k // traj_per_world]
        jobs.append(Job(f"{world}_{ws:06d}_{k % traj_per_world:02d}", world, ws,
                        int(np.random.default_rng([seed, k]).integers(2**31)), traj_len, image_size, wall_push))
    return jobs, splits


def run_job(job: Job, out: str) -> tuple[str, int]:
    """Drive one trajectory and write it atomically. Returns (name, collisions)."""
    from envs.driver import Driver
    from envs.occupancy import OccupancyMap
    from envs.sim import Simulator

    sim = Simulator((job.world, job.world_seed), job.image_size)
    try:
        driver = Driver(sim, OccupancyMap(sim.world), np.random.default_rng(job.driver_seed), wall_push=job.wall_push)
        frames, poses, collisions = driver.run(job.traj_len)
    finally:
        sim.close()
    write_trajectory(Path(out) / job.name, frames, poses[:, :2], poses[:, 2], commanded=driver.commanded,
                     contact=driver.contact)
    return job.name, collisions


def _run_job_star(args):
    return run_job(*args)


def _is_done(folder: Path) -> bool:
    return (folder / "traj_data.pkl").is_file()  # written last inside an atomic rename


def navigation_index(trajs: dict, rng: np.random.Generator, per_traj: int) -> list[dict]:
    """(traj, t) samples with NAV_CONTEXT frames up to t and the goal at t + NAV_GOAL."""
    out = []
    for name, (position, _) in trajs.items():
        ts = np.arange(NAV_CONTEXT - 1, len(position) - NAV_GOAL)
        for t in sorted(rng.choice(ts, size=min(per_traj, len(ts)), replace=False)):
            out.append({"traj": name, "t": int(t)})
    return out


def memory_index(trajs: dict, per_traj: int) -> list[dict]:
    """Long-context samples whose whole future revisits places seen more than MEMORY_GAP frames before t."""
    out = []
    for name, (position, yaw) in trajs.items():
        T, picked = len(position), []
        for t in range(MEMORY_MIN_CONTEXT - 1, T - MEMORY_HORIZON):
            if picked and t - picked[-1] < 2 * MEMORY_HORIZON:
                continue
            old = slice(0, t - MEMORY_GAP + 1)
            fut = slice(t + 1, t + 1 + MEMORY_HORIZON)
            d = np.linalg.norm(position[fut, None] - position[None, old], axis=-1)  # (H, t-gap)
            a = np.abs((yaw[fut, None] - yaw[None, old] + np.pi) % (2 * np.pi) - np.pi)
            if ((d < 0.5) & (a < math.radians(30))).any(1).all():
                picked.append(t)
        # spread the picks over the trajectory: later ones have longer contexts
        keep = np.unique(np.linspace(0, len(picked) - 1, min(per_traj, len(picked))).round().astype(int))
        out += [{"traj": name, "t": picked[i], "context": picked[i] + 1, "horizon": MEMORY_HORIZON}
                for i in (keep if picked else [])]
    return out


def write_indices(out: Path, splits: dict, names_by_split: dict, args) -> dict:
    """Split files, evaluation indices and dataset.json. Returns the dataset summary."""
    shares, contact = {}, {}
    for split, names in names_by_split.items():
        write_split(out / "splits" / split / "traj_names.txt", names)
        trajs, touching = {}, []
        for n in names:
            tr = read_trajectory(out / n, load_images=False)
            trajs[n] = (tr.position, tr.yaw)
            if tr.contact is not None:
                touching.append(tr.contact)
        contact[split] = float(np.mean(np.concatenate(touching))) if touching else 0.0
        masks = [revisit_mask(p, y) for p, y in trajs.values()]
        shares[split] = float(np.mean(np.concatenate(masks))) if masks else 0.0
        if split in ("val", "test"):
            rng = np.random.default_rng([args.seed, 7])
            nav = navigation_index(trajs, rng, args.nav_per_traj)
            mem = memory_index(trajs, args.memory_per_traj)
            atomic_write_text(out / "splits" / split / "navigation_eval.json", json.dumps(nav, indent=0))
            atomic_write_text(out / "splits" / split / "memory_eval.json", json.dumps(mem, indent=0))
    summary = {
        "name": "nav_come_sim", "world": args.world, "seed": args.seed, "world_seeds": splits,
        "n_traj": args.n_traj, "traj_len": args.traj_len, "n_frames": args.n_traj * args.traj_len,
        "image_size": args.image_size, "rate_hz": 4.0, "metric_waypoint_spacing": 0.25,
        "camera": {"height_m": CAMERA_HEIGHT, "fov_deg": CAMERA_FOVY},
        "revisit_share": shares, "revisit_rule": "within 0.5 m and 30 deg of a frame more than 16 frames earlier",
        "wall_push": args.wall_push, "contact_share": contact,
    }
    atomic_write_text(out / "dataset.json", json.dumps(summary, indent=2))
    return summary


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--world", choices=FAMILIES, default="maze")
    p.add_argument("--n-traj", type=int, default=100)
    p.add_argument("--traj-len", type=int, default=300, help="frames per trajectory (4 Hz)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--traj-per-world", type=int, default=4)
    p.add_argument("--nav-per-traj", type=int, default=10)
    p.add_argument("--memory-per-traj", type=int, default=3)
    p.add_argument("--wall-push", type=float, default=0.0,
                   help="probability per frame that the driver pushes into a wall and backs off (0: never)")
    args = p.parse_args(argv)
    if args.n_traj < 1 or args.traj_len < NAV_CONTEXT + NAV_GOAL or args.workers < 1 or args.image_size < 8:
        p.error("need --n-traj >= 1, --traj-len >= 12, --workers >= 1 and --image-size >= 8")
    if not 0.0 <= args.wall_push <= 1.0:
        p.error(f"--wall-push is a probability per frame; give a value in [0, 1], not {args.wall_push}")
    return args


SETTINGS = "collect.json"  # the settings a folder was collected with; a rerun must repeat them
SETTING_KEYS = ("world", "n_traj", "traj_len", "seed", "image_size", "traj_per_world", "nav_per_traj",
                "memory_per_traj", "wall_push")  # fmt: skip
SETTING_DEFAULTS = {"wall_push": 0.0}  # settings added later: what a folder without them was collected with


def claim(out: Path, args) -> None:
    """Make ``out`` the folder of a collection with these settings, or refuse (ValueError, one line):
    an unwritable folder, or one collected with other settings (never mix the two)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create --out {out} ({e.strerror}); choose a writable folder") from None
    if not os.access(out, os.W_OK):
        raise ValueError(f"--out {out} is not writable; choose a writable folder")
    settings = {k: getattr(args, k) for k in SETTING_KEYS}
    path = out / SETTINGS
    if not path.is_file() and (out / "dataset.json").is_file():  # collected before collect.json existed
        stored = json.loads((out / "dataset.json").read_text())
        known = {k: stored[k] for k in SETTING_KEYS if k in stored}
        atomic_write_text(path, json.dumps({**settings, **SETTING_DEFAULTS, **known}))
    if path.is_file():
        stored = json.loads(path.read_text())
        stored = {**SETTING_DEFAULTS, **stored}
        differ = [f"--{k.replace('_', '-')} {stored.get(k)}" for k in SETTING_KEYS if stored.get(k) != settings[k]]
        if differ:
            raise ValueError(f"{out} was collected with {', '.join(differ)}; rerun with those settings to resume, "
                             "or choose a new --out")  # fmt: skip
    elif any(out.iterdir()):
        raise ValueError(f"--out {out} is not empty and holds no {SETTINGS}; choose a new or empty folder")
    else:
        atomic_write_text(path, json.dumps(settings, indent=2))


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds the worker pool, which terminates its workers


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    try:
        claim(out, args)
    except ValueError as e:
        print(f"collect: error: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    for stale in out.glob(".*.tmp-*"):  # left by an interrupted run; never read as data
        shutil.rmtree(stale, ignore_errors=True)
    jobs, splits = plan_jobs(args.world, args.n_traj, args.traj_len, args.seed, args.image_size, args.traj_per_world,
                             args.wall_push)
    todo = [j for j in jobs if not _is_done(out / j.name)]
    start = time.time()
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"collect {args.world}", unit="traj")
    if args.workers == 1:
        for j in todo:
            run_job(j, str(out))
            bar.update()
    else:
        with mp.get_context("spawn").Pool(args.workers) as pool:
            for _ in pool.imap_unordered(_run_job_star, [(j, str(out)) for j in todo]):
                bar.update()
    bar.close()
    seed_split = {s: k for k, seeds in splits.items() for s in seeds}
    names = {k: [j.name for j in jobs if seed_split[j.world_seed] == k] for k in ("train", "val", "test")}
    summary = write_indices(out, splits, names, args)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{summary['n_frames']} frames in {len(jobs)} trajectories ({len(todo)} new) in {time.time() - start:.0f} s, "
          f"{size / 1e6:.1f} MB; revisit share {summary['revisit_share']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
