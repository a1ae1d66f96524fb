"""Train the latent autoencoder, then the base expert on cached latents.

    python -m nav_come.train --data DIR --out runs/sim --preset small [--stage ae|dit|all]
    torchrun --nproc_per_node 8 -m nav_come.train --data DIR --out runs/recon --preset base --device cuda

Layout of ``--out DIR``::

    DIR/ae/{model.safetensors,config.json}     autoencoder (EMA weights, latent scale in the config)
    DIR/base/{model.safetensors,config.json}   base expert (EMA weights, noise schedule in the metadata)
    DIR/last/{ae,base}/                        resume state of each stage (nav_come.core.train_loop)
    DIR/cache/latents-<split>-<key>.safetensors   frozen-AE latents of every frame

``WorldModel.from_pretrained(DIR)`` loads it; to ship a model copy ``DIR/ae`` and
``DIR/base`` only (e.g. to ``checkpoints/<name>/``). Running the same command again
resumes each stage from ``DIR/last``; a stage whose steps are done is skipped.
Options ``--steps/--max-minutes/--batch-size/--lr`` configure the denoiser stage and
``--ae-*`` the autoencoder stage. The validation loss is computed on the test split
(skipped when it has none). Mistakes such as a missing data folder, an unknown preset
or a bad checkpoint print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from nav_come.autoencoder import AEConfig, Autoencoder
from nav_come.core.checkpoint import CheckpointError, checkpoint_hash, load_checkpoint, read_config, save_checkpoint
from nav_come.core.data import dataset_config, load_frames, read_split, read_trajectory, split_path
from nav_come.core.layout import data_world
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
from nav_come.diffusion import COSINE
from nav_come.dit import DIT_PRESETS, DiT, dit_config, dit_training_loss
from nav_come.latents import LatentWindowDataset, encode_split
from nav_come.world_model import AE_DIR, BASE_DIR

VAL_SEED = 1234  # fixed validation draws: the curve compares like with like
VAL_BATCHES = 4


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nav_come.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, help="folder of RECON-format trajectory folders")
    p.add_argument("--out", required=True, type=Path, help="output folder (see the layout above)")
    p.add_argument("--preset", default="small", help=f"denoiser preset: {', '.join(DIT_PRESETS)}")
    p.add_argument("--stage", choices=("ae", "dit", "all"), default="all")
    p.add_argument("--ae", type=Path, help="autoencoder checkpoint for --stage dit (default OUT/ae)")
    p.add_argument("--init", type=Path, help="base checkpoint whose weights start the denoiser stage (warm start)")
    p.add_argument("--steps", type=int, default=10000, help="denoiser optimiser steps in total")
    p.add_argument("--max-minutes", type=float, help="denoiser wall-clock budget of this run")
    p.add_argument("--batch-size", type=int, default=32, help="denoiser batch per process")
    p.add_argument("--lr", type=float, default=2e-4, help="denoiser AdamW learning rate")
    p.add_argument("--max-shift", type=int, default=4, help="largest time shift (frames) to the target")
    p.add_argument("--context", type=int, default=4, help="context frames")
    p.add_argument("--revisit-weight", type=float, default=1.0, help="sampling weight of revisit targets")
    p.add_argument("--contact-weight", type=float, default=1.0,
                   help="sampling weight of windows where a step fell short of its command (data with commands)")
    p.add_argument("--min-snr", type=float, help="Min-SNR-gamma loss weighting (off by default)")
    p.add_argument("--ae-steps", type=int, default=2000, help="autoencoder optimiser steps in total")
    p.add_argument("--ae-max-minutes", type=float, help="autoencoder wall-clock budget of this run")
    p.add_argument("--ae-batch-size", type=int, default=64)
    p.add_argument("--ae-lr", type=float, default=1e-3)
    p.add_argument("--ae-max-frames", type=int, default=30000, help="training frames held in memory for the AE")
    p.add_argument("--image-size", type=int, default=64, help="square frame side the AE is trained at")
    add_run_args(p)
    return p


def _loop(args: argparse.Namespace, ae: bool) -> LoopConfig:
    return LoopConfig(
        steps=args.ae_steps if ae else args.steps,
        batch_size=args.ae_batch_size if ae else args.batch_size,
        lr=args.ae_lr if ae else args.lr,
        bf16=bf16_flag(args.precision),
        val_every=args.val_every,
        ckpt_every_min=args.ckpt_every_min,
        max_minutes=args.ae_max_minutes if ae else args.max_minutes,
        seed=args.seed,
    )


def _metadata(args: argparse.Namespace, dist: Distributed, loop: LoopConfig) -> dict:
    return {
        "data": str(args.data),
        "world": data_world(args.data),
        "dataset": args.dataset,
        "seed": args.seed,
        "batch_size": loop.batch_size * dist.world,
        "lr": loop.lr,
        "precision": resolve(args.precision, dist.device),
        "device": str(dist.device),
        "world_size": dist.world,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
        + (f", {torch.cuda.get_device_name(dist.device)}" if dist.device.type == "cuda" else ""),
        "torch": torch.__version__,
        "command": shlex.join(["python", "-m", "nav_come.train", *args.argv]),
    }


def _split_names(args: argparse.Namespace, split: str, required: bool) -> list[str] | None:
    path = split_path(args.data, split, args.split_dir, args.dataset)
    if not required and not path.is_file():
        return None
    return read_split(path)


def load_split_frames(data_dir: Path, names: list[str], image_size: int, max_frames: int, seed: int) -> torch.Tensor:
    """Up to ``max_frames`` frames of ``names``, spread uniformly at random: (N, 3, H, W) uint8."""
    lengths = [len(read_trajectory(data_dir / n, load_images=False)) for n in names]
    total = sum(lengths)
    chosen = np.arange(total)
    if total > max_frames:
        chosen = np.sort(np.random.default_rng(seed).choice(total, max_frames, replace=False))
    starts = np.cumsum([0, *lengths])
    frames = []
    for i, name in enumerate(names):
        idx = chosen[(chosen >= starts[i]) & (chosen < starts[i + 1])] - starts[i]
        if len(idx):
            frames.append(load_frames(data_dir / name, idx.tolist(), image_size))  # (n, H, W, 3)
    return torch.from_numpy(np.concatenate(frames)).permute(0, 3, 1, 2).contiguous()


def _resume(last_dir: Path, kind: str) -> tuple[object | None, int]:
    """(config, step) of an interrupted run of this stage (its config wins over the command line)."""
    if not (last_dir / "model").is_dir():
        return None, 0
    _, config, meta = read_config(last_dir / "model", kind)
    return config, int(meta.get("steps", 0))


def _say(message: str, dist: Distributed) -> None:
    if dist.is_main:
        print(message, file=sys.stderr)


def prepare_ae(args: argparse.Namespace, dist: Distributed) -> functools.partial:
    """Everything the autoencoder stage needs; returns the ``fit`` call to run."""
    loop, last = _loop(args, ae=True), args.out / "last" / AE_DIR
    config, done = _resume(last, "ae")
    if done >= loop.steps:  # nothing to train: don't decode the frames
        message = f"autoencoder: already trained for {done} steps ({last}); skipping this stage"
        return functools.partial(_say, message, dist)
    config = config or AEConfig(image_size=args.image_size)
    train_names, test_names = _split_names(args, "train", True), _split_names(args, "test", False)
    frames = load_split_frames(args.data, train_names, config.image_size, args.ae_max_frames, args.seed)
    val = load_split_frames(args.data, test_names, config.image_size, 512, args.seed) if test_names else None
    torch.manual_seed(args.seed)  # the initial weights follow --seed
    meta = {**_metadata(args, dist, loop), "frames": len(frames)}

    def loss_fn(model: Autoencoder, g: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(frames), (loop.batch_size,), generator=g)
        return model.loss(frames[idx].to(dist.device))

    @torch.no_grad()
    def val_fn(ema: Autoencoder) -> float:
        with autocast(dist.device, loop.bf16):
            return float(np.mean([ema.loss(x.to(dist.device)).item() for x in val.split(128)]))

    def export(ema: Autoencoder, info: dict) -> None:
        sample = frames[torch.randperm(len(frames), generator=torch.Generator().manual_seed(args.seed))[:2048]]
        ema.config.scale_factor = ema.estimate_scale_factor(sample.to(dist.device))
        save_checkpoint(args.out / AE_DIR, ema, "ae", {**meta, **info})

    val_fn = val_fn if val is not None else None
    return functools.partial(fit, Autoencoder(config), "ae", loss_fn, loop, dist, last, export, val_fn, "autoencoder")


def _latents(args: argparse.Namespace, dist: Distributed, ae: Autoencoder, key: str, split: str):
    """Rank 0 encodes (or reads) the cache first; the other ranks then read it."""
    kwargs = dict(split_dir=args.split_dir, dataset=args.dataset)
    result = encode_split(ae, key, args.data, split, args.out / "cache", **kwargs) if dist.is_main else None
    dist.barrier()
    if result is None:
        result = encode_split(ae, key, args.data, split, args.out / "cache", progress=False, **kwargs)
    return result


def prepare_dit(args: argparse.Namespace, dist: Distributed) -> functools.partial:
    """Everything the base-expert stage needs; returns the ``fit`` call to run."""
    loop, last = _loop(args, ae=False), args.out / "last" / BASE_DIR
    ae_dir = args.ae or args.out / AE_DIR
    ae, _ = load_checkpoint(ae_dir, "ae", dist.device)
    ae.requires_grad_(False).eval()
    key = checkpoint_hash(ae_dir)
    spacing = dataset_config(args.data, args.dataset, args.spacing).metric_waypoint_spacing
    shape = dict(latent_channels=ae.config.latent_channels, latent_size=ae.config.latent_size)
    config = _resume(last, "dit")[0]
    init = None
    if config is None and args.init is not None:  # a resumed run keeps its own weights
        init, init_meta = load_checkpoint(args.init, "dit")
        if init_meta.get("ae_hash") not in (None, key):
            print(f"warning: {args.init} was trained on another autoencoder's latents than {ae_dir}'s", file=sys.stderr)
        config = init.config
    config = config or dit_config(args.preset, context=args.context, max_shift=args.max_shift, **shape)
    if (config.latent_channels, config.latent_size) != tuple(shape.values()):
        raise CheckpointError(f"{last} was trained on other latents than {ae_dir}'s; delete {last} to restart")
    train = LatentWindowDataset(
        _latents(args, dist, ae, key, "train"),
        config.context,
        config.max_shift,
        spacing,
        args.revisit_weight,
        args.seed,
        args.contact_weight,
    )
    test = None  # validation windows are drawn uniformly, as the test split comes
    if _split_names(args, "test", False) is not None:
        test = LatentWindowDataset(_latents(args, dist, ae, key, "test"), config.context, config.max_shift, spacing)
    torch.manual_seed(args.seed)  # the initial weights follow --seed
    meta = {**_metadata(args, dist, loop), "ae": str(ae_dir), "ae_hash": key, "spacing": spacing}
    if args.init is not None:
        meta["init"] = str(args.init)
    meta["schedule"] = dataclasses.asdict(COSINE)

    def batch_of(data: LatentWindowDataset, g: torch.Generator) -> dict[str, torch.Tensor]:
        return {k: v.to(dist.device) for k, v in data.sample_batch(loop.batch_size, g).items()}

    def loss_fn(model: DiT, g: torch.Generator) -> torch.Tensor:
        return dit_training_loss(model, batch_of(train, g), g, min_snr_gamma=args.min_snr)

    @torch.no_grad()
    def val_fn(ema: DiT) -> float:
        g = step_generator(VAL_SEED, 0, 0)
        with autocast(dist.device, loop.bf16):
            losses = [dit_training_loss(ema, batch_of(test, g), g, dropout=False).item() for _ in range(VAL_BATCHES)]
        return float(np.mean(losses))

    def export(ema: DiT, info: dict) -> None:
        save_checkpoint(args.out / BASE_DIR, ema, "dit", {**meta, **info})

    val_fn = val_fn if test is not None else None
    desc = f"base expert ({config.preset})"
    return functools.partial(fit, init or DiT(config), "dit", loss_fn, loop, dist, last, export, val_fn, desc)


def _fail(message: str) -> int:
    return cli_fail("nav_come.train", message)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded in the checkpoints' metadata
    if not args.data.is_dir():
        return _fail(f"data folder {args.data} does not exist: pass the folder that holds the trajectory folders")
    if args.preset not in DIT_PRESETS:
        return _fail(f"unknown preset {args.preset!r}: choose one of {', '.join(DIT_PRESETS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        dist = setup_distributed(args.device)
    except ValueError as e:
        return _fail(str(e))
    stages = {"ae": [prepare_ae], "dit": [prepare_dit], "all": [prepare_ae, prepare_dit]}[args.stage]
    return run_stages("nav_come.train", args.out, [functools.partial(p, args, dist) for p in stages])


if __name__ == "__main__":
    sys.exit(main())
