"""Which goal distance ranks CEM candidates best? Measured on the validation split.

python eval/costs.py [--data data/maze] [--split val] [--n-samples 40] [--steps 1 2 5] [--seed 0]
                     [--distilled runs/distill] [--json out.json] [--figure out.png]

For each ``navigation_eval`` sample, one NWM-preset CEM iteration's 120 candidates are drawn
from the dataset's initial distribution (the generator seeded as ``eval/ate_rpe.py`` seeds
the sample's plan), each is rolled out 3 times by the base world model, ONCE, and the
final imagined frames are scored by every offline goal distance of
:class:`planners.cost.GoalDistance` (the learned ones whose networks ``--ckpt`` holds:
the GNM's temporal distance, the pose head's).
Per distance it reports what CEM would return, the elite mean's ATE/RPE against the
ground truth, and how well the distance ranks the candidates: the mean Spearman
correlation between its cost and each candidate's true ATE (1 = a perfect ranking,
0 = chance), and the same with the error of its final heading ("yaw corr."). Two
model-free references bracket them: the prior's mean driven blind, and the elite mean
of the 5 candidates nearest the truth (an oracle). On the simulator's data,
``--sim-oracle`` also scores the views the simulator really renders at each
candidate's waypoints (a perfect world model; ``--sim-only``: those alone), which
separates what a distance can rank from what the world model imagines.

With several ``--steps`` (and ``--distilled DIR``: every step count distilled there) the
same samples and candidates run under each sampler, which gives planning quality against
sampler steps for every distance at once (``--figure``), with the seconds each sample's
rollouts took. Choose the planning distance and the default step count here, on
validation worlds, never on the test split.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from eval.ate_rpe import load_sample, load_samples, parse_cli, run_checked
from nav_come.core.checkpoint import checkpoint_hash
from nav_come.core.data import dataset_config, poses, read_trajectory
from nav_come.core.data.config import add_data_args
from nav_come.core.geometry import se2_compose, waypoints_from_actions, wrap_angle
from nav_come.core.io import atomic_write_text
from nav_come.core.metrics import ate, rpe, spearman
from nav_come.core.precision import add_precision_arg, resolve, use_bf16
from nav_come.distill import distilled_steps, distilled_world_model
from nav_come.world_model import WorldModel
from planners import cem
from planners.cost import DISTANCES, LEARNED, PROGRESS_REDUCTIONS, GoalDistance, candidate_motions, reduce_progress
from planners.methods import load_distance
from planners.progress import load_progress_head

OFFLINE = [d for d in DISTANCES if d not in ("auto", "lpips", *LEARNED)]


def elite_plan(z: torch.Tensor, costs: np.ndarray, cfg: cem.CEMConfig) -> np.ndarray:
    """CEM's answer after one iteration: the waypoints (H, 3) of the mean of the top-k candidates."""
    best, _ = cem.elites(z, torch.as_tensor(costs, dtype=torch.float32), cfg.top_k)
    return waypoints_from_actions(cem.decode(best.mean(0)[None], cfg)[0]).numpy()


def sim_world(data: Path, traj: str) -> tuple[str, int] | None:
    """(family, world seed) of a trajectory our simulator collected (named ``family_seed_k``), else None."""
    meta = Path(data) / "dataset.json"
    if not meta.is_file() or json.loads(meta.read_text()).get("name") != "nav_come_sim":
        return None
    parts = traj.rsplit("_", 2)
    if len(parts) != 3 or not parts[1].isdigit():  # not a name the collector gives
        return None
    return parts[0], int(parts[1])


def stop_at_walls(sim, pose: np.ndarray, world: np.ndarray, checks: int = 4) -> np.ndarray:
    """Where the robot really is along each candidate: world poses (N, K, 3) from ``pose``, each
    held at the last free pose from the first waypoint the robot cannot reach (a collision on the
    straight segment to it, checked at ``checks`` points). The simulator's robot is put back."""
    keep, out = sim.pose, world.copy()
    for n in range(len(world)):
        last = np.asarray(pose, np.float64)
        for k in range(world.shape[1]):
            steps = [last + (world[n, k] - last) * (i / checks) for i in range(1, checks + 1)]
            if not all(sim.set_pose(p) for p in steps):
                out[n, k:] = last  # stopped: every later view is this one
                break
            last = world[n, k]
    sim.set_pose(keep)
    return out


