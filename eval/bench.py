"""Benchmarks, run side by side in one process and named by machine.

    python -m eval.bench render [--json PATH]     # simulator frames per second, single process
    python -m eval.bench model [--ckpt DIR]       # world-model training step, sampling speed, forward cost per batch
    python -m eval.bench memory [--ckpt DIR]     # memory cost vs stored frames, LTM, composition overhead
    python -m eval.bench plan [--json PATH] [--quick] [--ckpt DIR] [--methods NWM CoME ...]
                              [--steps 1 2 4 8 16] [--plans N] [--threads N] [--device cpu|cuda]
                              [--precision fp32 bf16]
    python -m eval.bench precision [--precision auto fp32 bf16] [--repeats 3]   # one plan per precision, interleaved
    python -m eval.bench int8 [--data data/maze] [--n-samples 128]   # dynamic int8 against fp32 and bf16

``int8`` measures dynamic int8 quantisation of the base DiT's linear layers
(``torch.ao.quantization.quantize_dynamic``; fbgemm's kernels, AVX2 or better) against fp32 and
bf16 autocast, side by side: the median seconds of one DiT forward at a planning batch (24
candidates × 3 rollouts), interleaved, and prediction PSNR on the same ``--n-samples`` validation
windows with the same noise (``eval/predict.py``'s rollouts, horizons 1, 2, 4, 8) with the
seconds each took. It decides whether an int8 precision is worth offering on a machine.

``plan`` times one CEM plan of each CEM method (NWM, CoME, CoME (student), NWM+STM, NWM+LTM) under the NWM
paper protocol's search (``--search paper``: 120 candidates × 3 rollouts × 8 steps; so does
``precision``) for each sampler step count: the median wall
time of ``--plans`` plans after a warm-up, its split (encode, denoise, decode, cost, and the
CEM's own bookkeeping), the denoiser forward passes of a plan with their batch sizes, with
branch batching (``forwards_per_plan``) and without it (``forwards_unbatched``: one forward per
branch), and each method's time as a ratio to NWM's in the same run. The memory methods first
observe the episode that ``examples/`` was cut from (see :func:`example_episode`); that time,
the LTM's memorisation included, is per episode and reported apart (``s_observe``). Networks
distilled for 1 or 2 steps in ``CKPT/distilled/<k>step/`` (:mod:`nav_come.distill`) add rows with
sampler "distilled" at their step count (whose quality ``eval/predict.py --distilled`` measures). ``--quick``:
the default step count only, one plan per row. ``--unbatched`` also times each composed method
with one forward per branch, without dedup (``s_per_plan_unbatched``, the "before") and with it
(``s_per_plan_dedup_only``, ``forwards_dedup_only``). ``--json`` writes ``{"machine", "default_steps",
"rows": [{"method", "sampler", "sampler_steps", "s_per_plan", "forwards_per_plan", "batch",
"split_s": {"encode", "denoise", "decode", "cost", "cem"}, ...}], "skipped": {name: reason}, ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nav_come.core.io import atomic_write_text
from nav_come.core.precision import INFERENCE_PRECISIONS
from planners.config import CEM_LABELS, REGISTRY


def machine() -> str:
    """A one-line description of this machine: CPU model, cores, and GPU if any."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores{gpu}"


def bench_render(sizes=(64, 128), frames: int = 300, seed: int = 0) -> list[dict]:
    """Frames per second of driving + rendering, one process, for each family and image size."""
    from envs.sim import Simulator

    rows = []
    for family in ("maze", "outdoor"):
        for size in sizes:
            sim = Simulator((family, seed), size)
            rng = np.random.default_rng(seed)
            sim.render()  # warm-up: GL context and textures
            start = time.perf_counter()
            for _ in range(frames):
                sim.step(rng.uniform(0.3, 1.0), rng.uniform(-1, 1))
                sim.render()
            fps = frames / (time.perf_counter() - start)
            sim.close()
            rows.append({"world": family, "image_size": size, "fps": round(fps, 1)})
    return rows


BENCH_PRECISIONS = ("fp32", "bf16")  # side by side by default


def precisions(names: list[str], device: str = "cpu") -> tuple[str, ...]:
    """The precisions to time, "auto" resolved for ``device``, each once, in the order given."""
    from nav_come.core.precision import resolve

    return tuple(dict.fromkeys(resolve(n, device) for n in names))


def precision_report(device: str = "cpu") -> dict:
    """``cpu_flags`` (the relevant subset and torch's CPU capability) and what ``auto`` picks on ``device``."""
    from nav_come.core.precision import cpu_report, resolve

    return {"cpu_flags": cpu_report(), "auto_precision": resolve("auto", device)}


