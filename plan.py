"""Plan 8 waypoints towards a goal image: ``python plan.py --goal img.png [--history DIR]``.

``--history DIR`` is the episode so far, a RECON-format trajectory folder (frames and
poses; ``--until T`` stops it at frame T): a memory method such as CoME memorises it and
recalls from it, and its last frames are the context. With a history the method defaults
to CoME (its one-network student where the checkpoint has one, ``--method come`` for the
composed experts), and NWM plans too for comparison; ``examples/episode`` is the shipped
example's.
Otherwise the context (the robot's last frames, oldest first) comes from ``--context``;
without it, the shipped example context of the world is used (``examples/`` for
the maze, ``examples/outdoor/`` for ``--world outdoor``). ``--world`` also picks
that world's shipped checkpoint (``checkpoints/<world>``) when ``--ckpt`` is not given. The plan
is printed in spacing units and metres (x forward, y left, yaw CCW), with the
chosen cost; a figure shows the context, the goal, the world model's imagined
rollout of the plan and the waypoints from above.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
EXAMPLES = ROOT / "examples"


def example_folder(world: str) -> Path:
    """The shipped example images of a world: ``examples/`` (maze) or ``examples/<world>/``."""
    return EXAMPLES if world == "maze" else EXAMPLES / world


def load_image(path: str, size: int) -> np.ndarray:
    """RGB uint8 (size, size, 3); a user mistake raises ValueError with one line that says what to fix."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"image {path!r} does not exist; pass the path of a PNG or JPEG file")
    img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)  # palette PNGs come back expanded to BGR
    if img is None:
        raise ValueError(f"cannot read {path!r} as an image (corrupt or not PNG/JPEG); re-export it as PNG")
    if img.ndim != 3 or img.shape[2] != 3:
        channels = 1 if img.ndim == 2 else img.shape[2]
        raise ValueError(f"{path!r} has {channels} channel(s); the planner needs RGB images (3 channels)")
    if img.dtype == np.uint16:  # 16-bit PNG: scale by its real bit depth
        img = np.round(img.astype(np.float64) * (255 / 65535)).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(f"{path!r} has {img.dtype} pixels; re-export it as an 8- or 16-bit PNG or a JPEG")
    from nav_come.core.data.recon import square_resize

    return square_resize(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), size)


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [0, 1]."""
    return (torch.from_numpy(frames).float() / 255).movedim(-1, -3)


def parse_args(argv=None) -> argparse.Namespace:
    from nav_come.core.layout import WORLDS
    from planners.config import METHODS, add_plan_args

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--goal", required=True, help="goal image (PNG/JPEG, RGB)")
    p.add_argument("--context", nargs="+", help="context images, oldest first (default: examples/context_*.png)")
    p.add_argument("--method", help=f"{' | '.join(METHODS)} (nomad+: the world model ranks NoMaD's samples; "
                   "default: come-student (else come) with --history, else nwm)")
    p.add_argument("--history", help="RECON-format trajectory folder of the episode so far (frames, traj_data.pkl)")
    p.add_argument("--until", type=int, help="--history: the last frame observed (default: its last)")
    p.add_argument("--world", choices=WORLDS, help="simulator world: its shipped checkpoint and example (default maze)")
    p.add_argument("--ckpt", help="checkpoint folder (ae/, base/, gnm/, nomad/; default checkpoints/<world>)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is faster when other jobs share the cores)")
    add_plan_args(p)
    p.add_argument("--figure", default=str(ROOT / "outputs" / "plan.png"))
    p.add_argument("--json", help="write the plan as JSON here")
    return p.parse_args(argv)


def check_args(args) -> None:
    """Refuse what would fail, or silently mislead, only after the plan: one ValueError line."""
    from nav_come.core.train_loop import check_device

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    args.device = check_device(args.device, indexed=True)
    for flag, path in (("--figure", args.figure), ("--json", args.json)):
        if path is None:
            continue
        parent = Path(path).resolve().parent
        while not parent.exists():
            parent = parent.parent
        if Path(path).is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
            raise ValueError(f"{flag} {path!r} cannot be written; pass a file path in a writable folder")
    if args.history is not None and not Path(args.history).is_dir():
        raise ValueError(f"--history {args.history!r} is not a folder; pass a RECON-format trajectory folder")
    if args.until is not None and (args.history is None or args.until < 0):
        raise ValueError(f"--until needs --history and a frame index >= 0, got {args.until}")
    for c in args.context or []:
        if not Path(c).is_file():
            raise ValueError(f"context image {c!r} does not exist; pass the paths of the context frames, oldest first")


def load_history(folder: str, until: int | None, size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Frames (T, H, W, 3) uint8 and world poses (T, 3) of a RECON trajectory folder up to frame
    ``until`` (default: its last), and that frame's index."""
    from nav_come.core.data import load_frames, poses, read_trajectory

    tr = read_trajectory(folder, load_images=False)
    last = len(tr) - 1 if until is None else until
    if last >= len(tr):
        raise ValueError(f"--until {until} is past the end of {folder} (frames 0..{len(tr) - 1})")
    return load_frames(folder, range(last + 1), size), poses(tr.position, tr.yaw)[: last + 1], last