def true_views(sim, pose: np.ndarray, wps: np.ndarray, frames: int, spacing: float,
               walls: bool = False) -> torch.Tensor:  # fmt: skip
    """What the camera really sees at the last ``frames`` waypoints of every candidate: (N, F, 3, H, W)
    in [0, 1], JPEG-compressed as the dataset's frames are. pose: world (x, y, yaw) at t; wps (N, K, 3)
    in spacing units, robot frame at t. walls: the robot stops at the first wall it meets
    (:func:`stop_at_walls`); otherwise the camera is put at every waypoint, walls or not."""
    local = wps.astype(np.float64) * [spacing, spacing, 1.0]  # (N, K, 3) metres
    world = se2_compose(np.broadcast_to(pose, local.shape), local)
    world = (stop_at_walls(sim, pose, world) if walls else world)[:, -frames:]
    out = np.empty((*world.shape[:2], sim.image_size, sim.image_size, 3), np.uint8)
    for n, f in np.ndindex(*world.shape[:2]):
        ok, jpg = cv2.imencode(".jpg", sim.render(world[n, f])[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        out[n, f] = cv2.imdecode(jpg, cv2.IMREAD_COLOR)[..., ::-1]
    return torch.from_numpy(out).float().div(255).movedim(-1, -3)


@torch.no_grad()
def score_sample(wm: WorldModel, sample: dict, distances: list[GoalDistance], cfg: cem.CEMConfig, rollouts: int,
                 gen: torch.Generator, sim=None, spacing: float = 0.25, imagine: bool = True,
                 progress=None) -> dict:  # fmt: skip
    """Every distance's (N,) candidate costs, the candidates z (N, 3) and their true ATEs (N,).
    With ``sim`` (the sample's simulator world) also every distance on the true views (key ``kind@sim``);
    ``imagine=False``: only those (no rollouts). progress: a goal-progress head, read on every
    frame of each rollout (keys ``progress_<reduction>``, frames to the goal)."""
    z = cem.sample(*cem.initial(cfg), cfg, gen)  # as cem.plan draws its first iteration
    deltas = cem.decode(z, cfg)  # (N, H, 3)
    F = max(d.frames for d in distances)
    goal_latent = wm.encode(sample["goal"][None, None].to(wm.device))[0, 0]
    costs = {}
    if imagine:
        ctx = wm.context_latents(sample["context"], 1)
        latents = wm.rollout(ctx, candidate_motions(deltas, rollouts), generator=gen, decode=False)["latents"]
        frames = wm.decode(latents[:, -F:])  # (N*R, F, 3, H, W)
        for d in distances:
            pred, goal = (frames, sample["goal"]) if d.needs_pixels else (latents[:, -1:], goal_latent)
            pred = pred[:, -d.frames :] if d.frames > 1 else pred[:, -1]
            costs[d.kind] = d(pred, goal).view(cfg.n_candidates, rollouts).mean(1).float().cpu().numpy()
        if progress is not None:
            costs |= progress_costs(progress, latents, goal_latent, rollouts)
    wps = waypoints_from_actions(deltas).numpy()  # (N, H, 3)
    true_ate = ate(wps[..., :2], np.broadcast_to(sample["gt"][:, :2], wps[..., :2].shape))
    if sim is not None:  # the same distances on the views the simulator really renders there
        views = true_views(sim, sample["pose"], wps, F, spacing)  # (N, F, 3, H, W)
        for d in distances:
            pred, goal = (views, sample["goal"]) if d.needs_pixels else (wm.encode(views[:, -1:]), goal_latent)
            pred = pred[:, -d.frames :] if d.frames > 1 else pred[:, -1]
            costs[f"{d.kind}@sim"] = d(pred, goal).float().cpu().numpy()
        if progress is not None:  # every waypoint's true view
            every = wm.encode(true_views(sim, sample["pose"], wps, wps.shape[1], spacing))  # (N, K, c, h, w)
            costs |= {f"{k}@sim": v for k, v in progress_costs(progress, every, goal_latent, 1).items()}
    yaw_err = np.abs(wrap_angle(wps[:, -1, 2] - float(sample["gt"][-1, 2])))  # (N,) final heading error
    return {"z": z, "costs": costs, "true_ate": np.asarray(true_ate), "yaw_err": yaw_err}


def progress_costs(head, latents: torch.Tensor, goal: torch.Tensor, rollouts: int) -> dict[str, np.ndarray]:
    """{"progress_<reduction>": (N,)} frames to the goal, every reduction of the per-frame estimates
    of latents (N*R, K, c, h, w), averaged over each candidate's R rollouts."""
    steps = head.steps(latents.flatten(0, 1), goal).view(*latents.shape[:2])  # (N*R, K), read once
    return {f"progress_{r}": reduce_progress(steps, r).view(-1, rollouts).mean(1).float().cpu().numpy()
            for r in PROGRESS_REDUCTIONS}


def combinations(costs: dict[str, np.ndarray], weights: list[float]) -> dict[str, np.ndarray]:
    """The final-frame latent MSE plus w x each progress reduction, for every w (keys
    ``latent_mse+<w>progress_<reduction>``, ``@sim`` for the true views')."""
    out = {}
    for suffix in ("", "@sim"):
        base = costs.get(f"latent_mse{suffix}")
        if base is None:
            continue
        for reduce in PROGRESS_REDUCTIONS:
            value = costs.get(f"progress_{reduce}{suffix}")
            for w in weights if value is not None else []:
                out[f"latent_mse+{w:g}progress_{reduce}{suffix}"] = base + w * value
    return out


def validation_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The arguments of a diagnostic run on validation samples: --data, --ckpt, --split, the
    field's split layout and --n-samples."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/maze"))
    p.add_argument("--ckpt", type=Path, help="checkpoint folder (default: checkpoints/<world of --data>)")
    p.add_argument("--split", default="val", help="val (the default; choose settings here) or test")
    add_data_args(p)
    p.add_argument("--n-samples", type=int, default=40)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = validation_parser("python eval/costs.py", __doc__)
    p.add_argument("--steps", type=int, nargs="+", default=[1], help="the world model's sampler steps (one run each)")
    p.add_argument("--distilled", type=Path, help="also run the base distilled for each step count in this folder")
    p.add_argument("--candidates", type=int, default=120)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--rollouts", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    add_precision_arg(p)
    p.add_argument("--threads", type=int)
    p.add_argument("--json", type=Path)
    p.add_argument("--figure", type=Path, help="PNG of ATE against sampler steps, per distance")
    p.add_argument("--sim-oracle", action="store_true",
                   help="also score the views the simulator renders at each candidate's waypoints (a perfect world "
                        "model): separates what the distance can rank from what the world model imagines")
    p.add_argument("--sim-only", action="store_true", help="with --sim-oracle: only the true views, no rollouts")
    p.add_argument("--progress-weights", type=float, nargs="*", default=[0.001, 0.003, 0.01, 0.03, 0.1],
                   help="with CKPT/progress: also rank latent MSE + w x each progress reduction, for every w")
    return p


def world_models(args) -> list[tuple[str, int, WorldModel]]:
    """(sampler, steps, world model) for every ``--steps`` (multistep DDIM), then every step count
    distilled in ``--distilled``."""
    if args.sim_only:  # the autoencoder (for the latent distance), no sampler
        return [("simulator", 0, WorldModel.from_pretrained(args.ckpt, device=args.device, precision=args.precision))]
    out = [("multistep", k, WorldModel.from_pretrained(args.ckpt, device=args.device, sampler_steps=k,
                                                   precision=args.precision))
           for k in args.steps]  # fmt: skip
    for k in distilled_steps(args.distilled) if args.distilled else []:
        bf16 = use_bf16(args.precision, args.device)
        out.append(("distilled", k, distilled_world_model(args.ckpt, args.distilled, k, args.device, bf16)))
    return out


def score_run(args, wm: WorldModel, samples: list[dict], distances: list[GoalDistance], cem_cfg, sp: float,
              progress=None) -> dict:  # fmt: skip
    """One sampler's rows (every distance and the two references) and its median seconds per sample."""
    kinds = [] if args.sim_only else [d.kind for d in distances]
    names = {d.kind: d.name for d in distances}
    if progress is not None:
        extra = [f"progress_{r}" for r in PROGRESS_REDUCTIONS]
        extra += [f"latent_mse+{w:g}progress_{r}" for r in PROGRESS_REDUCTIONS for w in args.progress_weights]
        kinds += [] if args.sim_only else extra
        names |= {f"progress_{r}": f"progress head, {r} over the rollout's frames" for r in PROGRESS_REDUCTIONS}
        names |= {f"latent_mse+{w:g}progress_{r}": f"latent MSE + {w:g} x progress ({r})"
                  for r in PROGRESS_REDUCTIONS for w in args.progress_weights}  # fmt: skip
    if args.sim_oracle:
        names.update({f"{k}@sim": f"{names[k]}, true views" for k in list(names)})
        kinds += [f"{d.kind}@sim" for d in distances]
        kinds += [f"{k}@sim" for k in extra] if progress is not None else []
    errs = {k: [] for k in [*kinds, "prior mean (blind)", "oracle top-5"]}
    rho, rho_yaw, seconds = {k: [] for k in kinds}, {k: [] for k in kinds}, []
    prior = waypoints_from_actions(cem.decode(torch.tensor(cem_cfg.init_mean)[None], cem_cfg)[0]).numpy()
    size = wm.ae.config.image_size
    for i, s in enumerate(tqdm(samples, desc="costs", unit="sample")):
        sample = load_sample(args.data, s, sp, size)
        sim = None
        if args.sim_oracle:
            tr = read_trajectory(args.data / s["traj"], load_images=False)
            sample["pose"] = poses(tr.position, tr.yaw)[s["t"]]  # world pose at t
            sim = simulator(sim_world(args.data, s["traj"]), size)
        gen = torch.Generator().manual_seed(args.seed * 100_003 + i)  # as eval/ate_rpe.py seeds sample i
        start = time.perf_counter()
        r = score_sample(wm, sample, distances, cem_cfg, args.rollouts, gen, sim, sp, not args.sim_only, progress)
        r["costs"] |= combinations(r["costs"], args.progress_weights if progress is not None else [])
        seconds.append(time.perf_counter() - start)
        gt = sample["gt"][:, :2]
        plans = {k: elite_plan(r["z"], c, cem_cfg) for k, c in r["costs"].items()}
        plans["prior mean (blind)"] = prior
        plans["oracle top-5"] = elite_plan(r["z"], r["true_ate"], cem_cfg)
        for k, wp in plans.items():
            errs[k].append((ate(wp[:, :2], gt), rpe(wp[:, :2], gt)))
        for k in kinds:
            rho[k].append(spearman(r["costs"][k], r["true_ate"]))
            rho_yaw[k].append(spearman(r["costs"][k], r["yaw_err"]))
    rows = []
    for k, e in errs.items():
        e = np.asarray(e)  # (n, 2)
        row = {"distance": names.get(k, k), "key": k, "ate": float(e[:, 0].mean()),
               "rpe": float(e[:, 1].mean()), "ate_m": float(e[:, 0].mean() * sp), "n": len(e),
               "per_sample_ate": e[:, 0].tolist()}  # fmt: skip
        if k in rho:
            row["spearman"] = float(np.nanmean(rho[k]))
            row["spearman_yaw"] = float(np.nanmean(rho_yaw[k]))
        rows.append(row)
    return {"rows": rows, "s_per_sample": float(np.median(seconds))}


@functools.cache
def simulator(world: tuple[str, int], size: int):
    from envs.sim import Simulator

    return Simulator(world, size)


def run(args) -> dict:
    cfg = dataset_config(args.data, args.dataset, args.spacing)
    sp = cfg.metric_waypoint_spacing
    cem_cfg = cem.CEMConfig.for_dataset(cfg, n_candidates=args.candidates, top_k=args.top_k)
    samples = load_samples(args.data, args.split, args.split_dir, args.dataset, args.n_samples)
    if not samples:
        raise ValueError(f"no evaluation samples in the {args.split} split of {args.data}")
    if args.sim_only and not args.sim_oracle:
        raise ValueError("--sim-only scores the simulator's views: add --sim-oracle")
    if args.sim_oracle and sim_world(args.data, samples[0]["traj"]) is None:
        raise ValueError(f"--sim-oracle needs data collected by this project's simulator; {args.data} is not")
    distances = [GoalDistance(k) for k in OFFLINE]
    distances += [load_distance(k, args.ckpt, args.device) for k, folder in LEARNED.items()
                  if (args.ckpt / folder).is_dir()]  # the learned ones whose networks are there  # fmt: skip
    progress = load_progress_head(args.ckpt / "progress", args.device) if (args.ckpt / "progress").is_dir() else None
    protocol = {"split": args.split, "n_samples": len(samples), "seed": args.seed, "candidates": cem_cfg.n_candidates,
                "top_k": cem_cfg.top_k, "rollouts": args.rollouts, "ckpt": str(args.ckpt),
                "distilled": str(args.distilled) if args.distilled else None,
                "precision": resolve(args.precision, args.device),
                "progress_head": checkpoint_hash(args.ckpt / "progress") if progress is not None else None}  # fmt: skip
    out = {"runs": [], "protocol": protocol, "data": str(args.data)}
    for sampler, steps, wm in world_models(args):
        out["runs"].append({"sampler": sampler, "sampler_steps": steps,
                            **score_run(args, wm, samples, distances, cem_cfg, sp, progress)})  # fmt: skip
        if args.json:  # after every sampler: a long run that stops keeps what it measured
            atomic_write_text(args.json, json.dumps(out, indent=2))
    return out


def curve_figure(path: Path, runs: list[dict]) -> None:
    """ATE of every distance against sampler steps (multistep lines, distilled markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, key in enumerate(r["key"] for r in runs[0]["rows"]):
        pts = {s: [(run["sampler_steps"], row["ate"]) for run in runs if run["sampler"] == s
                   for row in run["rows"] if row["key"] == key] for s in ("multistep", "distilled")}  # fmt: skip
        name = next(r["distance"] for r in runs[0]["rows"] if r["key"] == key)
        color = f"C{i}"
        if pts["multistep"]:
            ax.plot(*zip(*pts["multistep"], strict=True), "o-", color=color, label=name)
        if pts["distilled"]:
            ax.plot(*zip(*pts["distilled"], strict=True), "*", ms=12, color=color)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sampler steps per prediction (stars: distilled)")
    ax.set_ylabel("ATE (spacing units), one CEM iteration")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(rows: list[dict]) -> str:
    lines = [f"{'distance':<46} {'ATE':>6} {'RPE':>6} {'ATE (m)':>8} {'rank corr.':>10} {'yaw corr.':>9}"]
    for r in rows:
        rho = f"{r['spearman']:>10.3f} {r['spearman_yaw']:>9.3f}" if "spearman" in r else ""
        lines.append(f"{r['distance']:<46} {r['ate']:>6.3f} {r['rpe']:>6.3f} {r['ate_m']:>8.3f} {rho}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_cli(build_parser(), argv)
    out = run_checked(run, args)
    if out is None:
        return 2
    for r in out["runs"]:
        print(f"\n{r['sampler']}, {r['sampler_steps']} step(s), {r['s_per_sample']:.1f} s per sample "
              f"({out['protocol']['n_samples']} {out['protocol']['split']} samples)")
        print(format_table(r["rows"]))
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=2))
    if args.figure:
        curve_figure(args.figure, out["runs"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
