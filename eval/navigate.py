"""Closed-loop image-goal navigation in held-out simulator worlds.

    python eval/navigate.py [--methods GNM NoMaD NWM] [--episodes N] [--seed S] [--worlds test|val] [--world maze]
                            [--replan-every K] [--json out.json] [--gif-dir DIR] [--first-episode K] [--resume DIR]

Each method drives the robot of ``nav_come/ImageNav-v0`` by receding-horizon
control: every ``--replan-every`` steps it plans 8 waypoints from the last 4
frames and the goal image, and a QP tracks them, step by step, as (v, w)
(planners/mpc.py). Episodes are drawn from held-out worlds that no training
dataset contains: ``--worlds test`` (the env's default seeds, 1,000,000 …
1,000,099) for results, ``--worlds val`` (2,000,000 … 2,000,099) for choosing
settings.
Half of the episodes are *revisits*: before the episode the robot is driven
from the goal to the start, so the goal was seen earlier in the episode (the
frames of that drive are what a memory-carrying method can use); the others
start cold and need exploration.

Reported per method: success rate (within 0.5 m of the goal), on all, revisit
and non-revisit episodes, SPL (success weighted by shortest-path length over path
driven), collisions per episode and seconds per decision (per plan).
``--gif-dir`` saves rollout GIFs (camera | goal | map).

Episode k (from 0) has seed ``--seed`` + k, which draws its world, start and
goal, and is a revisit when k is odd, so
``--first-episode K --episodes N`` runs episodes K … K+N-1 of the same list:
processes can split the episodes between them. ``--resume DIR`` keeps each
method's result on each episode in ``DIR/<method>/<k>.json`` as it is done and
reuses it, so an interrupted run resumes, and a run over all the episodes
after the slices are done only gathers them into the table (``--kept-only``: the
table of the episodes done so far, running nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

import envs  # noqa: F401  (registers the env)
from eval.ate_rpe import METHOD_NAMES, check_resume, cost_terms_protocol, table_labels
from eval.perfect import TrueViewPlanner
from nav_come.core.checkpoint import CheckpointError
from nav_come.core.data import data_config
from nav_come.core.io import atomic_write_text
from nav_come.core.layout import checkpoints_fingerprint, pick_checkpoint
from nav_come.core.precision import resolve
from nav_come.core.train_loop import check_device
from planners.config import add_plan_args, plan_config_from_args
from planners.methods import MethodUnavailable, load_method
from planners.mpc import MPC, TrackingController

WORLD_SEEDS = {"test": range(1_000_000, 1_000_100), "val": range(2_000_000, 2_000_100)}
REPLAN_EVERY = 8  # steps between plans: chosen for the world-model planners on val worlds (docs/results.md)


def revisit_drive(env, start: np.ndarray, goal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drive from the goal to the start along the planned path; returns the frames and poses seen."""
    from envs.driver import Driver

    driver = Driver(env.sim, env.nav, np.random.default_rng(0), mode="shuttle")
    driver.route = [goal[:2], start[:2]]
    env.sim.set_pose(goal)
    frames, poses, _ = driver.run(int(2 + 4 * np.linalg.norm(goal[:2] - start[:2]) / env.robot.spacing))
    return frames, poses


def run_episode(env, mpc: MPC, seed: int, revisit: bool, max_steps: int, record: bool) -> dict:
    obs, info = env.reset(seed=seed)
    start, goal = info["pose"], env.goal_pose
    geodesic = info["distance_to_goal"]
    seen = revisit_drive(env, start, goal) if revisit else None
    obs, info = env.reset(seed=seed, options={"world_seed": info["world_seed"], "start": start, "goal": goal})
    mpc.reset(obs["rgb"], info["pose"], seen)  # memory-carrying planners take what was seen before
    gen = torch.Generator().manual_seed(seed)
    path, collisions, seconds, frames = 0.0, 0, [], []
    for k in range(max_steps):
        t0 = time.perf_counter()
        (v, w), plan = mpc.act(obs["rgb"], obs["goal"], gen, pose=info["pose"], first=k == 0)
        if plan is not None:  # a decision; the steps in between track it
            seconds.append(time.perf_counter() - t0)
        before = info["pose"][:2]
        obs, _, terminated, truncated, info = env.step(np.array([v, w], np.float32))
        path += float(np.linalg.norm(info["pose"][:2] - before))
        collisions += int(info["collision"])
        if record:
            frames.append((np.concatenate([obs["rgb"], obs["goal"]], 1), env.render()))
        if terminated or truncated:
            break
    success = bool(info["is_success"])
    spl = success * geodesic / max(path, geodesic, 1e-9)
    return {"success": success, "spl": spl, "collisions": collisions, "s_per_decision": float(np.mean(seconds)),
            "decisions": len(seconds), "steps": k + 1, "path_m": path, "geodesic_m": float(geodesic),
            "revisit": revisit, "frames": frames}