def format_precision(report: dict) -> str:
    cpu = report["cpu_flags"]
    isa = f", ONEDNN_MAX_CPU_ISA={cpu['onednn_max_cpu_isa']}" if cpu["onednn_max_cpu_isa"] else ""
    isa += f", FBGEMM_ENABLE_INSTRUCTIONS={cpu['fbgemm_isa']}" if cpu.get("fbgemm_isa") else ""
    why = "native bf16" if cpu["native_bf16"] else "no native bf16 on this CPU"
    return (f"cpu: torch capability {cpu['capability']}, flags {' '.join(cpu['flags']) or '(none read)'}{isa}; "
            f"--precision auto picks {report['auto_precision']} ({why})")


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench_model(ckpt, batch_train: int = 32, batch_sample: int = 120, steps: int = 5, repeats: int = 3,
                precisions=BENCH_PRECISIONS) -> list[dict]:  # fmt: skip
    """Seconds per training step (batch 32) and frames/s of one-step predictions, one row per precision."""
    import torch

    from nav_come.core.precision import autocast
    from nav_come.dit import dit_training_loss
    from nav_come.world_model import WorldModel

    wm = WorldModel.from_pretrained(ckpt)
    dit, (c, h, w), C = wm.dit, wm.latent_shape, wm.context
    g = torch.Generator().manual_seed(0)
    batch = {"context": torch.randn(batch_train, C, c, h, w, generator=g), "target": torch.randn(batch_train, c, h, w),
             "action": torch.randn(batch_train, 3), "shift": torch.ones(batch_train, dtype=torch.long)}
    opt = torch.optim.AdamW(dit.parameters(), lr=1e-6)
    size = wm.ae.config.image_size
    ctx, actions = torch.rand(1, C, 3, size, size), torch.randn(batch_sample, 3) * 0.3
    rows = []
    for precision in precisions:
        bf16 = precision == "bf16"
        dit.requires_grad_(True).train()

        def train_step(bf16=bf16):
            with autocast(torch.device("cpu"), bf16):
                loss = dit_training_loss(dit, batch, g)
            opt.zero_grad()
            loss.backward()
            opt.step()

        s_step = _median_seconds(train_step, repeats)
        dit.requires_grad_(False).eval()
        wm.bf16 = bf16
        s_pred = _median_seconds(lambda: wm.predict(ctx, actions, generator=g, steps=steps), repeats)
        rows.append({"precision": precision, "train_s_per_step": round(s_step, 3), "train_batch": batch_train,
                     "predict_frames_per_s": round(batch_sample / s_pred, 1), "predict_batch": batch_sample,
                     "sampler_steps": steps})
    return rows


FORWARD_BATCHES = (90, 180, 360, 720)  # 360 = one NWM-preset denoiser call (120 candidates × 3 rollouts)


def bench_forward_batch(ckpt, batches=FORWARD_BATCHES, repeats: int = 3, precision: str = "auto") -> list[dict]:
    """Seconds of one base-DiT forward per batch size, and per sample, at ``precision``: where a larger
    batch stops paying (``nav_come.compose.CPU_MAX_BATCH``, the cap on batched branches)."""
    import torch

    from nav_come.core.precision import autocast, resolve, use_bf16
    from nav_come.world_model import WorldModel

    wm = WorldModel.from_pretrained(ckpt)
    (c, h, w), C = wm.latent_shape, wm.context
    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(1, C, c, h, w, generator=g)
    rows = []
    for b in batches:
        x, t, a = torch.randn(b, c, h, w, generator=g), torch.rand(b, generator=g), torch.randn(b, 3, generator=g)

        def forward(x=x, t=t, a=a, b=b):
            with torch.no_grad(), autocast(torch.device("cpu"), use_bf16(precision)):
                wm.dit(x, t, context=ctx.expand(b, -1, -1, -1, -1), action=a)

        sec = _median_seconds(forward, repeats)
        rows.append({"batch": b, "s_per_forward": round(sec, 6), "ms_per_sample": round(1000 * sec / b, 3),
                     "precision": resolve(precision)})
    return rows


INT8_BATCH = 72  # one seeded-search population: 24 candidates x 3 rollouts


def quantized_dit(dit):
    """A copy of ``dit`` whose linear layers run dynamic int8 (weights int8, activations quantised per batch)."""
    import copy

    import torch

    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(dit), {torch.nn.Linear}, dtype=torch.qint8)


