"""One training loop for every stage: AdamW, EMA, bf16 autocast, DDP, resume, checkpoints.

A stage hands :func:`fit` its model, an objective ``loss_fn(model, generator) -> loss``
(which draws its own batch), an optional validation function and an ``export`` callback
that writes the stage's checkpoint from the EMA weights.

Resume state lives in ``last_dir``::

    last_dir/model/   checkpoint of the raw weights   (nav_come.core.checkpoint format)
    last_dir/ema/     checkpoint of the EMA weights
    last_dir/trainer.pt  {"optimizer", "step", "elapsed_s"}

It is written atomically (rank 0 only) every ``ckpt_every_min`` minutes, at the end,
when ``max_minutes`` runs out and on Ctrl-C or SIGTERM; a later run with the same
``--out`` continues from it. All randomness of step k comes from a generator seeded by
``(seed, rank, k)``, so a resumed run draws exactly the batches and noise it would have
drawn without the interruption.

Under ``torchrun`` (WORLD_SIZE > 1) the process group is initialised (gloo on CPU, nccl
on CUDA), the objective runs inside DistributedDataParallel, each rank draws its own
batches from its own seed (rank-sharded sampling) and only rank 0 writes or validates.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from nav_come.core.checkpoint import WEIGHTS, CheckpointError, load_weights, save_checkpoint
from nav_come.core.data.config import add_data_args
from nav_come.core.io import atomic_directory
from nav_come.core.precision import add_precision_arg, autocast

TRAINER_STATE = "trainer.pt"


@dataclass
class LoopConfig:
    """Optimisation settings of one stage.

    steps: total optimiser steps (a resumed run continues up to it).
    batch_size: samples per step and rank.
    lr, weight_decay, warmup: AdamW, linear warm-up over ``warmup`` steps, then constant.
    ema_decay: EMA decay (warmed up as ``min(decay, (1 + k) / (10 + k))``).
    grad_clip: max global gradient norm (0 disables).
    bf16: bf16 autocast for the forward pass (None: where the device runs it natively).
    val_every: validation period in steps (0 disables).
    ckpt_every_min: resume-state period in minutes.
    max_minutes: wall-clock budget of this run (None: until ``steps``).
    seed: seeds every random draw of the loop.
    """

    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    warmup: int = 100
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    bf16: bool | None = None
    val_every: int = 500
    ckpt_every_min: float = 5.0
    max_minutes: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.warmup < 0 or self.val_every < 0:
            raise ValueError(
                f"need steps >= 0, batch_size >= 1, warmup >= 0, val_every >= 0; got "
                f"{self.steps}, {self.batch_size}, {self.warmup}, {self.val_every}"
            )
        if not (self.lr > 0 and 0 <= self.ema_decay < 1 and self.ckpt_every_min > 0):
            raise ValueError(
                f"need lr > 0, 0 <= ema_decay < 1, ckpt_every_min > 0; got "
                f"{self.lr}, {self.ema_decay}, {self.ckpt_every_min}"
            )
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be > 0, got {self.max_minutes}")


@dataclass
class Distributed:
    """This process's place in a (possibly single-process) run."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()


def check_device(device: str, indexed: bool = False) -> str:
    """``device`` ("auto": CUDA when available) as "cpu" or "cuda" (with ``indexed``, also
    "cuda:N"); ValueError, one line with the fix, for anything else or for CUDA that torch lacks."""
    kinds = "cpu, cuda, cuda:N or auto" if indexed else "cpu, cuda or auto"
    name, _, index = device.partition(":")
    if name not in ("auto", "cpu", "cuda") or (index and not (indexed and name == "cuda" and index.isdigit())):
        raise ValueError(f"--device must be {kinds}, got {device!r}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ValueError(f"--device {device} was asked for but torch {torch.__version__} ({build}) sees no CUDA "
                         "device; use --device cpu")  # fmt: skip
    if index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def setup_distributed(device: str = "auto") -> Distributed:
    """Read torchrun's environment; init the process group when WORLD_SIZE > 1.

    device: "auto" (CUDA when available), "cpu" or "cuda" (see :func:`cuda_placement`).
    """
    device = check_device(device)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    dev, backend = torch.device("cpu"), "gloo"
    if device == "cuda":
        local_rank, local_world = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        index, backend = cuda_placement(local_rank, local_world, torch.cuda.device_count())
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group(backend)
    return Distributed(rank, world, dev)


def cuda_placement(local_rank: int, local_world: int, n_gpus: int) -> tuple[int, str]:
    """The GPU of local rank ``local_rank`` and the process-group backend.

    One rank per GPU: rank r on cuda:r, nccl. More ranks than GPUs (small models that leave a
    GPU idle between kernel launches, e.g. ``torchrun --nproc_per_node 8`` on one GPU): ranks
    share the GPUs round-robin and talk over gloo, since nccl needs one GPU per rank.
    """
    return local_rank % n_gpus, "nccl" if local_world <= n_gpus else "gloo"


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The CPU generator of one step: a pure function of (seed, rank, step)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + rank) * 1_000_000_007 + step)


