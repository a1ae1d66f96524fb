"""Prediction quality of the world model on the test split (unseen worlds).

    python eval/predict.py --data DIR [--ckpt PATH] [--json out.json] [--grid out.png]
    torchrun --nproc_per_node N eval/predict.py --data DIR [--device cuda] [--memory] ...

For ``--n-samples`` random windows (context frames t-C+1..t, future frames t+1..t+8) it
reports PSNR and SSIM (and LPIPS when user weights are available, else null) at horizons
1, 2, 4 and 8 for:

- ``world_model``: an autoregressive latent rollout driven by the ground-truth one-step
  actions (pose k+1 in the frame of pose k, spacing units), the prediction replacing the
  oldest context frame;
- ``copy_last``: the newest context frame, unchanged (the trivial baseline);
- ``ae_recon``: the autoencoder's reconstruction of the true frame (the ceiling).

Per-image PSNR is capped at 100 dB so that identical images (a robot standing still)
keep the mean finite. ``--json`` writes the contract other tools read::

    {"rows": [{"method", "horizon", "psnr", "ssim", "lpips", "n"}, ...],
     "data": str, "split": "test" | "val", "seed": int}

``--split val`` evaluates the validation worlds instead: settings (alpha, sampler steps) are
chosen there, never on the test split.

Without ``--ckpt`` the shipped checkpoint of the data's world (``checkpoints/maze`` or
``checkpoints/outdoor``, from its ``dataset.json``) is used. ``--distilled DIR`` (both
modes) samples with the networks distilled for ``--steps`` DDIM steps in DIR (default: the fewest;
:mod:`nav_come.distill`) in place of the base and the experts, and adds ``"distilled"`` and
``"sampler_steps"`` to the report: compare it with a run without it (the multi-step sampler).

The windows go in batches of ``--batch-size``; batch b draws its noise from a generator seeded
from (``--seed``, b). Under ``torchrun`` (:mod:`eval.distributed`; gloo on CPU, nccl with
``--device cuda``) each rank scores every N-th batch (``--memory``: every N-th sequence, whose
noise is seeded from its index) and rank 0, which alone prints and writes, reports what one
process reports.

``--memory`` runs the memory ablation instead (:mod:`eval.memory_table`)::

    python eval/predict.py --memory [--data DIR] [--ckpt DIR] [--json out.json] [--n-seq N]
                           [--context L [L ...]] [--steps K] [--seed S] [--figure out.png] [--resume DIR]

on the test split's ``memory_eval.json`` sequences, with the experts found beside the world
model (``CKPT/{stm,sltm,ssm,full}``, optional ``CKPT/ltm/config.json``; see
:mod:`planners.methods`). Its ``--json`` contract::

    {"rows": [{"method", "psnr", "psnr_se", "ssim", "ssim_se", "lpips", "s_per_frame",
               "peak_mb", "n", "context", "revisit": {"psnr", "psnr_se", "ssim", "n"},
               "non_revisit": {...}, "psnr_per_seq": [PSNR of each sequence, in order], ...}, ...],
     "skipped": {method: reason}, "relevance", ...}

with the methods of ``eval.memory_table.ROWS`` (Base, +STM, +LTM, +SLTM, ..., CoME, CoME (fixed α),
CoME (no contrast), Sliding, SSM, Full) and copy_nearest, one row per method per context length L.
``--resume DIR`` keeps each sequence's scores in ``DIR/<i>.pt`` as it is done and reads them back
instead of scoring again, so that a run longer than a session finishes in several; the folder's
``protocol.json`` refuses results made with other settings, data or checkpoints.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from eval import distributed, memory_table
from nav_come.core.checkpoint import CheckpointError
from nav_come.core.data import DataFormatError, TrajectoryDataset, dataset_config
from nav_come.core.data.config import add_data_args
from nav_come.core.io import atomic_write_bytes, atomic_write_text
from nav_come.core.layout import SHIPPED_ROOT, pick_checkpoint
from nav_come.core.metrics import lpips, lpips_available, psnr, ssim
from nav_come.core.precision import add_precision_arg, resolve, use_bf16
from nav_come.core.train_loop import Distributed
from nav_come.distill import distilled_dir, distilled_world_model, resolve_steps
from nav_come.world_model import WorldModel
from planners.config import DEFAULT_RELEVANCE, RELEVANCE_NEAR_FAR, parse_relevance
from planners.methods import DEFAULT_NORMALISE, default_alphas, parse_alphas

HORIZONS = (1, 2, 4, 8)
MEMORY_DATA = SHIPPED_ROOT.parent / "data" / "maze"  # --memory without --data
MEMORY_CONTEXTS = (50, 200, 512)  # frames; issue 5 reports 50, 200 and 500+
PSNR_CAP = 100.0  # dB
GRID_ROWS = 4  # samples shown in the PNG grid

# A method maps (model, batch, generator, steps) to predicted future frames (B, K, 3, H, W).
Method = Callable[[WorldModel, dict, torch.Generator, "int | None"], torch.Tensor]


def world_model(model: WorldModel, batch: dict, generator: torch.Generator, steps: int | None) -> torch.Tensor:
    return model.rollout(batch["context"], batch["step_actions"], generator, steps)["frames"]


def copy_last(model: WorldModel, batch: dict, generator: torch.Generator, steps: int | None) -> torch.Tensor:
    return batch["context"][:, -1:].expand_as(batch["future"])


def ae_recon(model: WorldModel, batch: dict, generator: torch.Generator, steps: int | None) -> torch.Tensor:
    return model.decode(model.encode(batch["future"]))


METHODS: dict[str, Method] = {"world_model": world_model, "copy_last": copy_last, "ae_recon": ae_recon}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python eval/predict.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="folder of RECON-format trajectory folders (--memory: default data/maze)")
    p.add_argument("--ckpt", type=Path, help="world model folder (ae/, base/; default: checkpoints/<world of --data>)")
    p.add_argument("--json", type=Path, help="write the rows here (see the contract above)")
    p.add_argument("--grid", type=Path, help="write a PNG grid of ground truth next to predictions")
    p.add_argument("--n-samples", type=int, default=256, help="test windows evaluated")
    p.add_argument("--seed", type=int, default=0, help="picks the windows and the sampler noise")
    p.add_argument("--steps", type=int, help="sampler steps (default: the world model's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="test (reported) or val (choosing settings such as alpha and steps)")  # fmt: skip
    add_data_args(p)
    p.add_argument("--device", default="cpu", help="cpu or cuda (torchrun: cuda:LOCAL_RANK, ranks share GPUs)")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is faster when other jobs share the cores)")
    add_precision_arg(p)
    p.add_argument("--distilled", type=Path, help="sample with the networks distilled for --steps in this folder")
    m = p.add_argument_group("memory ablation", "with --memory (also --data, --ckpt, --json, --seed, --steps)")
    m.add_argument("--memory", action="store_true", help="the memory ablation table on memory_eval sequences")
    m.add_argument("--n-seq", type=int, help="sequences evaluated (default: all)")
    m.add_argument("--context", type=int, nargs="+", default=list(MEMORY_CONTEXTS), metavar="L",
                   help="context lengths: the last L frames up to t")  # fmt: skip
    m.add_argument("--alpha", nargs="+", default=[], metavar="EXPERT=A",
                   help="contrastive weights of the composed rows (default base=1 stm=2 ltm=2 sltm=2)")  # fmt: skip
    m.add_argument("--relevance", nargs="+", default=[], metavar="EXPERT=W",
                   help="composed rows: an expert's weight at full relevance, 1 fixes its share "
                        f"(default {' '.join(f'{k}={v:g}' for k, v in DEFAULT_RELEVANCE.items())}, chosen on val)")
    m.add_argument("--variant", nargs="+", action="append", default=[], metavar="EXPERT=W",
                   help="an extra row 'CoME [..]' with these relevance weights (repeat the flag for more; "
                        "to choose them on --split val)")
    m.add_argument("--rows", nargs="+", metavar="ROW",
                   help="only these rows, e.g. Base +SLTM CoME 'CoME (no contrast)' (default all)")  # fmt: skip
    m.add_argument("--normalise", action=argparse.BooleanOptionalAction, default=DEFAULT_NORMALISE,
                   help="composed rows: coefficients scaled to sum to 1 (default: on, chosen on val)")  # fmt: skip
    m.add_argument("--figure", type=Path, help="PNG: context strip, ground truth and each method, a few sequences")
    m.add_argument("--resume", type=Path, metavar="DIR",
                   help="keep each sequence's scores in DIR and reuse them: an interrupted run resumes")  # fmt: skip
    return p


def _scores(pred: torch.Tensor, target: torch.Tensor, with_lpips: bool) -> dict[str, torch.Tensor]:
    """Per-image metrics of (B, 3, H, W) batches in [0, 1]."""
    out = {"psnr": psnr(pred, target).clamp(max=PSNR_CAP), "ssim": ssim(pred, target)}
    if with_lpips:
        out["lpips"] = lpips(pred, target)
    return out


def score_batches(
    model: WorldModel,
    data: TrajectoryDataset,
    batches: list[tuple[int, np.ndarray]],
    seed: int,
    steps: int | None = None,
    methods: dict[str, Method] = METHODS,
) -> list[tuple[int, dict]]:
    """Per batch ``(b, window indices)``: ``(b, {"scores": {(method, horizon): {metric: (B,)}}, "shown"})``,
    with the frames of the first GRID_ROWS windows under "shown" for batch 0 (else None).

    Batch b draws its noise from a generator seeded from (seed, b), so a batch scores the same
    whichever batches come before it (or which rank scores it)."""
    with_lpips = lpips_available()
    out = []
    for b, indices in batches:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + b)
        items = [data[int(i)] for i in indices]
        batch = {
            k: torch.stack([it[k] for it in items]).to(model.device) for k in ("context", "future", "step_actions")
        }
        preds = {"ground_truth": batch["future"]}
        preds |= {name: fn(model, batch, generator, steps).float() for name, fn in methods.items()}
        scores = {(name, h): _scores(preds[name][:, h - 1].cpu(), batch["future"][:, h - 1].cpu(), with_lpips)
                  for name in methods for h in HORIZONS}  # fmt: skip
        shown = None
        if b == 0:
            shown = {k: v[:GRID_ROWS].cpu() for k, v in preds.items()} | {"context": batch["context"][:GRID_ROWS].cpu()}
        out.append((b, {"scores": scores, "shown": shown}))
    return out


def summarise(records: list[dict]) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Metric rows per (method, horizon), means over :func:`score_batches`'s records of every batch
    in order, and the grid's frames."""
    rows = []
    for name, h in records[0]["scores"]:
        per_image = {m: torch.cat([r["scores"][name, h][m] for r in records]) for m in records[0]["scores"][name, h]}
        rows.append({"method": name, "horizon": h, "psnr": float(per_image["psnr"].mean()),
                     "ssim": float(per_image["ssim"].mean()),
                     "lpips": float(per_image["lpips"].mean()) if "lpips" in per_image else None,
                     "n": len(per_image["psnr"])})  # fmt: skip
    return rows, records[0]["shown"]