def bench_int8(ckpt, data, split: str = "val", n_samples: int = 128, repeats: int = 5, seed: int = 0) -> dict:
    """fp32, bf16 autocast and dynamic int8 of the base DiT: forward seconds at INT8_BATCH (median of
    ``repeats``, interleaved) and prediction PSNR per horizon on the same windows and noise."""
    import torch

    from eval.predict import HORIZONS, evaluate
    from nav_come.core.data import TrajectoryDataset
    from nav_come.core.precision import autocast
    from nav_come.world_model import WorldModel

    wm = WorldModel.from_pretrained(ckpt, precision="fp32")
    nets = {"fp32": (wm.dit, False), "bf16": (wm.dit, True), "int8": (quantized_dit(wm.dit), False)}
    (c, h, w), C = wm.latent_shape, wm.context
    g = torch.Generator().manual_seed(seed)
    x, t, a = (torch.randn(INT8_BATCH, c, h, w, generator=g), torch.rand(INT8_BATCH, generator=g),
               torch.randn(INT8_BATCH, 3, generator=g))  # fmt: skip
    ctx = torch.randn(1, C, c, h, w, generator=g).expand(INT8_BATCH, -1, -1, -1, -1)
    seconds = {k: [] for k in nets}
    for _ in range(repeats + 1):  # the first round warms up
        for name, (net, bf16) in nets.items():
            start = time.perf_counter()
            with torch.no_grad(), autocast(torch.device("cpu"), bf16):
                net(x, t, context=ctx, action=a)
            seconds[name].append(time.perf_counter() - start)
    windows = TrajectoryDataset(data, split, context_size=C, pred_len=max(HORIZONS), goal_offset=None,
                                image_size=wm.ae.config.image_size, cache=False)  # fmt: skip
    idx = np.sort(np.random.default_rng(seed).choice(len(windows), min(n_samples, len(windows)), replace=False))
    rows = []
    for name, (net, bf16) in nets.items():
        wm.dit, wm.bf16 = net, bf16
        start = time.perf_counter()
        scores, _ = evaluate(wm, windows, idx, seed, None, 32)
        psnr = {r["horizon"]: r["psnr"] for r in scores if r["method"] == "world_model"}
        rows.append({"precision": name, "s_per_forward": float(np.median(seconds[name][1:])),
                     "predict_s": time.perf_counter() - start, "psnr": psnr})  # fmt: skip
    return {"machine": machine(), **precision_report("cpu"), "batch": INT8_BATCH, "n_samples": len(idx),
            "split": split, "data": str(data), "seed": seed, "rows": rows}  # fmt: skip


def format_int8(out: dict) -> str:
    fp32 = next(r for r in out["rows"] if r["precision"] == "fp32")
    horizons = list(fp32["psnr"])
    lines = [f"{'precision':<9} {'s/forward':>9} {'x fp32':>7} {'predict s':>9} "
             + " ".join(f"{'PSNR@' + str(h):>8}" for h in horizons)]  # fmt: skip
    for r in out["rows"]:
        speedup = fp32["s_per_forward"] / r["s_per_forward"]
        lines.append(f"{r['precision']:<9} {r['s_per_forward']:>9.3f} {speedup:>7.2f} {r['predict_s']:>9.1f} "
                     + " ".join(f"{r['psnr'][h]:>8.2f}" for h in horizons))  # fmt: skip
    return "\n".join(lines)


# ---------------------------------------------------------------------- memory

MEMORY_CONTEXTS = (50, 200, 800)  # stored frames
MEMORY_ROWS = ("Base", "Sliding", "SSM", "Full", "CoME")
MEMORY_HORIZON = 8


def synthetic_episode(frames: int, latent_shape, spacing: float, seed: int = 0):
    """An EpisodeMemory of ``frames`` random latents on a loop of 3 m radius (one lap per 120
    frames, so retrieval finds earlier laps): the cost of memory does not depend on what the
    frames show, only on how many there are."""
    import torch

    from nav_come.memory_bank import EpisodeMemory

    g = torch.Generator().manual_seed(seed)
    angle = torch.arange(frames, dtype=torch.float64) * (2 * np.pi / 120)
    poses = torch.stack([3 * torch.cos(angle), 3 * torch.sin(angle), angle + np.pi / 2], 1)
    return EpisodeMemory(torch.randn(frames, *latent_shape, generator=g), poses, spacing)


def bench_memory(ckpt, contexts=MEMORY_CONTEXTS, rows=MEMORY_ROWS, batch: int = 120, repeats: int = 3) -> dict:
    """Cost of memory, side by side in one process (issue 5's benchmarks):

    - ``per_frame``: seconds per predicted frame (one sequence, an 8-frame rollout at the world
      model's sampler steps) of each row at each number of stored frames; the LTM's
      memorisation is timed apart (``ltm``: seconds per stored frame);
    - ``compose``: one composed denoiser call of CoME at ``batch`` samples, with its branches
      batched and deduplicated (the default) against one forward per branch (the sum of the
      experts' single forward passes), and the base expert's single forward for scale.
    """
    import torch

    from eval import memory_table
    from nav_come.compose import rollout
    from nav_come.core.data import data_config
    from nav_come.memory_bank import Query
    from nav_come.world_model import WorldModel
    from planners.methods import DEFAULT_NORMALISE

    wm = WorldModel.from_pretrained(ckpt)
    spacing = data_config("nav_come_sim").metric_waypoint_spacing
    denoisers, skipped, ltm = memory_table.build(wm, ckpt, {}, DEFAULT_NORMALISE, wm.device, list(rows))
    actions = torch.tensor([[0.8, 0.0, 0.2]]).expand(1, MEMORY_HORIZON, 3)
    per_frame, ltm_rows = [], []
    for L in contexts:
        memory = synthetic_episode(L, wm.latent_shape, spacing)
        if ltm is not None:
            report = ltm.memorize(memory)
            ltm_rows.append({"context": L, "s_per_stored_frame": report.seconds / max(report.frames, 1),
                             "frames": report.frames})  # fmt: skip
        for name, method in denoisers.items():
            def run(m=method, mem=memory):
                return rollout(m, mem, actions, wm.sampler_steps, torch.Generator().manual_seed(0))

            s = _median_seconds(run, repeats)
            per_frame.append({"method": name, "context": L, "s_per_frame": s / MEMORY_HORIZON})
    compose = []
    if "CoME" in denoisers:
        come, memory = denoisers["CoME"], synthetic_episode(max(contexts), wm.latent_shape, spacing)
        ctx = memory.context(wm.context).expand(batch, -1, -1, -1, -1)
        query = Query(ctx, actions[0, :1].expand(batch, 3), 1, memory.poses[memory.now].expand(batch, 3))
        cond, x = come.condition(memory, query), torch.randn(batch, *wm.latent_shape)
        t = torch.full((batch,), 0.5)
        for batched, dedup in ((True, True), (False, False)):
            come.batched, come.dedup = batched, dedup
            s = _median_seconds(lambda: come(x, t, cond), repeats)
            compose.append({"what": "CoME, branches batched + shared" if batched else "CoME, one forward per branch",
                            "s_per_call": s, "forwards": come.last.forwards, "samples": come.last.samples})  # fmt: skip
        come.batched, come.dedup = True, True
        base = denoisers["Base"]
        bcond = base.condition(memory, query)
        s = _median_seconds(lambda: base(x, t, bcond), repeats)
        compose.append({"what": "Base alone (one forward)", "s_per_call": s, "forwards": 1, "samples": batch})
    return {"per_frame": per_frame, "ltm": ltm_rows, "compose": compose, "skipped": skipped, "batch": batch,
            "sampler_steps": wm.sampler_steps}  # fmt: skip