class _Objective(nn.Module):
    """Puts the objective inside forward so DDP sees (and syncs) every parameter it uses."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, torch.Generator], torch.Tensor]):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, generator: torch.Generator) -> torch.Tensor:
        return self.loss_fn(self.model, generator)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, for parameters; buffers are copied."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


def save_state(
    last_dir: Path,
    kind: str,
    model: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    elapsed_s: float,
) -> None:
    """Write the resume state folder atomically (see the module docstring)."""
    with atomic_directory(last_dir) as tmp:
        save_checkpoint(tmp / "model", model, kind, {"steps": step})
        save_checkpoint(tmp / "ema", ema, kind, {"steps": step})
        torch.save({"optimizer": optimizer.state_dict(), "step": step, "elapsed_s": elapsed_s}, tmp / TRAINER_STATE)


def load_state(
    last_dir: Path, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[int, float]:
    """Restore weights, EMA and optimizer from ``last_dir``; (step, elapsed_s), or (0, 0) when absent."""
    path = last_dir / TRAINER_STATE
    if not path.is_file():
        return 0, 0.0
    load_weights(model, last_dir / "model" / WEIGHTS, device)
    load_weights(ema, last_dir / "ema" / WEIGHTS, device)
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
    except Exception as e:  # any failure means the resume state is unusable
        raise CheckpointError(f"{path} is corrupt ({type(e).__name__}); delete {last_dir} to restart this stage") from e
    return int(state["step"]), float(state["elapsed_s"])


def _train_step(
    net: nn.Module,
    model: nn.Module,
    ema: nn.Module,
    opt: torch.optim.Optimizer,
    loop: LoopConfig,
    dist: Distributed,
    step: int,
) -> float:
    """One optimiser step at global step ``step``; returns the loss."""
    for group in opt.param_groups:
        group["lr"] = loop.lr * min(1.0, (step + 1) / max(loop.warmup, 1))
    with autocast(dist.device, loop.bf16):
        loss = net(step_generator(loop.seed, dist.rank, step))
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the loss became {loss.item()} at step {step}; lower --lr or use --precision fp32")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if loop.grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), loop.grad_clip)
    opt.step()
    ema_update(ema, model, min(loop.ema_decay, (1 + step) / (10 + step)))
    return loss.item()


def _agree(flag: bool, dist: Distributed) -> bool:
    """Rank 0's decision, shared with every rank (clocks differ between processes)."""
    if dist.world == 1:
        return flag
    t = torch.tensor([float(flag)], device=dist.device)
    tdist.broadcast(t, 0)
    return bool(t.item())


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible():
    """SIGTERM and SIGINT raise KeyboardInterrupt, so a killed run saves its resume state.

    (A job started with ``&`` from a script inherits SIGINT ignored; ``kill`` sends SIGTERM.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def fit(
    model: nn.Module,
    kind: str,
    loss_fn: Callable[[nn.Module, torch.Generator], torch.Tensor],
    loop: LoopConfig,
    dist: Distributed,
    last_dir: Path,
    export: Callable[[nn.Module, dict], None],
    val_fn: Callable[[nn.Module], float] | None = None,
    desc: str = "train",
) -> int:
    """Train ``model`` (resuming from ``last_dir``) until ``loop.steps`` or ``loop.max_minutes``.

    export(ema_model, info) writes the stage's checkpoint; rank 0 calls it with
    info = {"steps", "wall_s", "val_loss"} at every resume-state save. Returns the step reached.
    """
    model.to(dist.device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=loop.lr, weight_decay=loop.weight_decay)
    step, elapsed_before = load_state(last_dir, model, ema, opt, dist.device)
    if step >= loop.steps and step > 0:  # finished earlier: keep its export (and the hashes of it) unchanged
        if dist.is_main:
            tqdm.write(f"{desc}: already trained for {step} steps ({last_dir}); raise the step count to continue")
        return step
    net = _Objective(model, loss_fn)
    if dist.world > 1:
        net = DistributedDataParallel(net, device_ids=[dist.device] if dist.device.type == "cuda" else None)
    start = last_save = time.monotonic()
    info: dict = {"val_loss": None}

    def checkpoint() -> None:
        if dist.is_main:
            wall = elapsed_before + time.monotonic() - start
            save_state(last_dir, kind, model, ema, opt, step, wall)
            export(ema, {"steps": step, "wall_s": round(wall, 1), **info})

    bar = tqdm(total=loop.steps, initial=step, desc=desc, disable=not dist.is_main, dynamic_ncols=True)
    smooth = math.nan
    with interruptible():
        try:
            while step < loop.steps:
                loss = _train_step(net, model, ema, opt, loop, dist, step)
                step += 1
                smooth = loss if math.isnan(smooth) else 0.98 * smooth + 0.02 * loss
                if val_fn is not None and loop.val_every and step % loop.val_every == 0 and dist.is_main:
                    info["val_loss"] = round(val_fn(ema), 6)
                bar.update(1)
                bar.set_postfix(loss=f"{smooth:.4f}", val=info["val_loss"], refresh=False)
                now = time.monotonic()
                if now - last_save >= 60 * loop.ckpt_every_min:
                    checkpoint()
                    last_save = now
                if _agree(loop.max_minutes is not None and now - start >= 60 * loop.max_minutes, dist):
                    break
        except KeyboardInterrupt:
            bar.close()
            checkpoint()
            raise
    bar.close()
    if val_fn is not None and dist.is_main:
        info["val_loss"] = round(val_fn(ema), 6)
    checkpoint()
    dist.barrier()  # the next stage reads what rank 0 just wrote
    return step


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The flags every training CLI shares: split layout, device, threads, precision, seed, validation and
    resume-state periods."""
    add_data_args(p)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is faster when other jobs share the cores)")
    add_precision_arg(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-every", type=int, default=500, help="validation period in steps (0: off)")
    p.add_argument("--ckpt-every-min", type=float, default=5.0, help="resume-state period in minutes")


def cli_fail(prog: str, message: str) -> int:
    """A user mistake: one line on stderr, exit status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def run_stages(prog: str, out: Path, stages: list[Callable[[], Callable[[], object]]]) -> int:
    """Prepare then run each training stage of a CLI, turning failures into exit statuses.

    A stage is ``prepare() -> run``. Bad data or checkpoints exit 2 with one line, a
    diverged run exits 1, Ctrl-C exits 130 after the loop saved its resume state.
    """
    try:
        for prepare in stages:
            try:
                run = prepare()
            except (CheckpointError, ValueError, FileNotFoundError) as e:  # DataFormatError is a ValueError
                return cli_fail(prog, str(e).splitlines()[0] if str(e) else type(e).__name__)
            try:
                run()
            except CheckpointError as e:  # a corrupt resume state
                return cli_fail(prog, str(e))
            except FloatingPointError as e:  # diverged: not a bug, a setting to change
                print(f"{prog}: {e}", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: state saved under {out / 'last'}; run the same command to resume", file=sys.stderr)
        return 130
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()
    return 0


def add_head_args(p: argparse.ArgumentParser, steps: int, data_help: str = "folder of RECON-format trajectory folders"):
    """The flags of a small head trained on cached latents (pose distance, clearance, progress), then
    :func:`add_run_args`; the head adds its own between."""
    p.add_argument("--data", required=True, type=Path, help=data_help)
    p.add_argument("--ckpt", required=True, type=Path, help="checkpoint folder whose ae/ encodes the frames")
    p.add_argument("--out", required=True, type=Path, help="output folder (model + last/ resume state)")
    p.add_argument("--cache", type=Path, default=Path("runs/latents"),
                   help="latent cache folder (nav_come.latents; one file per split, reused when it fits)")  # fmt: skip
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--max-minutes", type=float, help="wall-clock budget of this run")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)


def head_setup(args: argparse.Namespace, kind: str, make_config: Callable[[int, int], object]):
    """(frozen autoencoder, its hash: the latent cache's key, the head's config) of a head's run: a
    resumed run keeps its config, a new one gets ``make_config(latent_channels, latent_size)``."""
    from nav_come.core.checkpoint import CONFIG, checkpoint_hash, load_checkpoint, read_config

    ae, _ = load_checkpoint(args.ckpt / "ae", "ae", "cpu")
    last = args.out / "last"
    if (last / "model" / CONFIG).is_file():
        config = read_config(last / "model", kind)[1]
    else:
        c = ae.config
        config = make_config(c.latent_channels, c.image_size // 2 ** (len(c.widths) - 1))
    return ae, checkpoint_hash(args.ckpt / "ae"), config


def head_loop(args: argparse.Namespace) -> LoopConfig:
    """The optimisation of a small head, from its CLI's flags (:func:`add_head_args`)."""
    from nav_come.core.precision import bf16_flag

    return LoopConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=0.05, warmup=100,
                      ema_decay=0.999, bf16=bf16_flag(args.precision), val_every=args.val_every,
                      ckpt_every_min=args.ckpt_every_min, max_minutes=args.max_minutes, seed=args.seed)  # fmt: skip


def head_metadata(args: argparse.Namespace, prog: str, **extra) -> dict:
    """What a head's checkpoint records of its run: data, seed, batch, machine, the reproduce command."""
    import platform
    import shlex

    return {"data": str(args.data), "ckpt": str(args.ckpt), "seed": args.seed, "batch_size": args.batch_size,
            "lr": args.lr, **extra, "machine": f"{platform.system()} {platform.machine()}", "torch": torch.__version__,
            "command": shlex.join(["python", "-m", prog, *args.argv])}  # fmt: skip


def head_cli(prog: str, parser: argparse.ArgumentParser, prepare: Callable, argv: list[str] | None = None) -> int:
    """The CLI of a small head trained on cached latents (pose distance, clearance): parse,
    check ``--data``, set ``--threads``, then ``prepare(args, dist)``'s fit through :func:`run_stages`.
    ``args.argv`` keeps the command line for the checkpoint's reproduce command."""
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not args.data.is_dir():
        return cli_fail(prog, f"data folder {args.data} does not exist")
    if args.threads:
        torch.set_num_threads(args.threads)
    return run_stages(prog, args.out, [lambda: prepare(args, setup_distributed(args.device))])
