"""Distil CoME's composition into one student network: CoME at the cost of one network.

    python -m planners.student --ckpt checkpoints/maze --data data/maze --out runs/student --threads 1

**Teacher**: the composition CoME samples with, minus the LTM: the base and the spatial
expert (SLTM), normalised, α = 1, the SLTM's relevance weight over the band of
:data:`planners.config.RELEVANCE_NEAR_FAR` (:func:`teacher`; the planner's defaults, so a test
checks it against :func:`planners.methods.load_method`'s composition). The LTM is left out
because on the validation worlds it added nothing on top of the SLTM (docs/results.md, "Memory
that earns its cost": CoME 22.23 dB against +SLTM 22.23) while it costs a forward per
prediction and a test-time fine-tune per frame; the student planner has no LTM.

**Student**: a copy of the SLTM (the same inputs: context frames, action, retrieved frames and
their poses), trained to return the teacher's v at the same noisy latent: v-MSE on training
windows, at t = 1 for half of the samples (the one DDIM step the planner takes) and t uniform
in (0, 1] for the rest (the memory table's 5-step sampler). Retrieval runs as at test time,
nearest stored frames by pose among those older than the context, so windows with and
without a retrieved frame both occur. The student is sampled alone at α = 1: its
unconditional branch is not distilled, so it has no contrastive partner to guide with.

Layout::

    OUT/student/{model.safetensors,config.json}   the student (EMA weights), an SLTM checkpoint
    OUT/last/student/                             resume state (run the same command to resume)
    OUT/cache/                                    latents, only if CKPT/cache lacks them

Copy ``OUT/student`` to ``checkpoints/<world>/student`` to plan with it: ``eval/ate_rpe.py
--methods "CoME (student)"``, ``plan.py --method come-student``; the memory table's row
"CoME (student)". The metadata records the teacher (hashes of its base and SLTM, the weights).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from nav_come.compose import ComposedDenoiser
from nav_come.core.checkpoint import checkpoint_hash, load_checkpoint, read_config
from nav_come.core.data import dataset_config
from nav_come.core.layout import BASE_DIR, CheckpointLayout, MissingCheckpoint
from nav_come.core.precision import autocast, bf16_flag, resolve
from nav_come.core.train_loop import (
    LoopConfig,
    add_run_args,
    cli_fail,
    fit,
    run_stages,
    setup_distributed,
    step_generator,
)
from nav_come.diffusion import COSINE, CosineSchedule, rand, randn
from nav_come.experts import BaseExpert, SpatialExpert, load_expert, save_expert
from nav_come.experts.common import Condition
from nav_come.train_expert import draw_batch, load_training_data
from planners.config import DEFAULT_NORMALISE, DEFAULT_RELEVANCE, RELEVANCE_NEAR_FAR, relevance_weights

NAME = "student"
TEACHER = ("base", "sltm")  # the experts the student learns the composition of
AT_ONE = 0.5  # share of the samples at t = 1, the planner's one DDIM step
VAL_SEED = 1234
VAL_BATCHES = 4


def teacher(base: torch.nn.Module, sltm: SpatialExpert, schedule: CosineSchedule = COSINE,
            bf16: bool | None = None) -> ComposedDenoiser:  # fmt: skip
    """The composition the student learns: the base DiT and the SLTM, CoME's weights at α = 1."""
    experts = {"base": BaseExpert(base), "sltm": sltm}
    for expert in experts.values():
        expert.schedule = schedule
    weights = {n: w for n, w in relevance_weights().items() if n in experts}
    return ComposedDenoiser(experts, 1.0, weights or None, normalise=DEFAULT_NORMALISE, schedule=schedule, bf16=bf16)


def conditions(batch: dict[str, torch.Tensor]) -> dict[str, Condition]:
    """The teacher's per-expert conditions for an SLTM training batch (``train_expert.draw_batch``)."""
    query = {k: batch[k] for k in ("context", "action", "shift")}
    memory = {**query, "extra_frames": batch["extra_frames"], "extra_cond": batch["extra_cond"]}
    return {"base": Condition(query), "sltm": Condition(memory, {"distance": batch["distance"]})}


def student_loss(student: SpatialExpert, composed: ComposedDenoiser, batch: dict[str, torch.Tensor],
                 generator: torch.Generator | None) -> torch.Tensor:  # fmt: skip
    """v-MSE (scalar) of the student against the teacher on the batch's targets, noised at t = 1
    for a share :data:`AT_ONE` of the samples and t ~ U(0, 1] for the rest."""
    x0 = batch["target"]
    B, device = x0.shape[0], x0.device
    u = rand((2, B), generator, device)  # (2, B)
    t = torch.where(u[0] < AT_ONE, torch.ones_like(u[1]), u[1].clamp(min=1e-3))
    x_t = composed.schedule.add_noise(x0, randn(tuple(x0.shape), generator, device), t)
    with torch.no_grad():
        target = composed(x_t, t, conditions(batch))
    kw = {k: batch[k] for k in ("context", "action", "shift", "extra_frames", "extra_cond")}
    return (student.network(x_t, t, **kw).float() - target).pow(2).flatten(1).mean(1).mean()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m planners.student", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, type=Path, help="checkpoint folder with ae/, base/ and sltm/ (the teacher)")
    p.add_argument("--data", required=True, type=Path, help="folder of RECON-format trajectory folders")
    p.add_argument("--out", required=True, type=Path, help="output folder (see the layout above)")
    p.add_argument("--steps", type=int, default=3000, help="optimiser steps in total")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget of this run")
    p.add_argument("--batch-size", type=int, default=32, help="batch per process")
    p.add_argument("--lr", type=float, default=1e-5,
                   help="AdamW learning rate (the student starts a small step from its teacher: at 1e-4 it moved away)")
    p.add_argument("--revisit-weight", type=float, help="sampling weight of revisit targets (default: the SLTM's)")
    add_run_args(p)
    return p