def format_memory(out: dict) -> str:
    contexts = sorted({r["context"] for r in out["per_frame"]})
    names = list(dict.fromkeys(r["method"] for r in out["per_frame"]))
    cell = {(r["method"], r["context"]): r["s_per_frame"] for r in out["per_frame"]}
    lines = ["seconds per predicted frame vs stored frames"]
    lines.append(f"{'method':<10}" + "".join(f"{L:>10}" for L in contexts))
    lines += [f"{n:<10}" + "".join(f"{cell[n, L]:>10.3f}" for L in contexts) for n in names]
    lines += [f"LTM memorisation: {r['s_per_stored_frame']:.3f} s per stored frame ({r['frames']} frames)"
              for r in out["ltm"]]  # fmt: skip
    for r in out["compose"]:
        lines.append(f"{r['what']:<36} {r['s_per_call']:.3f} s  {r['forwards']} forwards, {r['samples']} samples")
    return "\n".join(lines)


# ---------------------------------------------------------------------- planning

PLAN_STEPS = (1, 2, 4, 8, 16)  # sampler steps per prediction, one row each
# NWM, CoME, CoME (student), NWM+STM, NWM+LTM: every CEM method ("NWM (paper protocol)" is NWM here: these
# plans use its search)
PLAN_METHODS = tuple(m.label for m in REGISTRY.values() if m.kind == "cem" and m.search is None)
DISTILLED_STEPS = (1, 2)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _frames(x: np.ndarray):
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(x)).float().div(255).movedim(-1, -3)


def example_episode(image_size: int, context: int = 4) -> dict:
    """The episode ``examples/`` was cut from, driven again in the simulator (deterministic): maze
    world 1,000,000, patrol driver with rng 0. history: frames 0..t (t = 60) and their world poses;
    context (1, C, 3, H, W): frames t-C+1..t (examples/context_*.png); goal (3, H, W): frame t+8
    (examples/goal.png). Without a working simulator: the example images and no history."""
    try:
        from envs.driver import Driver
        from envs.example_data import EXAMPLE_SEED, EXAMPLE_T
        from envs.occupancy import OccupancyMap
        from envs.sim import Simulator

        t, sim = EXAMPLE_T["maze"], Simulator(("maze", EXAMPLE_SEED), image_size)
        try:  # the drive of envs.example_data.make_example_images
            frames, poses, _ = Driver(sim, OccupancyMap(sim.world), np.random.default_rng(0), "patrol").run(t + 9)
        finally:
            sim.close()
    except Exception as err:  # noqa: BLE001 (no gymnasium, MuJoCo or GL backend: any failure means "no simulator")
        import cv2

        from nav_come.core.data.recon import square_resize

        names = [f"context_{k}.png" for k in range(4)] + ["goal.png"]
        imgs = np.stack([square_resize(cv2.cvtColor(cv2.imread(str(EXAMPLES / n)), cv2.COLOR_BGR2RGB), image_size)
                         for n in names])  # fmt: skip
        return {"context": _frames(imgs[None, -1 - context : -1]), "goal": _frames(imgs[-1]), "history": None,
                "source": f"examples/ images, no history (simulator unavailable: {type(err).__name__}: {err})"}
    x = _frames(frames)  # (t+9, 3, H, W)
    return {"context": x[None, t - context + 1 : t + 1], "goal": x[t + 8], "history": (x[: t + 1], poses[: t + 1]),
            "source": f"examples/ episode re-driven in the simulator (maze world {EXAMPLE_SEED}, "
                      f"patrol, rng 0): history frames 0..{t} with poses, context {t - context + 1}..{t}, "
                      f"goal {t + 8}"}  # fmt: skip


