"""The initial CEM distribution of a dataset (:mod:`nav_come.core.data.cem_prior`), and a check of it.

    python -m eval.cem_prior --data data/maze [--split train] [--check val]

It prints the means and standard deviations of the training split's 8-step motions in CEM's
normalised space, the values ``CEM_INIT`` holds per dataset. Only the training split is read:
never the test split.

``--check val`` scores a prior on the split's ``navigation_eval.json`` samples without any
model: ``mean plan`` drives the prior's mean (a blind baseline a planner must beat) and
``best of N`` is the candidate, among N drawn from it, closest to the ground truth (an
oracle: the best one CEM iteration can pick). It prints both for the measured prior and for
RECON's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from nav_come.core.data.actions import gt_waypoints
from nav_come.core.data.cem_prior import HORIZON, cem_prior
from nav_come.core.data.config import add_data_args, dataset_config
from nav_come.core.data.recon import DataFormatError, read_trajectory, split_path


def check(data: Path, split: str, mean, std, n_candidates: int = 120, seed: int = 0, split_dir=None, dataset=None,
          spacing: float | None = None):
    """(mean-plan ATE, mean-plan RPE, best-of-N ATE, samples) of a prior on the split's
    navigation_eval samples (see the module docstring), in spacing units."""
    import json

    import torch

    from nav_come.core.metrics import ate, rpe
    from planners import cem

    cfg = cem.CEMConfig(init_mean=tuple(mean), init_std=tuple(std), n_candidates=n_candidates)
    spacing = dataset_config(data, dataset, spacing).metric_waypoint_spacing
    index = split_path(data, split, split_dir, dataset).parent / "navigation_eval.json"
    samples = json.loads(index.read_text())
    g = torch.Generator().manual_seed(seed)
    plan = cem.decode(torch.tensor([mean], dtype=torch.float32), cfg)  # (1, H, 3)
    plan_xy = cem.waypoints_from_actions(plan[0])[:, :2].numpy()
    scores = []
    for sample in samples:
        tr = read_trajectory(data / sample["traj"], load_images=False)
        gt = gt_waypoints(tr.position, tr.yaw, sample["t"], HORIZON, spacing=spacing)[:, :2]
        z = (torch.tensor(mean) + torch.tensor(std) * torch.randn(n_candidates, 3, generator=g)).clamp(-1, 1)
        xy = torch.stack([cem.waypoints_from_actions(d) for d in cem.decode(z.float(), cfg)])[..., :2].numpy()
        scores.append((ate(plan_xy, gt), rpe(plan_xy, gt), float(ate(xy, np.broadcast_to(gt, xy.shape)).min())))
    return (*np.mean(scores, 0).tolist(), len(samples))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.cem_prior", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, help="folder of RECON-format trajectory folders")
    p.add_argument("--split", default="train", help="split measured (default train)")
    add_data_args(p)
    p.add_argument("--check", metavar="SPLIT", help="score the prior on this split's navigation_eval samples (val)")
    args = p.parse_args(argv)
    try:
        mean, std, n = cem_prior(args.data, args.split, args.split_dir, args.dataset, args.spacing)
    except (DataFormatError, ValueError, FileNotFoundError) as e:
        print(f"cem_prior: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"{n} motions of {HORIZON} steps from {args.data} ({args.split})")
    print(f"cem_init_mean = {mean}  # normalised (dx, dy, u)")
    print(f"cem_init_std = {std}")
    if args.check:
        from nav_come.core.data.config import CEM_INIT

        print(f"\nno model, {args.check} split (spacing units){'mean plan ATE':>16} {'RPE':>6} {'best of 120 ATE':>16}")
        for name, (m, s) in (("measured prior", (mean, std)), ("RECON's prior", CEM_INIT["recon"])):
            a, r, best, n = check(args.data, args.check, m, s, split_dir=args.split_dir, dataset=args.dataset,
                                  spacing=args.spacing)
            print(f"{name:<42}{a:>14.3f} {r:>6.3f} {best:>16.3f}   ({n} samples, seed 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
