"""Does the world model know walls? Imagined pushes against real ones.

    python eval/contact.py --data data/maze_walls --split val [--ckpt DIR [DIR ...]] [--n-samples N]
                           [--seed S] [--json out.json]

A planner asks the world model what happens if the robot drives on. Pressed against a wall,
the true answer is "nothing": the view stays as it is. This needs a dataset that records
the commands and the contact (``python -m envs.collect ... --wall-push P``). From the split
it draws windows of two kinds, each with 4 context frames up to t and ``HORIZON`` steps after:

- ``pressed``: the step into every frame t .. t+H touched an obstacle: the robot was already
  pressed against it and pushes on;
- ``onset``: the steps into t+1 .. t+H touched, the step into t did not: the first contact comes
  after the context, which must show the obstacle within reach;
- ``free``: none of the steps into t+1 .. t+H touched.

Each window is rolled out with the commanded one-step motions, as a planner imagines. For
each checkpoint and kind it reports PSNR (dB, capped at 100) against the true frames at
horizons 1 and H, beside ``copy_last`` (the newest context frame) and ``ae_recon`` (the first
checkpoint's autoencoder reconstruction of the truth, the ceiling), and each checkpoint once more
commanded to stand still (``<ckpt> (still)``: what it imagines when it is told the view does not
move, the most it can make of a push). On pressed and onset windows the truth is close to the
newest frame, so a model that knows walls predicts it and one that does not imagines driving on.
``--json`` writes::

    {"rows": [{"ckpt", "kind", "horizon", "psnr", "psnr_se", "n"}, ...], "data", "split",
     "seed", "precision", "windows": {"pressed": n, "onset": n, "free": n}}

Windows and noise follow ``--seed``; every checkpoint sees the same windows and noise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from eval.predict import PSNR_CAP
from nav_come.core.checkpoint import CheckpointError
from nav_come.core.data import DataFormatError, dataset_config, load_frames, read_split, read_trajectory, split_path
from nav_come.core.data.config import add_data_args
from nav_come.core.io import atomic_write_text
from nav_come.core.layout import pick_checkpoint
from nav_come.core.metrics import psnr
from nav_come.core.precision import add_precision_arg, resolve
from nav_come.core.train_loop import cli_fail
from nav_come.world_model import WorldModel

HORIZON = 4
CONTEXT = 4
KINDS = ("pressed", "onset", "free")


def find_windows(contact: np.ndarray, horizon: int = HORIZON, context: int = CONTEXT) -> dict[str, np.ndarray]:
    """Newest context frames t of the pressed, onset and free windows of one trajectory's contact flags (T,)."""
    T = len(contact)
    t = np.arange(context - 1, T - horizon)  # (n,)
    ahead = np.stack([contact[t + k] for k in range(1, horizon + 1)], 1)  # (n, H)
    push = ahead.all(1)
    return {"pressed": t[push & contact[t]], "onset": t[push & ~contact[t]], "free": t[~ahead.any(1)]}


def draw(trajs: list, n: int, rng: np.random.Generator) -> dict[str, list[tuple[int, int]]]:
    """Up to ``n`` (trajectory, t) windows of each kind, drawn without replacement."""
    out = {}
    for kind in KINDS:
        pool = [(i, int(t)) for i, tr in enumerate(trajs) for t in find_windows(tr.contact)[kind]]
        pick = rng.choice(len(pool), min(n, len(pool)), replace=False) if pool else []
        out[kind] = sorted(pool[int(k)] for k in pick)
    return out


def window_batch(trajs: list, windows: list[tuple[int, int]], spacing: float, image_size: int) -> dict:
    """Frames and commanded one-step motions of windows: context (B, C, 3, H, W), future (B, K, ...),
    step_actions (B, K, 3) in spacing units."""
    ctx, fut, act = [], [], []
    for i, t in windows:
        tr = trajs[i]
        frames = load_frames(tr.path, range(t - CONTEXT + 1, t + HORIZON + 1), image_size)  # (C+K, H, W, 3)
        frames = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
        ctx.append(frames[:CONTEXT])
        fut.append(frames[CONTEXT:])
        step = tr.commanded[t : t + HORIZON].copy()  # (K, 3) metres, radians
        step[:, :2] /= spacing
        act.append(torch.from_numpy(step).float())
    return {"context": torch.stack(ctx), "future": torch.stack(fut), "step_actions": torch.stack(act)}


def _psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return psnr(pred.clamp(0, 1), target).clamp(max=PSNR_CAP)