def distilled_planner(method: str, ckpt, steps: int, **load_kwargs):
    """The planner of ``method`` on the networks distilled for ``steps`` DDIM steps in
    ``CKPT/distilled`` (:mod:`nav_come.distill`'s layout: ``<k>step/{base,stm,sltm}``), or None
    when they are not there. :func:`bench_plan` adds a "distilled" row for each of DISTILLED_STEPS."""
    from planners.methods import MethodUnavailable, load_method

    try:
        return load_method(method, ckpt, distilled=distilled_root(ckpt), **{**load_kwargs, "sampler_steps": steps})
    except MethodUnavailable:
        return None


def distilled_root(ckpt) -> Path:
    from nav_come.distill import DISTILLED_DIR

    return Path(ckpt) / DISTILLED_DIR


def plan_networks(planner) -> dict:
    """{name: network} of every denoiser network a planner runs; experts on one network share it ("base+ltm")."""
    experts = getattr(planner, "denoiser", None)
    pairs = [(n, e.network) for n, e in experts.experts.items()] if experts else [("base", planner.world_model.dit)]
    by_id: dict[int, tuple[list, object]] = {}
    for name, net in pairs:
        by_id.setdefault(id(net), ([], net))[0].append(name)
    return {"+".join(names): net for names, net in by_id.values()}


@contextlib.contextmanager
def count_forwards(networks: dict) -> Iterator[list]:
    """Record (network name, batch) of every forward pass of ``networks`` inside the block."""
    seen: list[tuple[str, int]] = []
    hooks = [net.register_forward_pre_hook(lambda _m, args, name=name: seen.append((name, args[0].shape[0])))
             for name, net in networks.items()]  # fmt: skip
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def time_plan(planner, episode: dict, seed: int) -> tuple[float, dict]:
    """Wall time of one plan and its split: the timer's sections, and the CEM's bookkeeping as the rest."""
    import torch

    timer = planner.timer
    timer.reset()
    timer.sync()
    start = time.perf_counter()
    planner(episode["context"], episode["goal"], torch.Generator().manual_seed(seed))
    timer.sync()
    total = time.perf_counter() - start
    split = dict(timer.seconds)
    return total, {**split, "cem": max(total - sum(split.values()), 0.0)}


def set_precision(planner, precision: str) -> None:
    """Run the planner's world model and experts at ``precision`` ("fp32", "bf16" or "int8"; int8
    quantises the planner in place, so it comes last: :func:`_method_rows`)."""
    if precision == "int8":
        from planners.methods import quantize_planner

        quantize_planner(planner)
        return
    if planner.world_model.int8:
        raise ValueError("a planner quantised to int8 cannot run at fp32 or bf16 again")
    bf16 = precision == "bf16"
    planner.world_model.bf16 = bf16
    if (composed := getattr(planner, "denoiser", None)) is not None:
        composed.bf16 = bf16
        for expert in composed.experts.values():
            expert.bf16 = bf16


def set_steps(planner, steps: int) -> None:
    """Sample with ``steps`` sampler steps; a composition takes that step count's default alphas
    (``planners.methods.default_alphas``), as ``load_method`` would give it."""
    from planners.methods import default_alphas

    planner.world_model.sampler_steps = steps
    if (composed := getattr(planner, "denoiser", None)) is not None:
        alphas = default_alphas(steps)
        composed.alphas = {n: alphas.get(n, 1.0) for n in composed.experts}