def evaluate(
    model: WorldModel,
    data: TrajectoryDataset,
    indices: np.ndarray,
    seed: int,
    steps: int | None = None,
    batch_size: int = 32,
    methods: dict[str, Method] = METHODS,
    dist: Distributed | None = None,
) -> tuple[list[dict], dict[str, torch.Tensor]] | None:
    """Metric rows per (method, horizon), and the first GRID_ROWS samples' frames for the grid.

    The windows go in batches of ``batch_size`` in the order of ``indices``. dist: under
    torchrun each rank scores every world-th batch and rank 0 gets what one process gets
    (the other ranks get None); None: one process."""
    batches = [indices[start : start + batch_size] for start in range(0, len(indices), batch_size)]
    mine = distributed.shard(batches, dist)
    records = distributed.gather(score_batches(model, data, mine, seed, steps, methods), dist)
    return summarise(records) if records is not None else None


def format_table(rows: list[dict]) -> str:
    lines = [f"{'method':<14}{'horizon':>8}{'PSNR':>9}{'SSIM':>8}{'LPIPS':>8}{'n':>7}"]
    for r in rows:
        lp = f"{r['lpips']:.3f}" if r["lpips"] is not None else "-"
        lines.append(f"{r['method']:<14}{r['horizon']:>8}{r['psnr']:>9.2f}{r['ssim']:>8.3f}{lp:>8}{r['n']:>7}")
    return "\n".join(lines)