def score(frames: torch.Tensor, future: torch.Tensor) -> dict[int, torch.Tensor]:
    """PSNR (B,) at horizons 1 and HORIZON of predicted frames (B, K, 3, H, W)."""
    return {h: _psnr(frames[:, h - 1], future[:, h - 1]) for h in (1, HORIZON)}


def _row(ckpt: str, kind: str, horizon: int, values: torch.Tensor) -> dict:
    n = len(values)
    se = float(values.std() / np.sqrt(n)) if n > 1 else 0.0
    return {"ckpt": ckpt, "kind": kind, "horizon": horizon, "psnr": float(values.mean()), "psnr_se": se, "n": n}


def evaluate(models: dict[str, WorldModel], trajs: list, windows: dict, spacing: float, seed: int,
             batch_size: int) -> list[dict]:  # fmt: skip
    """Rows for copy_last and every model, over the same windows and noise."""
    rows = []
    size = next(iter(models.values())).ae.config.image_size
    for kind in KINDS:
        found = windows[kind]
        if not found:
            continue
        first = next(iter(models.values()))
        names = ["copy_last", "ae_recon"] + [f"{m}{suffix}" for m in models for suffix in ("", " (still)")]
        scores: dict[str, dict[int, list]] = {name: {1: [], HORIZON: []} for name in names}
        for b in tqdm(range(0, len(found), batch_size), desc=f"contact {kind}", unit="batch", leave=False):
            batch = window_batch(trajs, found[b : b + batch_size], spacing, size)
            last = batch["context"][:, -1:].expand_as(batch["future"])
            for h, v in score(last, batch["future"]).items():
                scores["copy_last"][h].append(v)
            for h, v in score(first.decode(first.encode(batch["future"])).cpu(), batch["future"]).items():
                scores["ae_recon"][h].append(v)
            for name, model in models.items():
                for suffix, actions in (("", batch["step_actions"]), (" (still)", 0 * batch["step_actions"])):
                    g = torch.Generator().manual_seed(seed * 1000 + b)
                    frames = model.rollout(batch["context"], actions, g)["frames"].cpu()
                    for h, v in score(frames, batch["future"]).items():
                        scores[name + suffix][h].append(v)
        for name, by_h in scores.items():
            rows += [_row(name, kind, h, torch.cat(v)) for h, v in by_h.items()]
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'checkpoint':34s} {'kind':5s} {'h':>2s} {'PSNR':>7s} {'±se':>6s} {'n':>4s}"]
    for r in rows:
        lines.append(f"{r['ckpt'][-34:]:34s} {r['kind']:5s} {r['horizon']:2d} {r['psnr']:7.2f} {r['psnr_se']:6.2f} "
                     f"{r['n']:4d}")  # fmt: skip
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python eval/contact.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, help="a dataset collected with --wall-push (commands, contact)")
    p.add_argument("--ckpt", type=Path, nargs="+", help="world model folders (default: the data's shipped one)")
    p.add_argument("--split", choices=("val", "test", "train"), default="val")
    add_data_args(p)
    p.add_argument("--n-samples", type=int, default=128, help="windows of each kind")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", type=Path)
    add_precision_arg(p)
    return p


def _fail(message: str) -> int:
    return cli_fail("contact", message)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.n_samples < 1 or args.batch_size < 1:
        return _fail("--n-samples and --batch-size must be >= 1")
    try:
        ckpts = args.ckpt or [pick_checkpoint(None, args.data)]
        spacing = dataset_config(args.data, args.dataset, args.spacing).metric_waypoint_spacing
        names = read_split(split_path(args.data, args.split, args.split_dir, args.dataset))
        trajs = [read_trajectory(args.data / n, load_images=False) for n in names]
        if any(tr.contact is None or tr.commanded is None for tr in trajs):
            return _fail(f"{args.data} records no commands or contact; collect it with "
                         "python -m envs.collect ... --wall-push 0.02")  # fmt: skip
        models = {str(c): WorldModel.from_pretrained(c, precision=args.precision) for c in ckpts}
    except (CheckpointError, DataFormatError, ValueError, FileNotFoundError) as e:
        return _fail(str(e).splitlines()[0])
    windows = draw(trajs, args.n_samples, np.random.default_rng(args.seed))
    rows = evaluate(models, trajs, windows, spacing, args.seed, args.batch_size)
    print(format_table(rows))
    if args.json:
        report = {"rows": rows, "data": str(args.data), "split": args.split, "seed": args.seed,
                  "precision": resolve(args.precision, "cpu"), "windows": {k: len(v) for k, v in windows.items()}}
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