def plan_once(planner, context: np.ndarray, goal: np.ndarray, history, seed: int, ckpt) -> tuple:
    """One plan of ``planner`` (after it observes ``history``: frames, poses) and its seconds."""
    if history is not None:
        planner.observe(to_tensor(history[0]), history[1])
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    res = planner(to_tensor(context)[None], to_tensor(goal), generator=gen, imagine=True)
    seconds = time.perf_counter() - start
    if not torch.isfinite(res.waypoints).all() or (res.cost is not None and not np.isfinite(res.cost)):
        raise ValueError(f"the plan is not finite (cost {res.cost}): the checkpoint in {ckpt} may hold NaN or "
                         "infinite weights; retrain or restore it")  # fmt: skip
    return res, seconds


def example_truth(args, examples: Path, history_end: int | None) -> list | None:
    """The shipped example's true motion, when the plan is of that example (its goal, and its
    context images or its own episode up to the example's step)."""
    meta = examples / "example.json"
    if args.context is not None or not meta.is_file() or Path(args.goal).resolve() != (examples / "goal.png").resolve():
        return None
    example = json.loads(meta.read_text())
    if args.history is not None and (Path(args.history).resolve() != (examples / "episode").resolve()
                                     or history_end != example["t"]):  # fmt: skip
        return None
    return example["true_waypoints"]


def default_method(ckpt: Path, history: bool) -> str:
    """NWM without a history; with one, CoME's one-network student where the checkpoint folder has
    it (it plans as well as the composition at NWM's cost, docs/results.md), else CoME composed."""
    from nav_come.core.layout import CheckpointLayout

    if not history:
        return "nwm"
    return "come-student" if CheckpointLayout(ckpt).has("student") else "come"


