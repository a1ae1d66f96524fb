"""Train a GNM or NoMaD waypoint policy (the docs/design.md §3 baselines) on RECON-format data.

    python -m planners.train_policy --policy gnm --data data/maze --out checkpoints/gnm --max-minutes 15 --threads 1
    python -m planners.train_policy --policy nomad --data data/maze --out checkpoints/nomad --max-minutes 15 --threads 1

Layout of ``--out DIR``::

    DIR/model.safetensors, DIR/config.json   final weights: ``planners.policy_common.load_policy(DIR)``
    DIR/last/                                 resume state (nav_come.core.train_loop); the same command continues it

Samples are ``TrajectoryDataset`` windows: 4 context frames (the last is the current
frame), the 8 ground-truth waypoints, and a goal drawn 1..20 steps ahead afresh at every
step (GNM's range; ``--goal-range``); the distance label is the goal offset. The loop is
:func:`nav_come.core.train_loop.fit`: AdamW, linear warm-up then constant LR, EMA (NoMaD's
default 0.995; GNM trains without one, as the original: decay 0 exports the raw weights),
resume state every ``--ckpt-every-min`` minutes and on Ctrl-C. Validation uses the val
split when there is one: ATE/RPE (nav_come.core.metrics, spacing units) of the predicted waypoints
against the ground truth, with the planning protocol's goal 8 steps ahead, on up to
``--val-samples`` fixed windows. A run resumed from ``DIR/last`` keeps that run's config.
Mistakes print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
from tqdm import tqdm

from nav_come.core.checkpoint import CONFIG, CheckpointError, read_config
from nav_come.core.data import TrajectoryDataset, split_path
from nav_come.core.data.config import add_data_args
from nav_come.core.metrics import ate, rpe
from nav_come.core.precision import PRECISIONS, bf16_flag, resolve
from nav_come.core.train_loop import Distributed, LoopConfig, fit, setup_distributed
from planners.policy_common import Policy, PolicyConfig, builtin_policies

BATCH_KEYS = ("context", "goal", "rel_poses", "goal_offset")
VAL_GOAL = 8  # the planning protocol's goal: 8 frames (2 s) ahead
VAL_SEED = 1234  # fixed sampling noise: the curve compares like with like
VAL_BATCH = 128
# Per-policy optimisation defaults (GNM: Adam 5e-4, no EMA; NoMaD: AdamW, wd 1e-4, EMA;
# NoMaD's 1e-4 LR is raised for short CPU runs).
TRAIN_DEFAULTS: dict[str, dict[str, float]] = {
    "gnm": dict(lr=5e-4, weight_decay=0.0, ema_decay=0.0),
    "nomad": dict(lr=3e-4, weight_decay=1e-4, ema_decay=0.995),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m planners.train_policy", description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", required=True, help="gnm or nomad")
    p.add_argument("--data", required=True, type=Path, help="folder of RECON-format trajectory folders")
    p.add_argument("--out", required=True, type=Path, help="output folder (see the layout above)")
    p.add_argument("--preset", default="small", help="model preset: tiny or small")
    add_data_args(p)
    p.add_argument("--steps", type=int, default=100_000, help="optimiser steps in total (resumed runs count on)")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget of this run")
    p.add_argument("--batch-size", type=int, default=64, help="samples per step (and per process)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default per policy: gnm 5e-4, nomad 3e-4)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: gnm 0, nomad 1e-4)")
    p.add_argument("--ema-decay", type=float, help="EMA decay of the exported weights (default: gnm 0, nomad 0.995)")
    p.add_argument("--warmup", type=int, default=100, help="linear LR warm-up steps")
    p.add_argument("--goal-range", type=int, nargs=2, default=(1, 20), metavar=("LO", "HI"), help="goal offsets")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (torch.set_num_threads)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp32 (default: these conv nets were not faster with bf16 on CPU), bf16, or auto")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-every", type=int, default=500, help="validation period in steps (0: off)")
    p.add_argument("--val-samples", type=int, default=256, help="validation windows")
    p.add_argument("--ckpt-every-min", type=float, default=5.0, help="resume-state period in minutes")
    return p


def collate(items: list[dict[str, torch.Tensor]], device: torch.device) -> dict[str, torch.Tensor]:
    """Stack the keys a policy's loss needs: context (B, C, 3, H, W), goal (B, 3, H, W),
    rel_poses (B, K, 3), goal_offset (B,)."""
    return {k: torch.stack([item[k] for item in items]).to(device) for k in BATCH_KEYS}


def _loop(args: argparse.Namespace) -> LoopConfig:
    defaults = TRAIN_DEFAULTS[args.policy]
    pick = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}
    return LoopConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        warmup=args.warmup,
        bf16=bf16_flag(args.precision),
        val_every=args.val_every,
        ckpt_every_min=args.ckpt_every_min,
        max_minutes=args.max_minutes,
        seed=args.seed,
        grad_clip=1.0,
        **pick,
    )


def _config(args: argparse.Namespace, cls: type[Policy], last: Path) -> tuple[PolicyConfig, bool]:
    """(config, resumed): an interrupted run's config wins over the command line."""
    if (last / "model" / CONFIG).is_file():
        return read_config(last / "model", cls.name)[1], True
    return cls.make_config(args.preset), False


