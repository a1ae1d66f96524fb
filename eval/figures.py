"""Figures people look at: a plan (context, goal, imagined rollout, waypoints), trajectory plots,
and planning quality against cost from ``eval/ate_rpe.py`` JSON files::

    python -m eval.figures cost --json run1.json run2.json ... --out cost.png
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nav_come.core.io import atomic_write_bytes  # noqa: E402


def _save(fig, path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _strip(ax, frames: list[np.ndarray], title: str) -> None:
    ax.imshow(np.concatenate(frames, 1))
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def plan_figure(path, context: np.ndarray, goal: np.ndarray, waypoints: np.ndarray, spacing: float,
                imagined: np.ndarray | None = None, truth: np.ndarray | None = None, title: str = "",
                compare: dict | None = None) -> Path:  # fmt: skip
    """context (C, H, W, 3) uint8; goal (H, W, 3); waypoints (K, 3) spacing units; imagined (K, H, W, 3);
    compare: another method's plan drawn beside it ({"method", "waypoints"})."""
    fig = plt.figure(figsize=(11, 5.2))
    grid = fig.add_gridspec(3, 3, width_ratios=[3, 1, 2.2])
    _strip(fig.add_subplot(grid[0, 0]), list(context), "context (oldest → newest)")
    ax = fig.add_subplot(grid[0, 1])
    ax.imshow(goal)
    ax.set_title("goal", fontsize=9)
    ax.axis("off")
    if imagined is not None:
        _strip(fig.add_subplot(grid[1, :2]), list(imagined), "imagined rollout of the plan (world model)")
    ax = fig.add_subplot(grid[:, 2])
    xy = np.vstack([[0, 0], waypoints[:, :2]]) * spacing
    ax.plot(xy[:, 1], xy[:, 0], "o-", color="tab:blue", label=title or "plan")
    if compare is not None:
        c = np.vstack([[0, 0], np.asarray(compare["waypoints"])[:, :2]]) * spacing
        ax.plot(c[:, 1], c[:, 0], "x:", color="tab:orange", label=f"{compare['method'].upper()} plan")
    if truth is not None:
        t = np.vstack([[0, 0], truth[:, :2]]) * spacing
        ax.plot(t[:, 1], t[:, 0], "s--", color="tab:green", label="ground truth")
    ax.plot([0], [0], "k^", markersize=10)
    ax.invert_xaxis()  # y points left: seen from above with x up, left is on the left
    ax.set_xlabel("y (m), left positive")
    ax.set_ylabel("x forward (m)")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("waypoints, robot frame", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def trajectories_figure(path, samples: list[dict], spacing: float, title: str = "") -> Path:
    """samples: [{"gt": (K, 3), "methods": {name: (K, 3)}}] in spacing units; one panel per sample."""
    n = len(samples)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    for ax, s in zip(axes[0], samples, strict=True):
        for name, wp in [("ground truth", s["gt"]), *s["methods"].items()]:
            xy = np.vstack([[0, 0], np.asarray(wp)[:, :2]]) * spacing
            ax.plot(xy[:, 1], xy[:, 0], "s--" if name == "ground truth" else "o-", label=name, markersize=3)
        ax.invert_xaxis()  # y points left
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.set_title(s.get("label", ""), fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def cost_quality_figure(path, runs: list[dict], title: str = "") -> Path:
    """ATE against seconds per plan, one line per method through its runs' sampler step counts.

    runs: ``eval/ate_rpe.py --json`` reports (rows with "ate", "s_per_plan"; protocol with
    "sampler_steps")."""
    points: dict[str, list[tuple[float, float, int]]] = {}
    for run in runs:
        for r in run["rows"]:
            points.setdefault(r["method"], []).append((r["s_per_plan"], r["ate"], run["protocol"]["sampler_steps"]))
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for method, pts in points.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=method)
        for sec, value, steps in pts:
            ax.annotate(f"{steps} step{'s' * (steps > 1)}", (sec, value), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)  # fmt: skip
    ax.set_xlim(left=0)
    ax.set_xlabel("seconds per plan")
    ax.set_ylabel("ATE (spacing units)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.figures", description="figures from saved results")
    p.add_argument("what", choices=["cost"])
    p.add_argument("--json", type=Path, nargs="+", required=True, help="eval/ate_rpe.py --json reports")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    try:
        runs = [json.loads(path.read_text()) for path in args.json]
        if not all("rows" in r and "sampler_steps" in r.get("protocol", {}) for r in runs):
            raise ValueError("every --json must be a report of eval/ate_rpe.py --json")
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cost_quality_figure(args.out, runs, args.title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