def run(args) -> dict:
    from nav_come.core.data.config import data_config
    from nav_come.core.layout import checkpoint_world, pick_checkpoint
    from planners.config import plan_config_from_args
    from planners.methods import load_method

    config = plan_config_from_args(args, data_config("nav_come_sim"))  # the shipped models' data: its CEM prior
    ckpt = pick_checkpoint(args.ckpt, world=args.world)
    method = (args.method or default_method(ckpt, args.history is not None)).lower()
    planner = load_method(method, ckpt, args.device, config)
    size, n_ctx = planner.image_size, planner.context_frames
    examples = example_folder(args.world or checkpoint_world(ckpt) or "maze")
    history = load_history(args.history, args.until, size) if args.history else None
    if args.context is None and history is not None:
        if len(history[0]) < n_ctx:
            raise ValueError(f"--history holds {len(history[0])} frame(s) up to --until; the context needs {n_ctx}")
        context = history[0][-n_ctx:]  # the newest frames of the episode
    else:
        paths = args.context or sorted(map(str, examples.glob("context_*.png")))
        if len(paths) != n_ctx:
            raise ValueError(f"{len(paths)} context image(s) given; the model needs exactly {n_ctx} (oldest first)")
        context = np.stack([load_image(c, size) for c in paths])  # (C, H, W, 3)
    goal = load_image(args.goal, size)
    observed = history[:2] if history is not None else None  # frames, poses
    res, seconds = plan_once(planner, context, goal, observed, args.seed, ckpt)
    compare = None
    if history is not None and planner.uses_memory:  # the same plan without memory, for comparison
        nwm, _ = plan_once(load_method("nwm", ckpt, args.device, config), context, goal, None, args.seed, ckpt)
        compare = {"method": "nwm", "waypoints": nwm.waypoints.numpy().astype(float).round(4).tolist(),
                   "cost": nwm.cost}  # fmt: skip
    spacing = data_config("nav_come_sim").metric_waypoint_spacing
    wp = res.waypoints.numpy().astype(float)
    wp_m = np.concatenate([wp[:, :2] * spacing, wp[:, 2:]], 1)
    truth = example_truth(args, examples, history[2] if history else None)
    return {"method": method, "precision": planner.precision, "waypoints": wp.round(4).tolist(),
            "waypoints_m": wp_m.round(4).tolist(), "cost": res.cost, "cost_name": res.cost_name,
            "seconds": round(seconds, 2), "seed": args.seed, "history_frames": len(history[0]) if history else 0,
            "compare": compare, "_context": context, "_goal": goal, "_imagined": res.imagined, "_spacing": spacing,
            "_truth": truth}  # fmt: skip


def report(out: dict, args) -> None:
    memory = f", {out['history_frames']} history frames" if out["history_frames"] else ""
    print(f"method {out['method']}, planned in {out['seconds']:.1f} s (seed {out['seed']}, {out['precision']}{memory})")
    print(f"{'k':>2} {'x':>7} {'y':>7} {'yaw':>7}   {'x (m)':>7} {'y (m)':>7}")
    for k, (w, m) in enumerate(zip(out["waypoints"], out["waypoints_m"], strict=True), 1):
        print(f"{k:>2} {w[0]:>7.2f} {w[1]:>7.2f} {w[2]:>7.2f}   {m[0]:>7.2f} {m[1]:>7.2f}")
    if out["cost"] is not None:
        print(f"cost ({out['cost_name']}): {out['cost']:.4f}")
    if out["compare"] is not None:
        end = out["compare"]["waypoints"][-1]
        print(f"{out['compare']['method']} (no memory) ends at x {end[0]:.2f}, y {end[1]:.2f} (spacing units)")
    if out["_truth"] is not None:
        truth = np.asarray(out["_truth"])
        print(f"the shipped example's true motion ends at x {truth[-1, 0]:.2f}, y {truth[-1, 1]:.2f} (spacing units)")
    from eval.figures import plan_figure

    imagined = out["_imagined"]
    if imagined is not None:
        imagined = (imagined.permute(0, 2, 3, 1).clamp(0, 1).numpy() * 255).astype(np.uint8)
    fig = plan_figure(args.figure, out["_context"], out["_goal"], np.asarray(out["waypoints"]), out["_spacing"],
                      imagined, None if out["_truth"] is None else np.asarray(out["_truth"]),
                      title=f"{out['method']} plan", compare=out["compare"])
    print(f"figure: {fig}")
    if args.json:
        from nav_come.core.io import atomic_write_text

        public = {k: v for k, v in out.items() if not k.startswith("_")}
        atomic_write_text(args.json, json.dumps(public, indent=2, allow_nan=False))


def main(argv=None) -> int:
    args = parse_args(argv)
    from nav_come.core.checkpoint import CheckpointError
    from planners.methods import MethodUnavailable

    try:
        check_args(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        out = run(args)
    except (ValueError, CheckpointError, MethodUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report(out, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
