"""Progressive distillation (Salimans & Ho 2022) of the base and the memory experts into 1-2 step samplers.

    python -m nav_come.distill --expert base --ckpt checkpoints/maze --data data/maze --out runs/distill
    python -m nav_come.distill --expert stm --ckpt checkpoints/maze --data data/maze --out runs/distill --rounds 4 2 1
    torchrun --nproc_per_node 8 -m nav_come.distill --expert sltm --ckpt C --data D --out O --device cuda

A round turns a teacher sampled with DDIM at N steps into a student sampled with DDIM at M
steps (N a multiple of M, usually 2M): the student starts as a copy of the teacher and learns
to land, in ONE DDIM step of its grid, where the teacher lands in N/M DDIM steps of its own
(v-prediction on the cosine schedule, v-MSE on data noised at the student's grid times). The
grids are :func:`nav_come.diffusion.ddim_sample`'s (``linspace(1, 0, steps + 1)``; the last
step returns the x0 estimate), so the student is exactly what that sampler runs. ``--rounds
4 2 1`` (default): the trained network at 4 steps teaches a 2-step student, which teaches a
1-step student. The student keeps the teacher's class, config and conditioning, and is
trained with the expert's own training batches and condition dropout, so its unconditional
(contrastive) branch is distilled too and it drops into every place the original goes
(``ComposedDenoiser``, ``WorldModel``, planners): composition still happens at sampling
time; only the sampler's step count changes. Each expert is distilled on its own, so a
composition of distilled experts is a composition of few-step networks, not a distilled
composition: measure it (``eval/predict.py --distilled``, ``eval/ate_rpe.py --distilled``).

Layout of ``--out DIR`` (a checkpoint folder per step count, so every expert loader reads it)::

    DIR/<k>step/{base,stm,sltm,ssm,full}/{model.safetensors,config.json}   distilled for k DDIM steps
    DIR/<k>step/ltm/config.json    the LTM's settings, copied from CKPT/ltm when present (its adapter
                                   sits on the distilled base at test time: nothing to distil)
    DIR/last/<k>step/<expert>/     resume state (run the same command to resume)
    DIR/cache/                     latents, only if CKPT/cache lacks them

To ship them, copy ``DIR/<k>step`` (not ``last/`` or ``cache/``) to ``checkpoints/maze/distilled/``
(:data:`DISTILLED_DIR`), where ``python -m eval.bench plan`` finds them. The metadata records
the teacher and its hash, the distilled ``sampler_steps``, the rounds, steps, command, machine
and torch version. :func:`load_distilled` and :func:`distilled_world_model` load them;
``planners.methods.load_method(..., distilled=DIR, sampler_steps=k)`` plans with them.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from nav_come.core.checkpoint import CheckpointError, checkpoint_hash, load_checkpoint, read_config, save_checkpoint
from nav_come.core.data import dataset_config
from nav_come.core.io import atomic_write_text
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
from nav_come.diffusion import COSINE, CosineSchedule, _bcast, rand, randn
from nav_come.dit import DiT
from nav_come.experts import TRAINED, BaseExpert, MemoryExpert, SpatialExpert
from nav_come.experts.common import condition_dropout
from nav_come.train_expert import draw_batch, load_training_data
from nav_come.world_model import AE_DIR, BASE_DIR, WorldModel

NAMES = (BASE_DIR, *TRAINED)  # what can be distilled (the LTM has no offline weights)
DEFAULT_ROUNDS = (4, 2, 1)
DISTILLED_DIR = "distilled"  # CKPT/distilled: where the benchmark looks for the shipped ones
LTM_CONFIG = Path("ltm") / "config.json"
VAL_SEED = 1234
VAL_BATCHES = 4

Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (B, ...), t (B,)) -> v (B, ...)


def distilled_dir(root: str | os.PathLike, steps: int) -> Path:
    """The checkpoint folder of the networks distilled for ``steps`` DDIM steps."""
    return Path(root) / f"{steps}step"


def distilled_steps(root: str | os.PathLike) -> list[int]:
    """The step counts ``root`` holds distilled networks for, fewest first."""
    return sorted(int(p.name[:-4]) for p in Path(root).glob("*step") if p.is_dir() and p.name[:-4].isdigit())


def resolve_steps(root: str | os.PathLike, steps: int | None) -> int:
    """``steps``, or the fewest distilled in ``root``; CheckpointError when there is none."""
    have = distilled_steps(root)
    if not have:
        raise CheckpointError(f"{root} holds no distilled networks (<k>step/ folders); make them with "
                              f"`python -m nav_come.distill --out {root}`")  # fmt: skip
    return min(have) if steps is None else steps


# ---------------------------------------------------------------------- the objective


def sampler_times(steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(steps + 1,) the times :func:`nav_come.diffusion.ddim_sample` visits, from 1 to 0."""
    return torch.linspace(1.0, 0.0, steps + 1, device=device)