def bench_row(planner, episode: dict, steps: int, plans: int, unbatched: bool = False) -> dict:
    """Median time, split, forwards and batches of ``plans`` plans at ``steps`` sampler steps."""
    set_steps(planner, steps)
    composed, networks = getattr(planner, "denoiser", None), plan_networks(planner)
    times, splits = [], []
    for i in range(plans):
        branches = composed.stats.branches if composed else 0
        with count_forwards(networks) as seen:
            total, split = time_plan(planner, episode, i)
        times.append(total)
        splits.append(split)
    batches: dict[str, int] = {}
    for name, b in seen:
        batches[name] = max(batches.get(name, 0), b)
    median = int(np.argsort(times)[len(times) // 2])  # the split shown is the median plan's
    row = {"s_per_plan": float(np.median(times)), "forwards_per_plan": len(seen), "batch": max(batches.values()),
           "split_s": {k: round(v, 4) for k, v in splits[median].items()},
           "forwards_unbatched": composed.stats.branches - branches if composed else len(seen),
           "batches": batches, "samples_per_plan": sum(b for _, b in seen), "plans": plans}  # fmt: skip
    if unbatched and composed and len(composed.experts) > 1:
        for key, dedup in (("unbatched", False), ("dedup_only", True)):  # one forward per branch, dedup or not
            composed.batched, composed.dedup = False, dedup
            with count_forwards(networks) as seen:
                row[f"s_per_plan_{key}"] = time_plan(planner, episode, 0)[0]
            row[f"forwards_{key}"] = len(seen)
        composed.batched = composed.dedup = True
    return row


def _observe(planner, episode: dict) -> dict:
    """Give a memory planner the episode; its time (LTM memorisation included) is per episode."""
    if not planner.uses_memory or episode["history"] is None:
        return {}
    planner.observe(*episode["history"])
    ltm = planner.last_observe.get("ltm")
    return {"s_observe": round(planner.last_observe["seconds"], 3), "history_frames": len(episode["history"][1]),
            "ltm_memorise_s": round(ltm.seconds, 3) if ltm is not None else None}  # fmt: skip


def _method_rows(label: str, planner, sampler: str, steps: list[int], plans: int, episode: dict, unbatched: bool,
                 extra: dict, log, precisions=BENCH_PRECISIONS, rollouts=(3,)) -> list[dict]:  # fmt: skip
    rows = []
    in_order = sorted(precisions, key=lambda p: p == "int8")  # int8 last: it quantises the planner in place
    for precision, r in ((p, r) for p in in_order for r in rollouts):
        set_precision(planner, precision)
        set_steps(planner, min(steps))
        planner.rollouts = r
        time_plan(planner, episode, 0)  # warm-up: allocations and kernels for these batch shapes
        for s in steps:
            log(f"  {label} {sampler} {s} steps {precision}, {r} rollouts ...")
            rows.append({"method": label, "sampler": sampler, "sampler_steps": s, "precision": precision,
                         "rollouts": r, **bench_row(planner, episode, s, plans, unbatched), **extra})  # fmt: skip
    return rows


def bench_plan(ckpt, methods=tuple(PLAN_METHODS), steps=PLAN_STEPS, plans: int = 3, device: str = "cpu",
               candidates: int = 120, rollouts=(3,), unbatched: bool = False, log=print,
               precisions=BENCH_PRECISIONS, search: str = "paper") -> dict:  # fmt: skip
    """The planning benchmark's report (see the module docstring); methods whose checkpoints are
    missing, and the distilled sampler while it has no checkpoint, are listed under "skipped".
    rollouts: the rollouts per candidate of each row, side by side; search: paper (NWM's CEM,
    ``candidates``) or seeded (the default search of the planners, from the policies' proposals)."""
    import torch

    from nav_come.core.checkpoint import CheckpointError
    from planners import cem
    from planners.methods import DEFAULT_SAMPLER_STEPS, MethodUnavailable, load_method
    from planners.timing import PlanTimer

    cfg = cem.CEMConfig(n_candidates=candidates, top_k=min(cem.CEMConfig.top_k, candidates))
    kwargs = {"device": device, "cem_config": cfg, "sampler_steps": DEFAULT_SAMPLER_STEPS, "search": search}
    planners, skipped = {}, {}
    for m in methods:
        try:
            planners[m] = load_method(m, ckpt, **kwargs)
        except (MethodUnavailable, CheckpointError) as err:  # an expert not (yet, or not fully) trained
            skipped[m] = str(err)
    first = next(iter(planners.values()), None)
    episode = example_episode(first.image_size, first.context_frames) if first else None
    rows = []
    for label, planner in planners.items():
        planner.timer = PlanTimer(device)
        with torch.no_grad():
            extra = _observe(planner, episode)
            rows += _method_rows(label, planner, "multistep", list(steps), plans, episode, unbatched, extra, log,
                                 precisions, rollouts)  # fmt: skip
            if not distilled_root(ckpt).is_dir():
                skipped["distilled"] = "no distilled checkpoint"
                continue
            for s in DISTILLED_STEPS:
                distilled = distilled_planner(label, ckpt, s, **kwargs)
                if distilled is None:
                    skipped[f"{label} distilled {s}-step"] = "no distilled checkpoint"
                    continue
                distilled.timer = PlanTimer(device)
                extra = _observe(distilled, episode)
                rows += _method_rows(label, distilled, "distilled", [s], plans, episode, unbatched, extra, log,
                                     precisions, rollouts)  # fmt: skip
    def key(r: dict) -> tuple:
        return r["sampler"], r["sampler_steps"], r["precision"], r["rollouts"]

    nwm = {key(r): r["s_per_plan"] for r in rows if r["method"] == "NWM"}
    for r in rows:
        base = nwm.get(key(r))
        r["vs_nwm"] = round(r["s_per_plan"] / base, 3) if base else None
    return {"machine": machine(), "device": device, "threads": torch.get_num_threads(), **precision_report(device),
            "default_steps": DEFAULT_SAMPLER_STEPS, "rows": rows, "skipped": skipped,
            "episode": episode["source"] if episode else None,
            "protocol": {"candidates": cfg.n_candidates, "top_k": cfg.top_k, "iterations": cfg.iterations,
                         "horizon": cfg.horizon, "rollouts": list(rollouts), "plans_per_row": plans,
                         "distance": first.distance.name if first else None, "ckpt": str(ckpt),
                         "search": search}}  # fmt: skip


def format_plan_table(rows: list[dict]) -> str:
    """Seconds per plan and its split; forwards per plan batched and unbatched (and, if timed, the
    seconds per plan of one forward per branch without and with dedup)."""
    extra = any("s_per_plan_unbatched" in r for r in rows)
    head = (f"{'method':<8} {'sampler':<9} {'steps':>5} {'prec':>4} {'R':>2} {'s/plan':>8} {'xNWM':>5} {'fwd/plan':>8} "
            f"{'unbatched':>9} {'batch':>6} {'encode':>7} {'denoise':>8} {'decode':>7} {'cost':>6} "
            f"{'cem':>6}")  # fmt: skip
    lines = [head + (f" {'s unbatched':>11} {'s dedup-only':>12}" if extra else "")]
    for r in rows:
        sp, ratio = r["split_s"], f"{r['vs_nwm']:.2f}" if r["vs_nwm"] is not None else "-"
        line = (f"{r['method']:<8} {r['sampler']:<9} {r['sampler_steps']:>5} {r['precision']:>4} {r['rollouts']:>2} "
                f"{r['s_per_plan']:>8.2f} {ratio:>5} {r['forwards_per_plan']:>8} {r['forwards_unbatched']:>9} "
                f"{r['batch']:>6} {sp['encode']:>7.3f} "
                f"{sp['denoise']:>8.2f} {sp['decode']:>7.3f} {sp['cost']:>6.3f} {sp['cem']:>6.3f}")  # fmt: skip
        if "s_per_plan_unbatched" in r:
            line += f" {r['s_per_plan_unbatched']:>11.2f} {r['s_per_plan_dedup_only']:>12.2f}"
        lines.append(line)
    return "\n".join(lines)


def bench_precision(ckpt, precisions=("auto", "fp32", "bf16"), repeats: int = 3, method: str = "nwm",
                    log=print) -> dict:  # fmt: skip
    """Seconds of one plan of ``method`` on the example episode at each precision, the precisions
    interleaved ``repeats`` times in this one process (so "auto" and the setting it picks run the
    same code under the same conditions), with the median per precision."""
    import torch

    from planners.methods import load_method

    planners = {p: load_method(method, ckpt, precision=p, search="paper") for p in dict.fromkeys(precisions)}
    first = next(iter(planners.values()))
    episode = example_episode(first.image_size, first.context_frames)
    seconds: dict[str, list[float]] = {p: [] for p in planners}
    for planner in planners.values():  # warm-up
        planner(episode["context"], episode["goal"], torch.Generator().manual_seed(0))
    for rep in range(repeats):
        for p, planner in planners.items():
            start = time.perf_counter()
            planner(episode["context"], episode["goal"], torch.Generator().manual_seed(0))
            seconds[p].append(round(time.perf_counter() - start, 3))
            log(f"  {method} {p} ({planner.precision}) run {rep + 1}: {seconds[p][-1]:.2f} s")
    rows = [{"precision": p, "runs_as": planners[p].precision, "s_per_plan": float(np.median(s)), "seconds": s}
            for p, s in seconds.items()]  # fmt: skip
    return {"machine": machine(), "threads": torch.get_num_threads(), **precision_report("cpu"), "method": method,
            "repeats": repeats, "episode": episode["source"], "rows": rows}  # fmt: skip


def _plan_main(args) -> dict:
    from planners.methods import DEFAULT_SAMPLER_STEPS

    unknown = [m for m in args.methods if m not in CEM_LABELS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(CEM_LABELS)}")
    steps = args.steps or ([DEFAULT_SAMPLER_STEPS] if args.quick else list(PLAN_STEPS))
    plans = args.plans or (1 if args.quick else 3)
    if plans < 1 or min(steps) < 1:
        raise ValueError(f"--plans and --steps must be >= 1, got {plans} and {steps}")
    if min(args.rollouts) < 1:
        raise ValueError(f"--rollouts must be >= 1, got {args.rollouts}")
    out = bench_plan(args.ckpt, args.methods, steps, plans, args.device, args.candidates, args.rollouts,
                     args.unbatched, log=lambda msg: print(msg, file=sys.stderr, flush=True),
                     precisions=precisions(args.precision or BENCH_PRECISIONS, args.device),
                     search=args.search)  # fmt: skip
    proto = out["protocol"]
    search = (f"{proto['candidates']} candidates, {proto['iterations']} CEM iteration(s)" if args.search == "paper"
              else "the seeded search (policy proposals, refined)")  # fmt: skip
    print(f"plan: device {out['device']}, torch threads {out['threads']}; {search}, "
          f"{'/'.join(map(str, proto['rollouts']))} rollouts × {proto['horizon']} steps, "
          f"cost {proto['distance']}; median of {plans} plan(s) per row after a warm-up")  # fmt: skip
    print(f"episode: {out['episode']}")
    for r in {r["method"]: r for r in reversed(out["rows"])}.values():  # each method's first row
        if "s_observe" in r:
            ltm = f" (LTM memorisation {r['ltm_memorise_s']:.2f} s)" if r["ltm_memorise_s"] is not None else ""
            print(f"{r['method']}: observing {r['history_frames']} frames took {r['s_observe']:.2f} s{ltm}, "
                  "once per episode, apart from the plan time")  # fmt: skip
    print(format_plan_table(out["rows"]))
    for name, why in out["skipped"].items():
        print(f"skipped {name}: {why}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="nav_come benchmarks")
    p.add_argument("what", choices=["render", "model", "memory", "plan", "precision", "int8"])
    p.add_argument("--json", help="write the rows here too")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--ckpt", default="checkpoints/maze", help="checkpoint folder for `model` and `plan`")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--methods", nargs="+", default=list(PLAN_METHODS), help=f"plan: {' '.join(PLAN_METHODS)}")
    p.add_argument("--steps", type=int, nargs="+", help=f"plan: sampler steps (default {PLAN_STEPS})")
    p.add_argument("--plans", type=int, help="plan: plans timed per row (default 3; --quick 1)")
    p.add_argument("--quick", action="store_true", help="plan: default step count only, one plan per row")
    p.add_argument("--device", default="cpu", help="plan: cpu | cuda")
    p.add_argument("--precision", nargs="+", choices=INFERENCE_PRECISIONS,
                   help="model, plan: precisions side by side (default fp32 bf16; auto: what plan.py would pick "
                        "here); precision: those interleaved (default auto fp32 bf16)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=3, help="precision: plans per precision")
    p.add_argument("--data", type=Path, default=Path("data/maze"), help="int8: the data whose val windows it predicts")
    p.add_argument("--n-samples", type=int, default=128, help="int8: validation windows")
    p.add_argument("--candidates", type=int, default=120, help="plan: CEM candidates (NWM preset 120)")
    p.add_argument("--rollouts", type=int, nargs="+", default=[3],
                   help="plan: rollouts per candidate, one row each (NWM preset 3)")
    p.add_argument("--search", choices=("paper", "seeded"), default="paper",
                   help="plan: NWM's CEM with --candidates (paper) or the planners' default seeded search")
    p.add_argument("--unbatched", action="store_true",
                   help="plan: also time composed methods with one forward per branch, without and with dedup")
    args = p.parse_args(argv)
    if "int8" in (args.precision or ()) and args.what != "plan":
        print(f"error: --precision int8 is for `eval.bench plan` (and `eval.bench int8` times it against fp32 and "
              f"bf16); {args.what} times fp32 and bf16", file=sys.stderr)  # fmt: skip
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}  (MUJOCO_GL={os.environ.get('MUJOCO_GL')}, threads {args.threads or 'default'})")
    if args.what in ("model", "plan"):
        print(format_precision(precision_report(args.device)))
    if args.what == "plan":
        from nav_come.core.checkpoint import CheckpointError

        try:
            out = _plan_main(args)
        except (ValueError, CheckpointError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.json:
            atomic_write_text(args.json, json.dumps(out, indent=2))
        return 0
    if args.what == "precision":
        out = bench_precision(args.ckpt, args.precision or ("auto", "fp32", "bf16"), args.repeats,
                              log=lambda msg: print(msg, file=sys.stderr, flush=True))  # fmt: skip
        print(f"{'precision':<10} {'runs as':<8} {'s/plan (median)':>16}   runs")
        for r in out["rows"]:
            print(f"{r['precision']:<10} {r['runs_as']:<8} {r['s_per_plan']:>16.2f}   {r['seconds']}")
        if args.json:
            atomic_write_text(args.json, json.dumps(out, indent=2))
        return 0
    if args.what == "int8":
        if not args.data.is_dir():
            print(f"error: data folder {args.data} does not exist; collect it with python -m envs.collect "
                  "(docs/reproduce.md) or pass --data", file=sys.stderr)  # fmt: skip
            return 2
        out = bench_int8(args.ckpt, args.data, n_samples=args.n_samples)
        print(format_precision(out))
        print(format_int8(out))
        if args.json:
            atomic_write_text(args.json, json.dumps(out, indent=2))
        return 0
    if args.what == "memory":
        out = {"machine": machine(), "threads": args.threads, **bench_memory(args.ckpt)}
        print(format_memory(out))
        for name, why in out["skipped"].items():
            print(f"skipped {name}: {why}")
        if args.json:
            atomic_write_text(args.json, json.dumps(out, indent=2))
        return 0
    extra = {}
    if args.what == "render":
        rows = bench_render(frames=args.frames)
        print(f"{'world':<8} {'size':>5} {'frames/s':>9}")
        for r in rows:
            print(f"{r['world']:<8} {r['image_size']:>5} {r['fps']:>9.1f}")
    else:
        rows = bench_model(args.ckpt, precisions=precisions(args.precision or BENCH_PRECISIONS, "cpu"))
        print(f"{'precision':<9} {'train s/step (B=32)':>20} {'predict frames/s (B=120)':>25}")
        for r in rows:
            print(f"{r['precision']:<9} {r['train_s_per_step']:>20.3f} {r['predict_frames_per_s']:>25.1f}")
        extra = {**precision_report("cpu"), "forward_batch": bench_forward_batch(args.ckpt)}
        print(f"\n{'batch':>6} {'s/forward':>10} {'ms/sample':>10}   (base DiT, {extra['auto_precision']}: auto)")
        for r in extra["forward_batch"]:
            print(f"{r['batch']:>6} {r['s_per_forward']:>10.3f} {r['ms_per_sample']:>10.3f}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"machine": machine(), "rows": rows, **extra}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