def save_mosaic(path: Path, rows: list[tuple[str, list]], columns: list[str]) -> None:
    """PNG of image rows: rows [(label, [(3, H, W) in [0, 1] or None, ...])], one label per column."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    H, W = next(img for _, cells in rows for img in cells if img is not None).shape[-2:]
    pad = 2
    mosaic = np.ones((len(rows) * (H + pad), len(columns) * (W + pad), 3), np.float32)
    for r, (_, cells) in enumerate(rows):
        y = r * (H + pad)
        for c, img in enumerate(cells):
            if img is not None:
                mosaic[y : y + H, c * (W + pad) : c * (W + pad) + W] = img.permute(1, 2, 0).clamp(0, 1).numpy()
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(columns), 0.9 * len(rows)))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_yticks([r * (H + pad) + H / 2 for r in range(len(rows))], [label for label, _ in rows], fontsize=7)
    ax.set_xticks([c * (W + pad) + W / 2 for c in range(len(columns))], columns, fontsize=7)
    ax.tick_params(length=0)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")  # keeps long row labels
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def save_grid(path: Path, shown: dict[str, torch.Tensor]) -> None:
    """PNG: per sample, a ground-truth row (newest context frame, then t+1..t+K) and one row per
    predicting method (copy_last is left out: it is the context frame repeated)."""
    kinds = [k for k in shown if k not in ("context", "copy_last")]  # ground_truth first
    B, K = shown["ground_truth"].shape[:2]
    rows = [(kind, ([shown["context"][b, -1]] if kind == "ground_truth" else [None]) + list(shown[kind][b]))
            for b in range(B) for kind in kinds]  # fmt: skip
    save_mosaic(path, rows, ["t"] + [f"t+{k}" for k in range(1, K + 1)])


def save_memory_figure(path: Path, shown: list[dict]) -> None:
    """PNG: per sequence, its context strip (frames evenly spaced over the memory), the ground
    truth t+1..t+K and each method's prediction."""
    rows = []
    for seq in shown:
        rows.append((f"context, L={seq['context']}", list(seq["strip"])))  # evenly spaced over the memory
        rows.append((f"truth: {seq['label']}", list(seq["truth"])))
        rows += [(name, list(frames)) for name, frames in seq["preds"].items()]
    save_mosaic(path, rows, [f"t+{k}" for k in range(1, len(shown[0]["truth"]) + 1)])