@torch.no_grad()
def distillation_target(teacher: Network, z: torch.Tensor, j: torch.Tensor, teacher_steps: int, student_steps: int,
                        schedule: CosineSchedule = COSINE) -> torch.Tensor:  # fmt: skip
    """v (B, ...) that makes ONE student DDIM step from ``z`` (at its grid time j (B,)) land where
    ``teacher_steps / student_steps`` teacher DDIM steps land.

    Non-final steps solve the student's step ``x_s = alpha_s x0 + sigma_s (z - alpha_t x0) / sigma_t``
    for the x0 that reaches the teacher's ``x_s``; at the final step the sampler returns its x0
    estimate, so the target is the teacher's x0 estimate at its own last step.
    """
    r = teacher_steps // student_steps
    fine, coarse = sampler_times(teacher_steps, z.device), sampler_times(student_steps, z.device)
    t, s = coarse[j], coarse[j + 1]  # (B,) the student's step
    x = z.float()
    for i in range(r):
        now = t if i == 0 else fine[j * r + i]  # the same times the teacher's own sampler visits
        nxt = s if i == r - 1 else fine[j * r + i + 1]
        v = teacher(x, now).float()
        x0, eps = schedule.x0_from_v(x, v, now), schedule.eps_from_v(x, v, now)
        alpha, sigma = schedule.alpha_sigma(nxt)
        x = _bcast(alpha, x) * x0 + _bcast(sigma, x) * eps  # deterministic DDIM (eta = 0)
    (alpha_t, sigma_t), (alpha_s, sigma_s) = schedule.alpha_sigma(t), schedule.alpha_sigma(s)
    ratio = sigma_s / sigma_t
    reach = (x - _bcast(ratio, z) * z) / _bcast(alpha_s - ratio * alpha_t, z)  # x0 whose step lands on x
    target = torch.where(_bcast(j == student_steps - 1, z), x0, reach)
    return schedule.v_from_x0(z.float(), target, t)


def distillation_loss(student: Network, teacher: Network, x0: torch.Tensor, teacher_steps: int, student_steps: int,
                      generator: torch.Generator | None = None,
                      schedule: CosineSchedule = COSINE) -> torch.Tensor:  # fmt: skip
    """v-MSE (scalar) of the student against :func:`distillation_target` at a random step of its
    grid, on data x0 (B, ...) noised to that step's time."""
    B, device = x0.shape[0], x0.device
    j = torch.randint(student_steps, (B,), generator=generator).to(device)  # (B,) student step
    t = sampler_times(student_steps, device)[j]
    z = schedule.add_noise(x0, randn(tuple(x0.shape), generator, device), t)
    target = distillation_target(teacher, z, j, teacher_steps, student_steps, schedule)
    return (student(z, t).float() - target).pow(2).flatten(1).mean(1).mean()


def network_of(model: nn.Module) -> nn.Module:
    """The denoising network of a base DiT (itself) or of an expert."""
    return model if isinstance(model, DiT) else model.network


