"""The initial CEM distribution of a dataset, measured on its training split.

NWM's planning preset starts CEM at per-dataset statistics of the 2-second motions the
robots drove (docs/design.md, "Planning protocol"). This computes the same statistics for any
RECON-format dataset, in CEM's normalised space (``planners.cem``): for every 8th time step of
every trajectory of the split, the ground-truth 8-step motion gives the mean step ``(dx, dy)``
(final waypoint / 8, mapped to [-1, 1] through the action range) and the final-yaw residual
``u = wrap(yaw_8 - atan2(dy, dx)) / π``. Their means and standard deviations are the values
``CEM_INIT`` holds per dataset. ``python -m eval.cem_prior --data DIR`` prints them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nav_come.core.data.actions import gt_waypoints
from nav_come.core.data.config import ACTION_MAX, ACTION_MIN, dataset_config
from nav_come.core.data.recon import read_split, read_trajectory, split_path
from nav_come.core.geometry import wrap_angle

HORIZON = 8


def motions(data: Path, split: str = "train", split_dir=None, dataset=None, spacing: float | None = None) -> np.ndarray:
    """(N, 3) normalised (dx, dy, u) of every 8th 8-step motion of the split's trajectories."""
    spacing = dataset_config(data, dataset, spacing).metric_waypoint_spacing
    lo, hi = np.array(ACTION_MIN), np.array(ACTION_MAX)
    out = []
    for name in read_split(split_path(data, split, split_dir, dataset)):
        tr = read_trajectory(data / name, load_images=False)
        for t in range(0, len(tr.position) - HORIZON, HORIZON):
            end = gt_waypoints(tr.position, tr.yaw, t, HORIZON, spacing=spacing)[-1]  # (3,)
            step = end[:2] / HORIZON
            u = wrap_angle(end[2] - np.arctan2(step[1], step[0])) / np.pi
            out.append([*((step - lo) / (hi - lo) * 2 - 1), u])
    if not out:
        raise ValueError(f"{data}: the {split} split has no trajectory longer than {HORIZON} steps")
    return np.asarray(out)


def cem_prior(data: Path, split: str = "train", split_dir=None, dataset=None,
              spacing: float | None = None) -> tuple[tuple, tuple, int]:
    """(mean, std, n) of the normalised (dx, dy, u) motions of the split."""
    m = motions(data, split, split_dir, dataset, spacing)
    return tuple(m.mean(0).round(3).tolist()), tuple(m.std(0).round(3).tolist()), len(m)