def summarise(method: str, eps: list[dict]) -> dict:
    """One table row from a method's episodes: means, and success on revisits and the rest (NaN if none)."""
    def mean(key, keep=lambda e: True):
        values = [float(e[key]) for e in eps if keep(e)]
        return float(np.mean(values)) if values else float("nan")

    return {"method": method, "episodes": len(eps), "success": mean("success"),
            "revisit_success": mean("success", lambda e: e["revisit"]),
            "nonrevisit_success": mean("success", lambda e: not e["revisit"]), "spl": mean("spl"),
            "collisions": mean("collisions"), "s_per_decision": mean("s_per_decision")}


def save_gif(path: Path, frames: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """frames: (camera | goal image, top-down map) per step."""
    import cv2
    import imageio.v2 as imageio

    h = frames[0][0].shape[0] * 2
    tiles = [np.concatenate([cv2.resize(view, (view.shape[1] * 2, h), interpolation=cv2.INTER_NEAREST),
                             cv2.resize(top, (h, h), interpolation=cv2.INTER_AREA)], 1) for view, top in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, tiles, duration=250, loop=0)  # pillow plugin: milliseconds per frame


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python eval/navigate.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=["GNM", "NoMaD", "NWM", "CoME"])
    p.add_argument("--ckpt", type=Path, help="checkpoint folder (default: checkpoints/<world>)")
    p.add_argument("--world", default="maze", choices=["maze", "outdoor"])
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--first-episode", type=int, default=0, help="run episodes K … K+episodes-1 (see above)")
    p.add_argument("--resume", type=Path, metavar="DIR", help="keep each episode's result in DIR and reuse it")
    p.add_argument("--kept-only", action="store_true",
                   help="run nothing: the table of the episodes kept in --resume so far (a long run's progress)")
    p.add_argument("--image-size", type=int, default=64, help="camera resolution; must match the models")
    p.add_argument("--max-steps", type=int, default=80)
    p.add_argument("--seed", type=int, default=0, help="episode seeds are seed, seed+1, …")
    p.add_argument("--worlds", default="test", choices=sorted(WORLD_SEEDS),
                   help="held-out worlds: test for results, val for choosing settings")
    p.add_argument("--replan-every", type=int, default=REPLAN_EVERY, metavar="K",
                   help="plan every K steps and track the plan in between (chosen on val worlds)")
    p.add_argument("--device", default="cpu")
    add_plan_args(p)
    p.add_argument("--true-views", action="store_true",
                   help="world-model methods score the views the simulator renders at their candidates' waypoints "
                        "instead of imagined ones: a perfect world model (eval/perfect.py)")
    p.add_argument("--qp", default="cvxpy", choices=["cvxpy", "numpy"],
                   help="solver of the tracking QP (numpy: the same QP without cvxpy, planners/mpc.py)")
    p.add_argument("--json", type=Path)
    p.add_argument("--gif-dir", type=Path)
    p.add_argument("--gifs", type=int, default=2, help="episodes per method saved as GIFs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.ckpt = pick_checkpoint(args.ckpt, world=args.world)
    try:
        if min(args.episodes, args.max_steps, args.replan_every) < 1 or min(args.first_episode, args.gifs) < 0:
            raise ValueError(f"--episodes, --max-steps and --replan-every must be >= 1, --first-episode and --gifs "
                             f">= 0; got {args.episodes}, {args.max_steps}, {args.replan_every}, {args.first_episode}, "
                             f"{args.gifs}")  # fmt: skip
        if args.kept_only and args.resume is None:
            raise ValueError("--kept-only reads the episodes kept in --resume DIR; give --resume")
        args.methods = table_labels(args.methods)
        args.device = check_device(args.device, indexed=True)
        config = plan_config_from_args(args, data_config("nav_come_sim"))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    env = gym.make(envs.ENV_ID, world=args.world, max_steps=args.max_steps, image_size=args.image_size,
                   world_seeds=WORLD_SEEDS[args.worlds], render_mode="rgb_array").unwrapped
    progress = cost_terms_protocol(config, args.ckpt)
    protocol = {**progress, "world": args.world, "max_steps": args.max_steps, "seed": args.seed, "worlds": args.worlds,
                "replan_every": args.replan_every, "image_size": args.image_size, "steps": config.sampler_steps,
                "candidates": args.candidates, "top_k": args.top_k, "iterations": args.iterations,
                "rollouts": args.rollouts, "distance": args.distance, "alphas": config.alphas or {},
                "distilled": str(args.distilled) if args.distilled else None, "ckpt": str(args.ckpt),
                "length_weight": args.length_weight, "collision_weight": args.collision_weight, "qp": args.qp,
                "precision": resolve(args.precision, args.device),
                "search": [config.search, config.proposals_nomad, config.proposals_gnm, config.prior_draws,
                           config.refine, config.seeded_iterations],
                **({"true_views": True} if args.true_views else {})}  # fmt: skip
    if args.resume is not None:
        try:
            check_resume(args.resume, {**protocol, "ckpt_content": checkpoints_fingerprint(args.ckpt)})
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    episodes = range(args.first_episode, args.first_episode + args.episodes)
    rows, records = [], {}
    for m in args.methods:
        keep = args.resume / m if args.resume is not None else None
        kept = {k: keep / f"{k}.json" for k in episodes} if keep is not None else {}
        mpc = None
        if args.kept_only:  # the table of what is done so far
            kept = {k: path for k, path in kept.items() if path.is_file()}
            if not kept:
                continue
        elif not kept or not all(path.is_file() for path in kept.values()):  # some episode left to run
            try:
                planner = load_method(METHOD_NAMES[m], args.ckpt, args.device, config)
                if args.true_views and hasattr(planner, "world_model"):
                    planner = TrueViewPlanner(planner, lambda: env.sim, env.robot.spacing)
            except (MethodUnavailable, CheckpointError) as err:
                print(f"skipped {m}: {err}")
                continue
            except ValueError as err:  # settings the method cannot take
                print(f"error: {err}", file=sys.stderr)
                return 2
            mpc = MPC(planner, TrackingController(solver=args.qp), spacing=env.robot.spacing,
                      replan_every=args.replan_every)
        eps = []
        for k in tqdm(kept if args.kept_only else episodes, desc=m, unit="episode"):
            if k in kept and kept[k].is_file():
                eps.append(json.loads(kept[k].read_text()))
                continue
            ep = run_episode(env, mpc, args.seed + k, revisit=k % 2 == 1, max_steps=args.max_steps,
                             record=bool(args.gif_dir) and k < args.gifs)
            frames = ep.pop("frames")
            if frames:
                save_gif(args.gif_dir / f"{m}_{k}.gif", frames)
            eps.append({"episode": k, "seed": args.seed + k, **ep})
            if k in kept:
                kept[k].parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(kept[k], json.dumps(eps[-1]))
        records[m] = eps
        rows.append(summarise(m, eps))
    print(f"{'method':<8} {'success':>8} {'revisit':>8} {'other':>6} {'SPL':>6} {'collisions':>11} "
          f"{'s/decision':>11}")
    for r in rows:
        print(f"{r['method']:<8} {r['success']:>8.2f} {r['revisit_success']:>8.2f} {r['nonrevisit_success']:>6.2f} "
              f"{r['spl']:>6.2f} {r['collisions']:>11.2f} {r['s_per_decision']:>11.3f}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"rows": rows, "world": args.world, "seed": args.seed,
                                                 "worlds": args.worlds, "replan_every": args.replan_every,
                                                 "first_episode": args.first_episode, "max_steps": args.max_steps,
                                                 "qp": args.qp, "precision": resolve(args.precision, args.device),
                                                 **progress, **({"true_views": True} if args.true_views else {}),
                                                 "protocol": protocol, "episodes": records}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