def _fail(message: str) -> int:
    print(f"predict: error: {message.splitlines()[0] if message else 'failed'}", file=sys.stderr)
    return 2


def load_model(args: argparse.Namespace, device: torch.device) -> tuple[WorldModel, Path, int | None]:
    """The world model, the folder of its experts and the sampler steps (None: the model's), with
    ``--distilled`` those distilled for ``--steps``."""
    if args.distilled is None:
        return WorldModel.from_pretrained(args.ckpt, device=device, precision=args.precision), args.ckpt, args.steps
    steps = resolve_steps(args.distilled, args.steps)
    model = distilled_world_model(args.ckpt, args.distilled, steps, device, use_bf16(args.precision, device))
    return model, distilled_dir(args.distilled, steps), steps


def run_memory(args: argparse.Namespace, dist: Distributed) -> int:
    """The memory ablation (``--memory``; rank 0 reports); see :mod:`eval.memory_table`."""
    from tqdm import tqdm

    data = args.data or MEMORY_DATA
    try:
        if (args.n_seq is not None and args.n_seq < 1) or (args.steps is not None and args.steps < 1):
            raise ValueError(f"--n-seq and --steps must be >= 1, got {args.n_seq} and {args.steps}")
        if not data.is_dir():
            raise ValueError(f"data folder {data} does not exist; pass --data DIR")
        alphas, relevance = parse_alphas(args.alpha), parse_relevance(args.relevance)
        variants = [parse_relevance(v) for v in args.variant]
        model, experts_dir, steps = load_model(args, dist.device)
        if min(args.context) < model.context:
            raise ValueError(f"--context values must be >= {model.context} (the model's context), got {args.context}")
        samples = memory_table.load_samples(data, args.split_dir, args.dataset, args.n_seq, args.split)
        spacing = dataset_config(data, args.dataset, args.spacing).metric_waypoint_spacing
        denoisers, skipped, ltm = memory_table.build(model, experts_dir, alphas, args.normalise, dist.device, args.rows,
                                                     relevance, variants)  # fmt: skip
    except (CheckpointError, ValueError, FileNotFoundError) as e:  # DataFormatError is a ValueError
        return _fail(str(e))
    if dist.is_main:
        for name, why in skipped.items():
            print(f"skipped {name}: {why}")
    contexts, steps = sorted(set(args.context)), steps or model.sampler_steps
    longest = max(contexts)
    mine = distributed.shard(samples, dist)  # (index, sample): sequence i's noise is seeded from (seed, i)
    kept = {}
    if args.resume is not None:
        try:
            settings = {"alphas": alphas, "relevance": relevance, "variants": variants}
            kept = _kept_sequences(args, data, model, experts_dir, list(denoisers), contexts, steps, len(samples), mine,
                                   settings)  # fmt: skip
        except ValueError as e:
            return _fail(str(e))
    todo = [(i, s) for i, s in mine if i not in kept]
    sequences = ((i, memory_table.load_sequence(model, data, s, spacing, longest)) for i, s in todo)
    try:
        with tqdm(total=len(mine) * len(contexts), desc="memory table", unit="seq", disable=not dist.is_main) as bar:
            bar.update(len(kept) * len(contexts))
            scored = memory_table.evaluate(model, denoisers, ltm, sequences, contexts, spacing, args.seed, steps,
                                           _scores, lpips_available(), bar, args.resume)  # fmt: skip
    except DataFormatError as e:
        return _fail(str(e))
    scored += list(kept.items())
    records = distributed.gather(scored, dist)
    if records is None:  # not rank 0
        return 0
    out = memory_table.summarise(records, contexts, list(denoisers), model.device)
    print(memory_table.format_table(out["rows"]))
    if args.json:
        alphas = {**default_alphas(steps), **alphas}
        report = {"rows": out["rows"], "skipped": skipped, "data": str(data), "split": args.split, "seed": args.seed,
                  "n_seq": len(samples), "sampler_steps": steps, "alphas": alphas, "normalise": args.normalise,
                  "relevance": {**DEFAULT_RELEVANCE, **relevance}, "relevance_band": list(RELEVANCE_NEAR_FAR),
                  "ltm": out["ltm"], "peak_memory": out["peak_memory"],
                  "precision": resolve(args.precision, dist.device)}  # fmt: skip
        if args.distilled:
            report["distilled"] = str(args.distilled)
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    if args.figure and out["shown"]:
        save_memory_figure(args.figure, out["shown"])
    return 0


