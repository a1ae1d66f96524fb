"""Train a memory expert (or a memory baseline) from the trained base world model.

    python -m nav_come.train_expert --expert stm --base runs/maze --data data/maze --out runs/maze-experts
    torchrun --nproc_per_node 8 -m nav_come.train_expert --expert sltm --base B --data D --out O --device cuda

``--expert`` is ``stm``, ``sltm``, ``ssm`` or ``full`` (the LTM trains at test time; "Sliding"
is the STM network alone). The expert starts exactly at ``BASE/base`` with its memory
pathways zero-initialised (docs/design.md §5). ``--train all`` (default, the recipe measured in
docs/design.md §5) fine-tunes every weight at ``--lr`` 1e-4, half the base's rate; ``--train memory``
freezes the base weights and trains only what memory adds, which keeps the no-memory path
exactly the base.

Targets: windows of the training split, revisit targets sampled with ``--revisit-weight``
(as ``nav_come.train``; docs/design.md §5's recipe is half of the targets from revisits: for a revisit
share p of the data, ``W = (1 - p) / p``; the share W gives is printed and stored). Each
window's memory (long histories, retrieval) is gathered by index from the latent cache, which
holds every frame of the split in RAM.

Layout::

    OUT/<expert>/{model.safetensors,config.json}   the expert (EMA weights); nav_come.experts.load_expert
    OUT/last/<expert>/                             resume state (run the same command to resume)
    OUT/cache/                                     latents, only if BASE/cache lacks them

The validation loss (no dropout, fixed draws) is computed on the ``val`` split, else ``test``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from nav_come.core.checkpoint import checkpoint_hash, load_checkpoint, read_config
from nav_come.core.data import dataset_config, read_split, split_path
from nav_come.core.precision import autocast, bf16_flag, resolve
from nav_come.core.train_loop import (
    Distributed,
    LoopConfig,
    add_run_args,
    cli_fail,
    fit,
    run_stages,
    setup_distributed,
    step_generator,
)
from nav_come.experts import EXPERTS, TRAINED, Expert, load_expert, save_expert
from nav_come.experts.common import train_only_memory
from nav_come.latents import LatentSet, LatentWindowDataset, cache_key, encode_split
from nav_come.memory_bank import FrameStore, RetrievalConfig
from nav_come.world_model import AE_DIR, BASE_DIR

VAL_SEED = 1234
VAL_BATCHES = 4


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nav_come.train_expert", description=__doc__.split("\n\n")[0])
    p.add_argument("--expert", required=True, choices=TRAINED, help="which expert or baseline to train")
    p.add_argument("--base", required=True, type=Path, help="world model folder with ae/ and base/ (and cache/)")
    p.add_argument("--data", required=True, type=Path, help="folder of RECON-format trajectory folders")
    p.add_argument("--out", required=True, type=Path, help="output folder (see the layout above)")
    p.add_argument("--steps", type=int, default=4000, help="optimiser steps in total")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget of this run")
    p.add_argument("--batch-size", type=int, default=32, help="batch per process")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    p.add_argument("--train", choices=("all", "memory"), default="all", help="weights trained (see above)")
    p.add_argument("--revisit-weight", type=float, default=2.0, help="sampling weight of revisit targets")
    p.add_argument("--window", type=int, help="stm: frames older than the context it sees (default 28)")
    p.add_argument("--stride", type=int, help="stm: every stride-th frame of the window (default 2)")
    p.add_argument("--train-history", type=int, help="full/ssm: newest history frames kept in training")
    p.add_argument("--k", type=int, default=2, help="sltm: frames retrieved per prediction")
    p.add_argument("--recall", action="store_true",
                   help="sltm: add the recall path (the nearest retrieved latent gated into the output)")
    p.add_argument("--init", type=Path, metavar="EXPERT_DIR",
                   help="start from this trained expert of the same kind (weights, settings), not the base")
    add_run_args(p)
    return p


def _settings(args: argparse.Namespace) -> dict:
    """Expert settings given on the command line (the rest keep the expert's defaults)."""
    if args.expert == "sltm":
        return {"retrieval": RetrievalConfig(k=args.k), "recall": args.recall}
    names = {"window": args.window, "stride": args.stride, "train_history": args.train_history}
    return {k: v for k, v in names.items() if v is not None}


def _latent_set(args: argparse.Namespace, dist: Distributed, ae, key: str, split: str) -> LatentSet:
    """The split's latents: BASE/cache when it holds them, else OUT/cache (rank 0 encodes first)."""
    names = read_split(split_path(args.data, split, args.split_dir, args.dataset))
    name = f"latents-{split}-{cache_key(key, args.data, names)}.safetensors"  # nav_come.latents' file name
    cache = args.base / "cache" if (args.base / "cache" / name).is_file() else args.out / "cache"
    kwargs = dict(split_dir=args.split_dir, dataset=args.dataset)
    result = encode_split(ae, key, args.data, split, cache, **kwargs) if dist.is_main else None
    dist.barrier()
    return result if result is not None else encode_split(ae, key, args.data, split, cache, progress=False, **kwargs)


def draw_batch(
    expert: Expert, windows: LatentWindowDataset, store: FrameStore, batch_size: int, g: torch.Generator
) -> dict[str, torch.Tensor]:
    """A training batch: base window (context, target, action, shift) plus the expert's memory."""
    items, shift = windows.sample_items(batch_size, g)  # (B,), (B,)
    batch = windows.gather(items, shift)
    newest = windows.index[items]  # (B,) global index of the newest context frame
    return {**batch, **expert.training_inputs(store, newest, newest + shift, g)}


def _expert(args: argparse.Namespace, base: torch.nn.Module, last: Path) -> Expert:
    """Resume from OUT/last (its config wins), or start from --init, or from the base."""
    cls = EXPERTS[args.expert]
    if (last / "model").is_dir():
        return cls(read_config(last / "model", args.expert)[1])
    if args.init is None:
        return cls.from_base(base, **_settings(args))
    start = load_expert(args.init)
    if start.kind != args.expert:
        raise ValueError(f"--init {args.init} holds a {start.kind} expert, not {args.expert}")
    if args.expert != "sltm":
        return start.train()
    c = start.config
    return cls.from_base(start.network, c.retrieval, c.retrieval_dropout, c.contrast, recall=args.recall or c.recall)


def _revisit_share(windows: LatentWindowDataset, weight: float) -> float | None:
    """Share of sampled targets that are revisits (None when revisits are not weighted)."""
    if windows.weights is None:
        return None
    w = windows.weights
    return float(w[w == weight].sum() / w.sum()) if weight != 1.0 else None


def load_training_data(
    args: argparse.Namespace, dist: Distributed, context: int, max_shift: int, spacing: float
) -> dict:
    """Training (and validation) windows and frame stores: {"train": (windows, store), "val": ...}."""
    ae, _ = load_checkpoint(args.base / AE_DIR, "ae", dist.device)
    key, out = checkpoint_hash(args.base / AE_DIR), {}
    splits = [s for s in ("val", "test") if split_path(args.data, s, args.split_dir, args.dataset).is_file()][:1]
    for split in ["train", *splits]:
        latents = _latent_set(args, dist, ae, key, split)
        weight, seed = (args.revisit_weight, args.seed) if split == "train" else (1.0, 0)  # validation: uniform
        windows = LatentWindowDataset(latents, context, max_shift, spacing, weight, seed)
        out["train" if split == "train" else "val"] = (
            windows,
            FrameStore(latents.latents, latents.poses, latents.starts, spacing),
        )
    out["val_split"] = splits[0] if splits else None
    return out


def _metadata(args: argparse.Namespace, dist: Distributed, base_meta: dict, extra: dict) -> dict:
    return {
        "expert": args.expert,
        "base": str(args.base),
        "base_steps": base_meta.get("steps"),
        "init": str(args.init) if args.init else None,
        "data": str(args.data),
        "train": args.train,
        "revisit_weight": args.revisit_weight,
        "batch_size": args.batch_size * dist.world,
        "lr": args.lr,
        "precision": resolve(args.precision, dist.device),
        "schedule": base_meta.get("schedule"),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "command": shlex.join(["python", "-m", "nav_come.train_expert", *args.argv]),
        **extra,
    }


def prepare(args: argparse.Namespace, dist: Distributed):
    """Everything the run needs; returns the ``fit`` call to make."""
    base, base_meta = load_checkpoint(args.base / BASE_DIR, "dit", "cpu")
    spacing = dataset_config(args.data, args.dataset, args.spacing).metric_waypoint_spacing
    last = args.out / "last" / args.expert
    torch.manual_seed(args.seed)
    expert = _expert(args, base, last)
    if args.train == "memory":
        train_only_memory(expert.network, base.patch_embed.weight.shape[1])
    data = load_training_data(args, dist, expert.network.config.context, expert.network.config.max_shift, spacing)
    loop = LoopConfig(args.steps, args.batch_size, args.lr, bf16=bf16_flag(args.precision), val_every=args.val_every,
                      ckpt_every_min=args.ckpt_every_min, max_minutes=args.max_minutes, seed=args.seed)  # fmt: skip
    share = _revisit_share(data["train"][0], args.revisit_weight)
    if dist.is_main and share is not None:
        print(f"revisit targets: {100 * share:.0f}% of the sampled training targets", file=sys.stderr)
    meta = _metadata(
        args, dist, base_meta, {"revisit_share": share, "val_split": data["val_split"], "spacing": spacing}
    )

    def batch_of(split: str, model: Expert, g: torch.Generator) -> dict:
        batch = draw_batch(model, *data[split], loop.batch_size, g)
        return {k: v.to(dist.device) for k, v in batch.items()}

    def loss_fn(model: Expert, g: torch.Generator) -> torch.Tensor:
        return model.training_loss(batch_of("train", model, g), g)

    @torch.no_grad()
    def val_fn(ema: Expert) -> float:
        g = step_generator(VAL_SEED, 0, 0)
        with autocast(dist.device, loop.bf16):
            losses = [ema.training_loss(batch_of("val", ema, g), g, dropout=False).item() for _ in range(VAL_BATCHES)]
        return float(np.mean(losses))

    def export(ema: Expert, info: dict) -> None:
        save_expert(args.out / args.expert, ema, {**meta, **info})

    val = val_fn if "val" in data else None
    return lambda: fit(expert, args.expert, loss_fn, loop, dist, last, export, val, f"{args.expert} expert")


def _fail(message: str) -> int:
    return cli_fail("nav_come.train_expert", message)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.recall and args.expert != "sltm":
        return _fail(f"--recall is a spatial expert's path; it does not apply to --expert {args.expert}")
    for flag, folder in (("--data", args.data), ("--base", args.base), ("--init", args.init)):
        if folder is None:
            continue
        if not folder.is_dir():
            return _fail(f"{flag} folder {folder} does not exist")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        dist = setup_distributed(args.device)
    except ValueError as e:
        return _fail(str(e))
    return run_stages("nav_come.train_expert", args.out, [lambda: prepare(args, dist)])


if __name__ == "__main__":
    sys.exit(main())