def _metadata(args: argparse.Namespace, dist, spacing: float, schedule: dict | None) -> dict:
    return {"teacher": list(TEACHER), "relevance": DEFAULT_RELEVANCE["sltm"], "band": list(RELEVANCE_NEAR_FAR),
            "normalise": DEFAULT_NORMALISE, "ckpt": str(args.ckpt),
            "base_hash": checkpoint_hash(args.ckpt / BASE_DIR), "sltm_hash": checkpoint_hash(args.ckpt / "sltm"),
            "data": str(args.data), "revisit_weight": args.revisit_weight, "batch_size": args.batch_size * dist.world,
            "lr": args.lr, "at_one": AT_ONE, "precision": resolve(args.precision, dist.device), "spacing": spacing,
            "schedule": schedule, "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
            "torch": torch.__version__,
            "command": shlex.join(["python", "-m", "planners.student", *args.argv])}  # fmt: skip


def prepare(args: argparse.Namespace, dist):
    """Everything the run needs; returns the ``fit`` call to make."""
    base, base_meta = load_checkpoint(args.ckpt / BASE_DIR, "dit", dist.device)
    sltm_dir = args.ckpt / "sltm"
    sltm = load_expert(sltm_dir, dist.device)
    if not isinstance(sltm, SpatialExpert):
        raise ValueError(f"{sltm_dir} holds a {sltm.kind} expert, not an SLTM")
    if args.revisit_weight is None:
        args.revisit_weight = float(read_config(sltm_dir)[2].get("revisit_weight") or 1.0)
    schedule = CosineSchedule(**(base_meta.get("schedule") or {}))
    base, sltm = base.eval().requires_grad_(False), sltm.requires_grad_(False)
    composed = teacher(base, sltm, schedule, bf16_flag(args.precision))
    last = args.out / "last" / NAME
    student = copy.deepcopy(sltm).train().requires_grad_(True)  # fit resumes its weights from OUT/last
    spacing = dataset_config(args.data, args.dataset, args.spacing).metric_waypoint_spacing
    args.base = args.ckpt  # nav_come.train_expert's data pipeline reads BASE/ae and BASE/cache
    net = sltm.network.config
    data = load_training_data(args, dist, net.context, net.max_shift, spacing)
    loop = LoopConfig(args.steps, args.batch_size, args.lr, bf16=bf16_flag(args.precision), val_every=args.val_every,
                      ckpt_every_min=args.ckpt_every_min, max_minutes=args.max_minutes, seed=args.seed)  # fmt: skip
    meta = _metadata(args, dist, spacing, base_meta.get("schedule")) | {"val_split": data["val_split"]}

    def batch_of(split: str, g: torch.Generator) -> dict[str, torch.Tensor]:
        return {k: v.to(dist.device) for k, v in draw_batch(sltm, *data[split], loop.batch_size, g).items()}

    def loss_fn(model: SpatialExpert, g: torch.Generator) -> torch.Tensor:
        return student_loss(model, composed, batch_of("train", g), g)

    @torch.no_grad()
    def val_fn(ema: SpatialExpert) -> float:
        g = step_generator(VAL_SEED, 0, 0)
        with autocast(dist.device, loop.bf16):
            return float(np.mean([student_loss(ema, composed, batch_of("val", g), g).item()
                                  for _ in range(VAL_BATCHES)]))  # fmt: skip

    def export(ema: SpatialExpert, info: dict) -> None:
        save_expert(args.out / NAME, ema, {**meta, **info})

    val = val_fn if "val" in data else None
    return lambda: fit(student, "sltm", loss_fn, loop, dist, last, export, val, "CoME student")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    for flag, folder in (("--data", args.data), ("--ckpt", args.ckpt)):
        if not folder.is_dir():
            return cli_fail("planners.student", f"{flag} folder {folder} does not exist")
    layout = CheckpointLayout(args.ckpt)
    try:
        for part in ("ae", BASE_DIR, "sltm"):
            layout.need(part, "the SLTM expert (the teacher's and the student's start)" if part == "sltm" else None)
    except MissingCheckpoint as e:
        return cli_fail("planners.student", str(e))
    if args.steps < 1 or (args.max_minutes is not None and not args.max_minutes > 0):
        return cli_fail("planners.student", f"need --steps >= 1 and --max-minutes > 0, got {args.steps} and "
                                            f"{args.max_minutes}")  # fmt: skip
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        dist = setup_distributed(args.device)
    except ValueError as e:
        return cli_fail("planners.student", str(e))
    return run_stages("planners.student", args.out, [lambda: prepare(args, dist)])


if __name__ == "__main__":
    sys.exit(main())