def _kept_sequences(args: argparse.Namespace, data: Path, model: WorldModel, experts_dir: Path, rows: list[str],
                    contexts: list[int], steps: int, n_seq: int,
                    mine: list[tuple[int, dict]], settings: dict) -> dict[int, dict]:  # fmt: skip
    """``--resume``: the records of this rank's sequences kept in the folder, after checking that it
    holds results made with these settings (the parsed alphas, relevance and variants among them),
    data and checkpoints (ValueError otherwise)."""
    import hashlib

    from eval.ate_rpe import check_resume
    from nav_come.core.checkpoint import checkpoint_hash
    from nav_come.core.data import split_path
    from nav_come.core.data.recon import data_fingerprint
    from nav_come.core.layout import checkpoints_fingerprint

    split = split_path(data, args.split, args.split_dir, args.dataset)
    protocol = {"data": str(data), "split": args.split, "seed": args.seed, "n_seq": n_seq, "contexts": contexts,
                "sampler_steps": steps, "rows": rows, **settings, "normalise": args.normalise,
                "precision": resolve(args.precision, model.device),
                "lpips": lpips_available(), "distilled": str(args.distilled) if args.distilled else None,
                "data_content": data_fingerprint(data, split),
                "memory_eval": hashlib.sha256((split.parent / "memory_eval.json").read_bytes()).hexdigest()[:16],
                "ckpt_content": checkpoints_fingerprint(experts_dir)}  # fmt: skip
    if "CoME (student)" in rows:  # an opt-in part, outside the checkpoints' fingerprint
        protocol["student_content"] = checkpoint_hash(experts_dir / "student")
    check_resume(args.resume, protocol)
    return {i: memory_table.load_record(path) for i, _ in mine if (path := args.resume / f"{i}.pt").is_file()}