def _datasets(args: argparse.Namespace, config: PolicyConfig) -> tuple[TrajectoryDataset, TrajectoryDataset | None]:
    common = dict(
        split_dir=args.split_dir,
        dataset=args.dataset,
        context_size=config.context_size,
        pred_len=config.pred_len,
        image_size=config.image_size,
    )
    train = TrajectoryDataset(args.data, "train", goal_offset=tuple(args.goal_range), seed=args.seed, **common)
    val = None
    if args.val_every and split_path(args.data, "val", args.split_dir, args.dataset).is_file():
        val = TrajectoryDataset(args.data, "val", goal_offset=(VAL_GOAL, VAL_GOAL), **common)
    return train, val


@torch.no_grad()
def evaluate(policy: Policy, batch: dict[str, torch.Tensor], spacing: float) -> dict[str, float]:
    """ATE/RPE (mean over windows; spacing units and metres) of ``policy`` on a collated batch."""
    g = torch.Generator().manual_seed(VAL_SEED)
    chunks = zip(batch["context"].split(VAL_BATCH), batch["goal"].split(VAL_BATCH), strict=True)
    pred = torch.cat([policy.predict(c, goal, g)["waypoints"].cpu() for c, goal in chunks])  # (N, K, 3)
    gt = batch["rel_poses"].cpu()  # (N, K, 3)
    a, r = float(np.mean(ate(pred[..., :2], gt[..., :2]))), float(np.mean(rpe(pred[..., :2], gt[..., :2])))
    return {"val_ate": a, "val_rpe": r, "val_ate_m": a * spacing, "val_rpe_m": r * spacing, "val_n": len(gt)}


def _metadata(args: argparse.Namespace, dist: Distributed, loop: LoopConfig, spacing: float) -> dict:
    return {
        "policy": args.policy,
        "data": str(args.data),
        "dataset": args.dataset,
        "spacing": spacing,
        "goal_range": list(args.goal_range),
        "seed": args.seed,
        "batch_size": loop.batch_size * dist.world,
        "lr": loop.lr,
        "weight_decay": loop.weight_decay,
        "ema_decay": loop.ema_decay,
        "precision": resolve(args.precision, dist.device),
        "device": str(dist.device),
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
        "torch": torch.__version__,
        "command": " ".join(["python -m planners.train_policy", *args.argv]),
    }


def prepare(args: argparse.Namespace, dist: Distributed) -> functools.partial:
    """Everything a training run needs; returns the ``fit`` call to run."""
    cls, loop, last = builtin_policies()[args.policy], _loop(args), args.out / "last"
    config, resumed = _config(args, cls, last)
    train, val = _datasets(args, config)
    if not resumed:
        config = cls.adapt_config(config, train.trajectories, train.spacing)
    tqdm.write(f"{cls.name}: {len(train)} training windows; decoding their frames")
    train.preload()
    val_batch, val_metrics = None, {}
    if val is not None:
        idx = np.unique(np.linspace(0, len(val) - 1, min(args.val_samples, len(val))).round().astype(int))
        val_batch = collate([val[int(i)] for i in idx], dist.device)
    torch.manual_seed(args.seed)  # the initial weights follow --seed
    meta = _metadata(args, dist, loop, train.spacing)

    def loss_fn(model: Policy, g: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(train), (loop.batch_size,), generator=g)
        train.seed = int(torch.randint(2**31 - 1, (1,), generator=g))  # new goal offsets: item i's comes from (seed, i)
        return model.loss(collate([train[i] for i in idx.tolist()], dist.device), g)

    def val_fn(ema: Policy) -> float:
        val_metrics.update(evaluate(ema, val_batch, train.spacing))
        tqdm.write("validation: " + ", ".join(f"{k} {v:.4g}" for k, v in val_metrics.items()))
        return val_metrics["val_ate"]

    def export(ema: Policy, info: dict) -> None:
        ema.save(args.out, {**meta, **info, **val_metrics})

    desc = f"{cls.name} ({config.preset})"
    val_fn = val_fn if val_batch is not None else None
    return functools.partial(fit, cls(config), cls.name, loss_fn, loop, dist, last, export, val_fn, desc)


def _fail(message: str) -> int:
    print(f"planners.train_policy: error: {message}", file=sys.stderr)
    return 2


def _check(args: argparse.Namespace) -> str | None:
    """The first user mistake in the arguments, or None."""
    policies = builtin_policies()
    if args.policy not in policies:
        return f"unknown policy {args.policy!r}: choose one of {', '.join(policies)}"
    if args.preset not in policies[args.policy].presets:
        return f"unknown preset {args.preset!r}: choose one of {', '.join(policies[args.policy].presets)}"
    if not args.data.is_dir():
        return f"data folder {args.data} does not exist: pass the folder that holds the trajectory folders"
    if args.threads is not None and args.threads < 1:
        return f"--threads must be >= 1, got {args.threads}"
    if not 1 <= args.goal_range[0] <= args.goal_range[1]:
        return f"--goal-range needs 1 <= LO <= HI, got {args.goal_range}"
    return None


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in the checkpoint's metadata
    except SystemExit as e:  # --help, or a parse error already printed on one line
        return e.code if isinstance(e.code, int) else 2
    if (problem := _check(args)) is not None:
        return _fail(problem)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _run(args: argparse.Namespace) -> int:
    try:
        dist = setup_distributed(args.device)
        run = prepare(args, dist)
    except (CheckpointError, ValueError, FileNotFoundError) as e:  # DataFormatError is a ValueError
        return _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    try:
        step = run()
    except KeyboardInterrupt:
        print(f"\ninterrupted: state saved under {args.out / 'last'}; run the same command to resume", file=sys.stderr)
        return 130
    print(f"{args.policy}: {step} steps; weights in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
