"""A learned goal distance in latent space: where the goal lies, seen from a frame.

The image distances rank CEM candidates by how their last imagined frame LOOKS next to
the goal, and a view is dominated by its heading: on validation worlds, even on the views
the simulator really renders, they rank the candidates' final heading far better than
their path (``python eval/costs.py --sim-oracle``). ATE scores positions. ``PoseHead``
reads two autoencoder latents, an observation's and the goal's, and regresses the goal's
pose in the observation's robot frame: (x, y) in spacing units and the heading change as
(cos, sin). The planning cost (``GoalDistance("pose")``) is the predicted distance to the
goal plus ``yaw_weight`` spacing units per radian of predicted heading error.

Training pairs come from the training split's cached latents (the ones the experts train
on): an anchor frame, and a partner frame of the same trajectory whose position lies
within ``max_distance`` spacing units of it (earlier or later, including revisits), so
the head sees the offsets a CEM candidate can end at, in every direction::

    python -m planners.pose_distance --data data/maze --ckpt checkpoints/maze --out checkpoints/maze/pose --threads 1

(``--cache runs/distill/cache`` reuses the latents a distillation run encoded.)

Layout of ``--out DIR``: ``DIR/model.safetensors`` + ``DIR/config.json`` (kind ``posehead``,
:func:`load_pose_head`), and ``DIR/last/`` (resume state; the same command continues).
Validation: mean position error (spacing units) and heading error (degrees) on fixed pairs
of the val split. Mistakes print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nav_come.core import train_loop
from nav_come.core.checkpoint import load_checkpoint, register_kind, save_checkpoint_files
from nav_come.core.data import dataset_config, split_path
from nav_come.core.geometry import se2_relative, wrap_angle
from nav_come.core.train_loop import Distributed, add_run_args, fit, head_cli
from nav_come.latents import LatentSet, encode_split

KIND = "posehead"
VAL_PAIRS = 2048


@dataclass
class PoseHeadConfig:
    """latent_channels, latent_size: the autoencoder's latents; widths: conv stages (each after the
    first halves the resolution); hidden, dropout: the MLP's width and dropout; max_distance,
    max_turn: training pairs lie within this many spacing units and degrees of heading of each
    other (views that overlap);
    yaw_weight: the cost's spacing units per radian of heading error."""

    latent_channels: int = 4
    latent_size: int = 16
    widths: tuple[int, ...] = (32, 64, 128)
    hidden: int = 256
    dropout: float = 0.3
    max_distance: float = 8.0
    max_turn: float = 45.0
    yaw_weight: float = 0.5

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)
        if self.latent_size % 2 ** (len(self.widths) - 1):
            raise ValueError(f"latent_size {self.latent_size} must be divisible by 2^(len(widths) - 1)")
        if self.max_distance <= 0 or not 0 < self.max_turn <= 180 or self.yaw_weight < 0:
            raise ValueError(f"need max_distance > 0, 0 < max_turn <= 180 and yaw_weight >= 0, got "
                             f"{self.max_distance}, {self.max_turn}, {self.yaw_weight}")  # fmt: skip


def _block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(8, c_out), nn.SiLU()]


def latent_trunk(c_in: int, widths: tuple[int, ...]) -> nn.Sequential:
    """Conv stages over stacked latents (each stage after the first halves the resolution), flattened:
    where things are in the view is what gives a pose or a distance away, so the layout is kept."""
    layers = _block(c_in, widths[0], 1)
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += _block(a, b, 2) + _block(b, b, 1)
    return nn.Sequential(*layers, nn.Flatten())