def run_windows(args: argparse.Namespace, dist: Distributed) -> int:
    """The default mode: prediction quality over ``--n-samples`` windows (rank 0 reports)."""
    if args.n_samples < 1 or args.batch_size < 1:
        return _fail("--n-samples and --batch-size must be >= 1")
    try:
        model, _, steps = load_model(args, dist.device)
        data = TrajectoryDataset(
            args.data, args.split, split_dir=args.split_dir, dataset=args.dataset, context_size=model.context,
            pred_len=max(HORIZONS), goal_offset=None, image_size=model.ae.config.image_size, cache=False,
        )  # fmt: skip
    except (CheckpointError, ValueError, FileNotFoundError) as e:  # DataFormatError is a ValueError
        return _fail(str(e))
    rng = np.random.default_rng(args.seed)
    indices = np.sort(rng.choice(len(data), min(args.n_samples, len(data)), replace=False))
    out = evaluate(model, data, indices, args.seed, steps, args.batch_size, dist=dist)
    if out is None:  # not rank 0
        return 0
    rows, shown = out
    print(format_table(rows))
    if args.json:
        report = {"rows": rows, "data": str(args.data), "split": args.split, "seed": args.seed,
                  "precision": resolve(args.precision, dist.device)}
        if args.distilled:
            report |= {"distilled": str(args.distilled), "sampler_steps": steps}
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    if args.grid:
        save_grid(args.grid, shown)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.memory and args.data is None:
        parser.error("the following arguments are required: --data")
    args.ckpt = pick_checkpoint(args.ckpt, args.data if args.data is not None else MEMORY_DATA)
    try:
        dist = distributed.init(args.device)
    except ValueError as e:  # --device
        return _fail(str(e))
    try:
        return run_memory(args, dist) if args.memory else run_windows(args, dist)
    finally:
        distributed.close()


if __name__ == "__main__":
    sys.exit(main())