def conditioned(
    model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None, dropout: bool = True
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(network, x_t, t) -> v`` under ``model``'s training condition for ``batch``, so that the
    student and its teacher see the same one.

    model: a base DiT or a trained expert. The condition and its dropout draws are exactly those
    of the model's own objective (``dit_training_loss``, ``training_loss``; tests check that the
    losses agree), so the unconditional and memory-dropped branches are distilled too.
    """
    B, device = batch["target"].shape[0], batch["target"].device
    kw = {k: batch[k] for k in ("context", "action", "shift")}
    if isinstance(model, DiT):
        if dropout:
            u = rand((2, B), generator, device)  # (2, B)
            kw |= {"uncond": u[0] < model.config.context_dropout, "drop_action": u[1] < model.config.action_dropout}
        return lambda net, x_t, t: net(x_t, t, **kw)
    if isinstance(model, MemoryExpert):
        drops = condition_dropout(model.network.config, B, generator, device, model.config.memory_dropout, dropout)
        kw |= {"extra_cond": batch["extra_cond"], **drops}

        def with_memory(net: nn.Module, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            memory, mask = net.encode_memory(batch["memory_frames"], batch["memory_features"], batch["memory_valid"])
            return net(x_t, t, **kw, memory=memory, memory_mask=mask)

        return with_memory
    if isinstance(model, SpatialExpert):
        drops = condition_dropout(model.network.config, B, generator, device, model.config.retrieval_dropout, dropout)
        keep = (~drops.pop("drop_memory")).float()  # (B,)
        kw |= {"extra_frames": batch["extra_frames"] * keep[:, None, None, None, None], **drops}
        kw["extra_cond"] = batch["extra_cond"] * keep[:, None]
        return lambda net, x_t, t: net(x_t, t, **kw)
    raise TypeError(f"cannot distil a {type(model).__name__}: expected a DiT or one of the experts {TRAINED}")


def round_loss(student: nn.Module, teacher: nn.Module, batch: dict[str, torch.Tensor], teacher_steps: int,
               student_steps: int, generator: torch.Generator | None, schedule: CosineSchedule = COSINE,
               dropout: bool = True) -> torch.Tensor:  # fmt: skip
    """The distillation loss of one batch, both models under the student's training condition."""
    call = conditioned(student, batch, generator, dropout)
    s_net, t_net = network_of(student), network_of(teacher)
    return distillation_loss(lambda x, t: call(s_net, x, t), lambda x, t: call(t_net, x, t), batch["target"],
                             teacher_steps, student_steps, generator, schedule)  # fmt: skip


# ---------------------------------------------------------------------- checkpoints


def _kind(name: str) -> str:
    return "dit" if name == BASE_DIR else name


def save_distilled(
    root: str | os.PathLike, name: str, model: nn.Module, steps: int, metadata: dict | None = None
) -> Path:
    """Write ``root/<steps>step/<name>`` (a base DiT or an expert), with ``sampler_steps`` in its metadata."""
    folder = distilled_dir(root, steps) / name
    return save_checkpoint(folder, network_of(model) if name == BASE_DIR else model, _kind(name),
                           {**(metadata or {}), "sampler_steps": steps})  # fmt: skip


def copy_ltm_settings(ckpt_dir: str | os.PathLike, root: str | os.PathLike, steps: int) -> None:
    """CKPT/ltm/config.json (the LTM's settings, if any) beside the networks distilled for ``steps``."""
    source = Path(ckpt_dir) / LTM_CONFIG
    if source.is_file():
        atomic_write_text(distilled_dir(root, steps) / LTM_CONFIG, source.read_text())


def _load(folder: Path, name: str, steps: int, device) -> tuple[nn.Module, dict]:
    model, meta = load_checkpoint(folder, _kind(name), device)
    found = meta.get("sampler_steps")
    if found != steps:
        raise CheckpointError(f"{folder} was distilled for {found} sampler steps, not {steps}; "
                              f"it belongs in {distilled_dir(folder.parents[1], found)}")  # fmt: skip
    return model.eval().requires_grad_(False), meta


def load_distilled(
    root: str | os.PathLike, name: str, steps: int, device: str | torch.device = "cpu"
) -> tuple[nn.Module, int]:
    """The expert ``name`` (BaseExpert for the base) with its network distilled for ``steps``
    DDIM steps, and that step count."""
    model, meta = _load(distilled_dir(root, steps) / name, name, steps, device)
    expert = BaseExpert(model) if name == BASE_DIR else model
    expert.schedule = CosineSchedule(**(meta.get("schedule") or {}))
    return expert, steps


def distilled_world_model(
    ckpt_dir: str | os.PathLike, root: str | os.PathLike, steps: int, device: str | torch.device = "cpu",
    bf16: bool | None = None,
) -> WorldModel:  # fmt: skip
    """The world model of ``ckpt_dir`` (its autoencoder) sampling with the base distilled for
    ``steps`` DDIM steps in ``root``."""
    folder, ckpt_dir = distilled_dir(root, steps) / BASE_DIR, Path(ckpt_dir)
    dit, meta = _load(folder, BASE_DIR, steps, device)
    original = meta.get("original_hash")
    if original is not None and original != checkpoint_hash(ckpt_dir / BASE_DIR):
        raise CheckpointError(f"{folder} was distilled from another base than {ckpt_dir / BASE_DIR}; distil it again")
    ae, _ = load_checkpoint(ckpt_dir / AE_DIR, "ae", device)
    schedule = CosineSchedule(**(meta.get("schedule") or {}))
    return WorldModel(ae, dit, schedule, steps, "ddim", bf16).eval().requires_grad_(False)


