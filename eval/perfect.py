"""The perfect-imagination check: the world-model planner with the views the simulator really renders.

    python eval/perfect.py [--data data/maze] [--split val] [--n-samples 40] [--seed 0]
                           [planning flags of eval/ate_rpe.py] [--json out.json]

For each ``navigation_eval`` sample, NWM's planner (the default search and cost, or the
planning flags given) plans twice from the same policy proposals: once scoring its own
imagined rollouts (exactly NWM's row of ``eval/ate_rpe.py`` with the same seed) and once
scoring the views the simulator renders along every candidate, encoded by the same autoencoder
(a perfect world model: the robot stops at the first wall a candidate drives into, and every
later view is the one from there, :func:`eval.costs.stop_at_walls`). The same cost reads both, so the gap between the
two rows is the imagination's, and what stays between the true-view row and the best
candidate is the cost's and the search's.

Rows: the two plans; GNM's prediction (the first population's exact GNM proposal); the
proposal nearest the truth (an oracle of the first population: what a perfect ranking of the
proposals would plan). Per plan it also reports the rank correlation (Spearman) between the
cost and the true ATE over the first population, and the share of samples whose plan is
closer to the truth than GNM's. Choose costs here, on validation worlds; this needs data
collected by this project's simulator.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from eval.ate_rpe import load_sample, load_samples, parse_cli, run_checked
from eval.costs import sim_world, simulator, true_views, validation_parser
from nav_come.core.data import dataset_config, poses, read_trajectory
from nav_come.core.geometry import waypoints_from_actions
from nav_come.core.io import atomic_write_text
from nav_come.core.metrics import ate, rpe, spearman
from nav_come.core.precision import resolve
from planners import cem
from planners.config import add_plan_args, plan_config_from_args
from planners.methods import load_method
from planners.planner import PlanResult

ROWS = {
    "imagined": "NWM planner, imagined views",
    "true": "NWM planner, true views (perfect world model)",
    "gnm": "GNM (its proposal)",
    "oracle": "best first-population proposal (oracle)",
}


def view_latents(planner, sim, pose: np.ndarray, spacing: float):
    """The imagination of a perfect world model: per-step deltas (N, H, 3) -> latents (N, H, c, h, w)
    of the views the simulator renders at every waypoint from the world pose ``pose`` at t, the robot
    stopping at the first wall it meets (:func:`eval.costs.stop_at_walls`)."""
    wm = planner.world_model

    def imagine(deltas: torch.Tensor) -> torch.Tensor:
        wps = waypoints_from_actions(deltas.float().cpu()).numpy()  # (N, H, 3) spacing units, robot frame
        views = true_views(sim, pose, wps, wps.shape[1], spacing, walls=True)  # (N, H, 3, h, w)
        return wm.encode(views.to(wm.device))

    return imagine


class TrueViewPlanner:
    """A world-model planner that, in closed loop, scores the views the simulator renders along its
    candidates (:func:`view_latents`) instead of its imagined rollouts: the same search and cost with a
    perfect world model (``eval/navigate.py --true-views``). ``sim()`` gives the live simulator;
    each plan starts from its robot's pose. Everything else is the wrapped planner's."""

    def __init__(self, planner, sim, spacing: float):
        if getattr(planner, "seeded", None) is None:
            raise ValueError("--true-views plans with the seeded search of a world-model method (NWM, CoME, ...)")
        self.planner, self.sim, self.spacing = planner, sim, spacing

    def __getattr__(self, name: str):
        return getattr(self.planner, name)

    @torch.no_grad()
    def __call__(self, context: torch.Tensor, goal: torch.Tensor, generator: torch.Generator | None = None,
                 warm_start=None, imagine: bool = False) -> PlanResult:  # fmt: skip
        p, sim = self.planner, self.sim()
        proposals = p.proposer(context, goal, generator)
        start, note = p.start(context)
        cost = p.cost(start, goal, generator, imagine=view_latents(p, sim, sim.pose, self.spacing))
        res = cem.seeded_plan(cost, proposals, p.seeded, generator)
        return PlanResult(res.waypoints, res.cost, f"{p.cost_name}, on true views", note=note)


@torch.no_grad()
def check_sample(planner, sample: dict, sim, pose: np.ndarray, spacing: float, seed: int, i: int) -> dict:
    """Both plans of one sample and the first population's ranks; errors (ATE, RPE) per row."""
    gt = sample["gt"][:, :2]
    out, ranks = {}, {}
    for row, imagine in (("imagined", None), ("true", view_latents(planner, sim, pose, spacing))):
        gen = torch.Generator().manual_seed(seed * 100_003 + i)  # as eval/ate_rpe.py seeds sample i
        proposals = planner.proposer(sample["context"], sample["goal"], gen)  # drawn first, as the planner does
        start, _ = planner.start(sample["context"])
        cost, calls = planner.cost(start, sample["goal"], gen, imagine=imagine), []

        def recorded(deltas: torch.Tensor, cost=cost, calls=calls) -> torch.Tensor:
            calls.append(cost(deltas))
            return calls[-1]

        res = cem.seeded_plan(recorded, proposals, planner.seeded, gen)
        wp = res.waypoints.cpu().numpy()
        out[row] = (ate(wp[:, :2], gt), rpe(wp[:, :2], gt))
        ranks[row] = calls[0][: len(proposals)].float().cpu().numpy()  # the first population's costs
    wps = waypoints_from_actions(proposals).numpy()  # (P, H, 3): the same proposals both times
    errs = [(ate(w[:, :2], gt), rpe(w[:, :2], gt)) for w in wps]
    true_ate = np.array([e[0] for e in errs])
    out["gnm"] = errs[planner.proposer.n_nomad]  # GNM's exact prediction comes after NoMaD's samples
    out["oracle"] = errs[int(true_ate.argmin())]
    return {"errors": out, "spearman": {k: spearman(v, true_ate) for k, v in ranks.items()}}


