"""Plan 8 waypoints towards a goal image: ``python plan.py --goal img.png``.

The context (the robot's last frames, oldest first) comes from ``--context``;
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
    p.add_argument("--method", default="nwm",
                   help=f"{' | '.join(METHODS)} (nomad+: the world model ranks NoMaD's samples)")
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
    for c in args.context or []:
        if not Path(c).is_file():
            raise ValueError(f"context image {c!r} does not exist; pass the paths of the context frames, oldest first")


def run(args) -> dict:
    from nav_come.core.data.config import data_config
    from nav_come.core.layout import checkpoint_world, pick_checkpoint
    from planners.config import plan_config_from_args
    from planners.methods import load_method

    method = args.method.lower()
    config = plan_config_from_args(args, data_config("nav_come_sim"))  # the shipped models' data: its CEM prior
    ckpt = pick_checkpoint(args.ckpt, world=args.world)
    planner = load_method(method, ckpt, args.device, config)
    size, n_ctx = planner.image_size, planner.context_frames
    examples = example_folder(args.world or checkpoint_world(ckpt) or "maze")
    paths = args.context or sorted(map(str, examples.glob("context_*.png")))
    if len(paths) != n_ctx:
        raise ValueError(f"{len(paths)} context image(s) given; the model needs exactly {n_ctx} (oldest first)")
    context = np.stack([load_image(c, size) for c in paths])  # (C, H, W, 3)
    goal = load_image(args.goal, size)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    res = planner(to_tensor(context)[None], to_tensor(goal), generator=gen, imagine=True)
    seconds = time.perf_counter() - start
    if not torch.isfinite(res.waypoints).all() or (res.cost is not None and not np.isfinite(res.cost)):
        raise ValueError(f"the plan is not finite (cost {res.cost}): the checkpoint in {ckpt} may hold NaN or "
                         "infinite weights; retrain or restore it")  # fmt: skip
    spacing = data_config("nav_come_sim").metric_waypoint_spacing
    wp = res.waypoints.numpy().astype(float)
    wp_m = np.concatenate([wp[:, :2] * spacing, wp[:, 2:]], 1)
    meta = examples / "example.json"
    example = args.context is None and Path(args.goal).resolve() == (examples / "goal.png").resolve()
    truth = json.loads(meta.read_text())["true_waypoints"] if example and meta.is_file() else None
    return {"method": method, "precision": planner.precision, "waypoints": wp.round(4).tolist(),
            "waypoints_m": wp_m.round(4).tolist(), "cost": res.cost, "cost_name": res.cost_name,
            "seconds": round(seconds, 2), "seed": args.seed,
            "_context": context, "_goal": goal, "_imagined": res.imagined, "_spacing": spacing, "_truth": truth}


def report(out: dict, args) -> None:
    print(f"method {out['method']}, planned in {out['seconds']:.1f} s (seed {out['seed']}, {out['precision']})")
    print(f"{'k':>2} {'x':>7} {'y':>7} {'yaw':>7}   {'x (m)':>7} {'y (m)':>7}")
    for k, (w, m) in enumerate(zip(out["waypoints"], out["waypoints_m"], strict=True), 1):
        print(f"{k:>2} {w[0]:>7.2f} {w[1]:>7.2f} {w[2]:>7.2f}   {m[0]:>7.2f} {m[1]:>7.2f}")
    if out["cost"] is not None:
        print(f"cost ({out['cost_name']}): {out['cost']:.4f}")
    if out["_truth"] is not None:
        truth = np.asarray(out["_truth"])
        print(f"the shipped example's true motion ends at x {truth[-1, 0]:.2f}, y {truth[-1, 1]:.2f} (spacing units)")
    from eval.figures import plan_figure

    imagined = out["_imagined"]
    if imagined is not None:
        imagined = (imagined.permute(0, 2, 3, 1).clamp(0, 1).numpy() * 255).astype(np.uint8)
    fig = plan_figure(args.figure, out["_context"], out["_goal"], np.asarray(out["waypoints"]), out["_spacing"],
                      imagined, None if out["_truth"] is None else np.asarray(out["_truth"]),
                      title=f"{out['method']} plan")
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