class PoseHead(nn.Module):
    """(observation latent, goal latent) -> the goal's pose in the observation's frame.

    The two latents are stacked on the channel axis (:func:`latent_trunk`)."""

    def __init__(self, config: PoseHeadConfig):
        super().__init__()
        self.config = c = config
        self.features = latent_trunk(2 * c.latent_channels, c.widths)
        side = c.latent_size // 2 ** (len(c.widths) - 1)
        self.mlp = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(c.widths[-1] * side * side, c.hidden), nn.SiLU(),
                                 nn.Dropout(c.dropout), nn.Linear(c.hidden, 4))  # fmt: skip

    def forward(self, obs: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """obs, goal: (B, c, h, w) latents -> (B, 4): x, y (spacing units), cos, sin (unit norm)."""
        out = self.mlp(self.features(torch.cat([obs, goal], 1))).float()
        return torch.cat([out[:, :2], F.normalize(out[:, 2:], dim=1)], 1)

    @torch.no_grad()
    def distance(self, obs: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """Planning cost (B,): predicted distance to the goal + yaw_weight * |heading error|."""
        dev = next(self.parameters()).device
        out = self(obs.to(dev, torch.float32), goal.to(dev, torch.float32))
        yaw = torch.atan2(out[:, 3], out[:, 2]).abs()
        return out[:, :2].norm(dim=1) + self.config.yaw_weight * yaw


register_kind(KIND, PoseHeadConfig, PoseHead)


def load_pose_head(directory: str | Path, device: str | torch.device = "cpu") -> PoseHead:
    model, metadata = load_checkpoint(directory, KIND, device)
    model.metadata = metadata
    return model.eval()


class PairSampler:
    """Anchor/partner frame pairs of one :class:`LatentSet` and their labels.

    A partner is drawn uniformly among the frames of the anchor's trajectory within
    ``max_distance`` spacing units and ``max_turn`` degrees of heading of it (the anchor itself
    included). ``flip``: mirror half the pairs left-right (latents, y and heading change), which
    doubles the views a small dataset offers.
    """

    def __init__(self, latents: LatentSet, spacing: float, max_distance: float, max_turn: float = 180.0,
                 flip: bool = False):  # fmt: skip
        self.set, self.spacing, self.radius = latents, spacing, max_distance * spacing
        self.max_turn, self.flip = np.deg2rad(max_turn), flip
        self.poses = latents.poses.numpy()  # (N, 3) world x, y (metres), yaw
        self.traj = np.repeat(np.arange(len(latents.names)), np.diff(latents.starts.numpy()))  # (N,) trajectory

    def draw(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(obs latents (n, c, h, w), goal latents, labels (n, 4) = x, y, cos, sin of the goal in obs' frame)."""
        anchors = torch.randint(len(self.poses), (n,), generator=g).numpy()
        u = torch.rand(n, generator=g, dtype=torch.float64).numpy()
        partners = np.empty(n, dtype=np.int64)
        for k, (a, v) in enumerate(zip(anchors, u, strict=True)):
            span = self.set.trajectory(int(self.traj[a]))
            turn = np.abs(wrap_angle(self.poses[span, 2] - self.poses[a, 2]))
            dist = np.linalg.norm(self.poses[span, :2] - self.poses[a, :2], axis=1)
            near = np.flatnonzero((dist <= self.radius) & (turn <= self.max_turn + 1e-9))
            partners[k] = span.start + near[min(int(v * len(near)), len(near) - 1)]
        rel = se2_relative(self.poses[anchors], self.poses[partners])  # (n, 3) goal in the anchor's frame
        labels = np.stack([rel[:, 0] / self.spacing, rel[:, 1] / self.spacing, np.cos(rel[:, 2]), np.sin(rel[:, 2])], 1)
        obs, goal = self.set.latents[anchors].float(), self.set.latents[partners].float()
        labels = torch.from_numpy(labels)
        if self.flip:
            m = torch.rand(n, generator=g) < 0.5
            obs[m], goal[m] = obs[m].flip(-1), goal[m].flip(-1)
            labels[m, 1], labels[m, 3] = -labels[m, 1], -labels[m, 3]
        return obs, goal, labels.float()


def pose_loss(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Huber on the position (spacing units) + squared error of the unit heading vector."""
    return F.smooth_l1_loss(pred[:, :2], labels[:, :2]) + (pred[:, 2:] - labels[:, 2:]).pow(2).sum(1).mean()


@torch.no_grad()
def evaluate(model: PoseHead, batch: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Mean position error (spacing units; and that of predicting zero) and heading error (degrees) on fixed pairs."""
    obs, goal, labels = batch
    pred = torch.cat([model(o, gl) for o, gl in zip(obs.split(512), goal.split(512), strict=True)])
    xy = (pred[:, :2] - labels[:, :2]).norm(dim=1).mean()
    zero = labels[:, :2].norm(dim=1).mean()  # the error of always answering "here"
    dyaw = wrap_angle(torch.atan2(pred[:, 3], pred[:, 2]) - torch.atan2(labels[:, 3], labels[:, 2]))
    yaw = torch.rad2deg(dyaw.abs()).mean()
    return {"val_xy_error": float(xy), "val_xy_error_of_zero": float(zero), "val_yaw_error_deg": float(yaw)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m planners.pose_distance", description=__doc__.split("\n\n")[0])
    train_loop.add_head_args(p, steps=4000)
    p.add_argument("--max-distance", type=float, default=PoseHeadConfig.max_distance,
                   help="training pairs lie within this many spacing units")  # fmt: skip
    p.add_argument("--max-turn", type=float, default=PoseHeadConfig.max_turn,
                   help="training pairs differ by at most this many degrees of heading")  # fmt: skip
    p.add_argument("--yaw-weight", type=float, default=PoseHeadConfig.yaw_weight,
                   help="planning cost: spacing units per radian of heading error")  # fmt: skip
    add_run_args(p)
    return p


def prepare(args: argparse.Namespace, dist: Distributed):
    """Everything the run needs; returns the ``fit`` call to make."""
    ae, key, config = train_loop.head_setup(args, KIND, lambda c, size: PoseHeadConfig(
        c, size, max_distance=args.max_distance, max_turn=args.max_turn, yaw_weight=args.yaw_weight))
    spacing = dataset_config(args.data, args.dataset, args.spacing).metric_waypoint_spacing
    kw, last = dict(split_dir=args.split_dir, dataset=args.dataset), args.out / "last"
    pairs = dict(max_distance=config.max_distance, max_turn=config.max_turn)
    train = PairSampler(encode_split(ae, key, args.data, "train", args.cache, **kw), spacing, **pairs, flip=True)
    val_batch, val_metrics = None, {}
    if split_path(args.data, "val", args.split_dir, args.dataset).is_file():
        val = PairSampler(encode_split(ae, key, args.data, "val", args.cache, **kw), spacing, **pairs)
        val_batch = val.draw(VAL_PAIRS, torch.Generator().manual_seed(1234))
    loop, meta = train_loop.head_loop(args), train_loop.head_metadata(args, "planners.pose_distance", spacing=spacing)
    torch.manual_seed(args.seed)

    def loss_fn(model: PoseHead, g: torch.Generator) -> torch.Tensor:
        obs, goal, labels = train.draw(loop.batch_size, g)
        return pose_loss(model(obs.to(dist.device), goal.to(dist.device)), labels.to(dist.device))

    def val_fn(ema: PoseHead) -> float:
        val_metrics.update(evaluate(ema, val_batch))
        return val_metrics["val_xy_error"]

    def export(ema: PoseHead, info: dict) -> None:
        save_checkpoint_files(args.out, ema, KIND, {**meta, **info, **val_metrics})

    return functools.partial(fit, PoseHead(config), KIND, loss_fn, loop, dist, last, export,
                             val_fn if val_batch is not None else None, "pose head")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return head_cli("planners.pose_distance", build_parser(), prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