# ---------------------------------------------------------------------- the CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nav_come.distill", description=__doc__.split("\n\n")[0])
    p.add_argument("--expert", required=True, choices=NAMES, help="the network to distil")
    p.add_argument("--ckpt", required=True, type=Path, help="checkpoint folder with ae/, base/ and the experts")
    p.add_argument("--data", required=True, type=Path, help="folder of RECON-format trajectory folders")
    p.add_argument("--out", required=True, type=Path, help="output folder (see the layout above)")
    p.add_argument("--rounds", type=int, nargs="+", help=f"DDIM step counts, teacher first (default {DEFAULT_ROUNDS})")
    p.add_argument("--from-steps", type=int, help="instead of --rounds: halve from this step count ...")
    p.add_argument("--to-steps", type=int, help="... down to this one")
    p.add_argument("--steps-per-round", type=int, default=2000, help="optimiser steps of each round")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget of this run, all rounds together")
    p.add_argument("--batch-size", type=int, default=32, help="batch per process")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    p.add_argument("--revisit-weight", type=float, help="sampling weight of revisit targets (default: the teacher's)")
    add_run_args(p)
    return p


def rounds_of(args: argparse.Namespace) -> list[int]:
    """The step counts, teacher first; ValueError names the bad value."""
    if args.from_steps is not None or args.to_steps is not None:
        if args.rounds or args.from_steps is None or args.to_steps is None:
            raise ValueError("give either --rounds or both --from-steps and --to-steps")
        rounds = [args.from_steps]
        while rounds[-1] > args.to_steps and rounds[-1] % 2 == 0:
            rounds.append(rounds[-1] // 2)
        if rounds[-1] != args.to_steps:
            raise ValueError(f"--from-steps {args.from_steps} does not halve down to --to-steps {args.to_steps}")
    else:
        rounds = list(args.rounds or DEFAULT_ROUNDS)
    if len(rounds) < 2 or any(m < 1 or n <= m or n % m for n, m in zip(rounds, rounds[1:], strict=False)):
        raise ValueError(f"rounds must be >= 2 decreasing step counts, each a multiple of the next; got {rounds}")
    return rounds


def _metadata(args: argparse.Namespace, dist: Distributed) -> dict:
    gpu = f", {torch.cuda.get_device_name(dist.device)}" if dist.device.type == "cuda" else ""
    return {"expert": args.expert, "rounds": args.rounds, "round_steps": args.steps_per_round, "data": str(args.data),
            "revisit_weight": args.revisit_weight, "batch_size": args.batch_size * dist.world, "lr": args.lr,
            "precision": resolve(args.precision, dist.device), "sampler": "ddim", "torch": torch.__version__,
            "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs{gpu}",
            "command": shlex.join(["python", "-m", "nav_come.distill", *args.argv])}  # fmt: skip


def _check_resume(last: Path, out: Path, teacher_hash: str, teacher_steps: int) -> None:
    """A round's resume state must continue distilling the same teacher."""
    if not (last / "model").is_dir() or not out.is_dir():
        return
    meta = read_config(out)[2]
    if (meta.get("teacher_hash"), meta.get("teacher_steps")) != (teacher_hash, teacher_steps):
        raise CheckpointError(f"{last} was distilled from another teacher ({meta.get('teacher')} at "
                              f"{meta.get('teacher_steps')} steps); delete {last} to restart this round")  # fmt: skip


def finished(folder: Path) -> bool:
    """Whether the round that exports ``folder`` has run all its steps."""
    if not folder.is_dir():
        return False
    meta = read_config(folder)[2]
    return meta.get("steps", 0) >= meta.get("round_steps", 0)


def prepare_round(args: argparse.Namespace, dist: Distributed, data: Callable[..., dict], teacher_steps: int,
                  student_steps: int) -> Callable[[], object]:  # fmt: skip
    """One round (teacher at ``teacher_steps`` -> student at ``student_steps``); returns its ``fit`` call."""
    name, first = args.expert, teacher_steps == args.rounds[0]
    teacher_dir = args.ckpt / name if first else distilled_dir(args.out, teacher_steps) / name
    out, last = distilled_dir(args.out, student_steps) / name, args.out / "last" / f"{student_steps}step" / name
    desc = f"distil {name} {teacher_steps}->{student_steps} steps"
    if not first and not finished(teacher_dir):
        return functools.partial(tqdm.write, f"{desc}: waits for the round before it; run the same command again")
    remaining = None if args.deadline is None else (args.deadline - time.monotonic()) / 60
    if remaining is not None and remaining <= 0:
        return functools.partial(tqdm.write, f"{desc}: no time left in --max-minutes; run the same command again")
    teacher, teacher_meta = load_checkpoint(teacher_dir, _kind(name), dist.device)
    teacher_hash = checkpoint_hash(teacher_dir)
    _check_resume(last, out, teacher_hash, teacher_steps)
    teacher.eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    schedule = CosineSchedule(**(teacher_meta.get("schedule") or {}))
    loop = LoopConfig(args.steps_per_round, args.batch_size, args.lr, bf16=bf16_flag(args.precision),
                      val_every=args.val_every, ckpt_every_min=args.ckpt_every_min, max_minutes=remaining,
                      seed=args.seed)  # fmt: skip
    splits = data(network_of(teacher).config.context, network_of(teacher).config.max_shift)
    meta = {**_metadata(args, dist), "teacher": str(teacher_dir), "teacher_hash": teacher_hash,
            "teacher_steps": teacher_steps, "original": str(args.ckpt / name),
            "original_hash": teacher_hash if first else teacher_meta.get("original_hash"),
            "schedule": teacher_meta.get("schedule"), "spacing": teacher_meta.get("spacing"),
            "val_split": splits["val_split"]}  # fmt: skip

    def batch_of(split: str, model: nn.Module, g: torch.Generator) -> dict[str, torch.Tensor]:
        windows, store = splits[split]
        batch = windows.sample_batch(loop.batch_size, g) if isinstance(model, DiT) else \
            draw_batch(model, windows, store, loop.batch_size, g)  # fmt: skip
        return {k: v.to(dist.device) for k, v in batch.items()}

    def loss_fn(model: nn.Module, g: torch.Generator) -> torch.Tensor:
        return round_loss(model, teacher, batch_of("train", model, g), teacher_steps, student_steps, g, schedule)

    @torch.no_grad()
    def val_fn(ema: nn.Module) -> float:
        g = step_generator(VAL_SEED, 0, 0)
        with autocast(dist.device, loop.bf16):
            losses = [round_loss(ema, teacher, batch_of("val", ema, g), teacher_steps, student_steps, g, schedule,
                                 dropout=False).item() for _ in range(VAL_BATCHES)]  # fmt: skip
        return float(np.mean(losses))

    def export(ema: nn.Module, info: dict) -> None:
        save_distilled(args.out, name, ema, student_steps, {**meta, **info})
        if name == BASE_DIR:
            copy_ltm_settings(args.ckpt, args.out, student_steps)

    val = val_fn if "val" in splits else None
    return functools.partial(fit, student, _kind(name), loss_fn, loop, dist, last, export, val, desc)


def _fail(message: str) -> int:
    return cli_fail("nav_come.distill", message)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded in the checkpoints' metadata
    try:
        args.rounds = rounds_of(args)
        if args.steps_per_round < 1 or (args.max_minutes is not None and not args.max_minutes > 0):
            raise ValueError(f"need --steps-per-round >= 1 and --max-minutes > 0, got {args.steps_per_round} "
                             f"and {args.max_minutes}")  # fmt: skip
    except ValueError as e:
        return _fail(str(e))
    for flag, folder in (("--data", args.data), ("--ckpt", args.ckpt), ("--ckpt", args.ckpt / args.expert)):
        if not folder.is_dir():
            return _fail(f"{flag} folder {folder} does not exist")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        dist = setup_distributed(args.device)
    except ValueError as e:
        return _fail(str(e))
    args.deadline = None if args.max_minutes is None else time.monotonic() + 60 * args.max_minutes
    if args.revisit_weight is None:  # the original's recipe (the base trains uniformly by default)
        try:
            args.revisit_weight = float(read_config(args.ckpt / args.expert)[2].get("revisit_weight") or 1.0)
        except CheckpointError as e:
            return _fail(str(e))
    args.base = args.ckpt  # nav_come.train_expert's data pipeline reads BASE/ae and BASE/cache

    @functools.cache  # every round reads the same windows
    def data(context: int, max_shift: int) -> dict:
        spacing = dataset_config(args.data, args.dataset, args.spacing).metric_waypoint_spacing
        return load_training_data(args, dist, context, max_shift, spacing)

    pairs = zip(args.rounds[:-1], args.rounds[1:], strict=True)
    stages = [functools.partial(prepare_round, args, dist, data, n, m) for n, m in pairs]
    return run_stages("nav_come.distill", args.out, stages)


if __name__ == "__main__":
    sys.exit(main())