def run(args) -> dict:
    cfg = dataset_config(args.data, args.dataset, args.spacing)
    sp = cfg.metric_waypoint_spacing
    config = plan_config_from_args(args, cfg, spacing=sp)
    if config.search != "seeded":
        raise ValueError("the check compares plans from the same policy proposals: keep --search seeded")
    samples = load_samples(args.data, args.split, args.split_dir, args.dataset, args.n_samples)
    if not samples:
        raise ValueError(f"no evaluation samples in the {args.split} split of {args.data}")
    if sim_world(args.data, samples[0]["traj"]) is None:
        raise ValueError(f"the check renders true views: it needs data collected by envs.collect; {args.data} is not")
    planner = load_method("nwm", args.ckpt, args.device, config)
    records, seconds = [], []
    for i, s in enumerate(tqdm(samples, desc="perfect", unit="sample")):
        sample = load_sample(args.data, s, sp, planner.image_size)
        tr = read_trajectory(args.data / s["traj"], load_images=False)
        pose = poses(tr.position, tr.yaw)[s["t"]]  # world pose at t
        start = time.perf_counter()
        records.append(check_sample(planner, sample, simulator(sim_world(args.data, s["traj"]), planner.image_size),
                                    pose, sp, args.seed, i))  # fmt: skip
        seconds.append(time.perf_counter() - start)
    rows = []
    gnm = np.array([r["errors"]["gnm"][0] for r in records])
    for key, name in ROWS.items():
        e = np.array([r["errors"][key] for r in records])  # (n, 2)
        row = {"key": key, "plan": name, "ate": float(e[:, 0].mean()), "rpe": float(e[:, 1].mean()),
               "ate_m": float(e[:, 0].mean() * sp), "beats_gnm": float(np.mean(e[:, 0] < gnm)), "n": len(e),
               "per_sample_ate": e[:, 0].tolist()}  # fmt: skip
        if key in ("imagined", "true"):
            row["spearman"] = float(np.nanmean([r["spearman"][key] for r in records]))
        rows.append(row)
    protocol = {"split": args.split, "n_samples": len(samples), "seed": args.seed, "ckpt": str(args.ckpt),
                "cost": planner.cost_name, "rollouts": config.rollouts,
                "precision": resolve(args.precision, args.device),
                "search": {"proposals_nomad": config.proposals_nomad, "proposals_gnm": config.proposals_gnm,
                           "prior_draws": config.prior_draws, "refine": config.refine,
                           "iterations": config.seeded_iterations}}  # fmt: skip
    return {"rows": rows, "protocol": protocol, "data": str(args.data), "s_per_sample": float(np.median(seconds))}


def format_table(rows: list[dict]) -> str:
    lines = [f"{'plan':<46} {'ATE':>6} {'RPE':>6} {'ATE (m)':>8} {'< GNM':>6} {'rank corr.':>10}"]
    for r in rows:
        rho = f"{r['spearman']:>10.3f}" if "spearman" in r else f"{'':>10}"
        lines.append(f"{r['plan']:<46} {r['ate']:>6.3f} {r['rpe']:>6.3f} {r['ate_m']:>8.3f} {r['beats_gnm']:>6.2f} "
                     + rho)  # fmt: skip
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = validation_parser("python eval/perfect.py", __doc__)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    add_plan_args(p)
    p.add_argument("--threads", type=int)
    p.add_argument("--json", type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_cli(build_parser(), argv)
    out = run_checked(run, args)
    if out is None:
        return 2
    print(f"{out['protocol']['n_samples']} {out['protocol']['split']} samples, seed {out['protocol']['seed']}, "
          f"cost: {out['protocol']['cost']}, {out['s_per_sample']:.1f} s per sample")  # fmt: skip
    print(format_table(out["rows"]))
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
