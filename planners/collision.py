"""Collision risk of an imagined rollout: a head that reads free space from a latent.

The goal distance scores only the last imagined frame, so a CEM candidate that ends near the
goal's view through a wall costs the same as one that goes round it (closed loop, NWM drove
into walls: docs/results.md, "Closed-loop navigation"). ``ClearanceHead`` reads one autoencoder latent
and regresses the **view clearance**: the distance in metres to the nearest obstacle inside
the camera's field of view (rays over its 90 degrees, up to ``max_range``), which a single
forward view can show, unlike obstacles behind or beside the robot. The planning penalty
(:meth:`ClearanceHead.risk`) is the mean over the imagined frames of how far the predicted
clearance falls below ``margin`` metres; ``collision_weight`` (cost units per metre) adds it to
the goal distance (:mod:`planners.cost`). As a constraint, ``clearance_floor`` (metres) makes a
candidate whose lowest imagined clearance falls below it cost ``FLOOR_COST`` per metre of the
shortfall, far above any goal distance, so it loses to every candidate that keeps the floor
(:meth:`ClearanceHead.breach`).

Labels come from the simulator's worlds: a trajectory named ``<family>_<seed>_<k>`` (what
``envs.collect`` writes) was driven in world ``generate_world(family, seed)``, whose occupancy
grid gives each pose's view clearance. Real RECON data has no map, so the head trains on
simulator data only. Training uses the training split's cached latents::

    python -m planners.collision --data data/maze --ckpt checkpoints/maze --out runs/collision \
        --cache runs/distill/cache --threads 1

Layout of ``--out DIR``: ``DIR/model.safetensors`` + ``DIR/config.json`` (kind ``clearance``,
:func:`load_clearance_head`) and ``DIR/last/`` (resume state; the same command continues).
Validation: mean absolute error (metres) on the val split, next to that of predicting the
training mean, and the recall of views closer than ``margin``. What the head can tell (docs/results.md,
"Collision penalty"): 74% of the validation views closer than 1 m are predicted so, but under
0.5 m (3% of the driven frames) the recall is 10%, 7% with half of each batch drawn from near
views (``--near-share 0.5``), hence the default margin of 1 m: the penalty steers plans away
from walls rather than detecting contact.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nav_come.core import train_loop
from nav_come.core.checkpoint import load_checkpoint, register_kind, save_checkpoint_files
from nav_come.core.data import DataFormatError, split_path
from nav_come.core.train_loop import Distributed, add_run_args, fit, head_cli
from nav_come.latents import LatentSet, encode_split

KIND = "clearance"
FLOOR_COST = 100.0  # cost units per metre below the clearance floor: dominates every goal distance
FOV_DEG = 90.0  # envs.worlds.CAMERA_FOVY: square images, the same horizontally
SIM_NAME = re.compile(r"^([a-z]+)_(\d+)_\d+$")


@dataclass
class ClearanceConfig:
    """latent_channels, latent_size: the autoencoder's latents; widths: conv stages (each after the
    first halves the resolution); max_range: metres the view clearance is capped at; margin:
    the penalty starts below this many metres of predicted clearance."""

    latent_channels: int = 4
    latent_size: int = 16
    widths: tuple[int, ...] = (32, 64, 128)
    hidden: int = 128
    max_range: float = 2.0
    margin: float = 1.0

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)
        if not 0 < self.margin <= self.max_range:
            raise ValueError(f"need 0 < margin <= max_range, got {self.margin}, {self.max_range}")


def _block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(8, c_out), nn.SiLU()]


class ClearanceHead(nn.Module):
    """Latent (B, c, h, w) -> view clearance (B,) in metres, in [0, max_range]."""

    def __init__(self, config: ClearanceConfig):
        super().__init__()
        self.config = c = config
        layers = _block(c.latent_channels, c.widths[0], 1)
        for c_in, c_out in zip(c.widths[:-1], c.widths[1:], strict=True):
            layers += _block(c_in, c_out, 2)
        self.features = nn.Sequential(*layers, nn.Flatten())
        side = c.latent_size // 2 ** (len(c.widths) - 1)
        self.mlp = nn.Sequential(nn.Linear(c.widths[-1] * side * side, c.hidden), nn.SiLU(), nn.Linear(c.hidden, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.config.max_range * torch.sigmoid(self.mlp(self.features(z)).float()[:, 0])

    @torch.no_grad()
    def clearance(self, latents: torch.Tensor) -> torch.Tensor:
        """Imagined latents (B, K, c, h, w) -> (B, K) predicted clearance (metres), on the latents' device."""
        B, K = latents.shape[:2]
        z = latents.flatten(0, 1).to(next(self.parameters()).device, torch.float32)
        return self(z).view(B, K).to(latents.device)

    def risk(self, latents: torch.Tensor) -> torch.Tensor:
        """Imagined latents (B, K, c, h, w) -> (B,) mean over the K frames of max(0, margin - clearance)."""
        return (self.config.margin - self.clearance(latents)).clamp(min=0).mean(1)

    def breach(self, latents: torch.Tensor, floor: float) -> torch.Tensor:
        """Imagined latents (B, K, c, h, w) -> (B,) metres by which the lowest predicted clearance
        of the K frames falls below ``floor`` (0 when every frame keeps it): the constraint's violation."""
        return (floor - self.clearance(latents).amin(1)).clamp(min=0)


register_kind(KIND, ClearanceConfig, ClearanceHead)


def load_clearance_head(directory: str | Path, device: str | torch.device = "cpu") -> ClearanceHead:
    model, metadata = load_checkpoint(directory, KIND, device)
    model.metadata = metadata
    return model.eval()


def view_clearance(occupied: np.ndarray, resolution: float, origin: tuple[float, float], poses: np.ndarray,
                   max_range: float, rays: int = 31) -> np.ndarray:  # fmt: skip
    """Metres from each pose (N, 3) (x, y, yaw) to the first occupied cell along ``rays`` rays over
    the camera's field of view, ``max_range`` where none is hit. occupied (H, W): cell (r, c)
    covers y = origin[1] + r * resolution, x = origin[0] + c * resolution."""
    angles = np.deg2rad(np.linspace(-FOV_DEG / 2, FOV_DEG / 2, rays))
    r = np.arange(0.0, max_range, resolution / 2)  # (S,) sample distances along a ray
    out = np.empty(len(poses))
    for lo in range(0, len(poses), 2048):
        p = poses[lo : lo + 2048]
        a = p[:, 2, None] + angles  # (n, rays)
        x = p[:, 0, None, None] + np.cos(a)[..., None] * r  # (n, rays, S)
        y = p[:, 1, None, None] + np.sin(a)[..., None] * r
        col = np.clip(((x - origin[0]) / resolution).astype(int), 0, occupied.shape[1] - 1)
        row = np.clip(((y - origin[1]) / resolution).astype(int), 0, occupied.shape[0] - 1)
        hit = occupied[row, col].astype(bool)  # (n, rays, S)
        first = np.where(hit.any(-1), hit.argmax(-1), len(r))  # (n, rays) index of the first hit
        out[lo : lo + 2048] = np.append(r, max_range)[first].min(1)
    return out


def world_of(name: str) -> tuple[str, int]:
    """(family, seed) of a simulator trajectory named ``<family>_<seed>_<k>``."""
    m = SIM_NAME.match(name)
    if m is None:
        raise DataFormatError(f"trajectory {name!r} is not named <family>_<seed>_<k>: the collision head trains "
                              "on data collected by envs.collect, whose worlds give the labels")  # fmt: skip
    return m.group(1), int(m.group(2))


def clearance_labels(latents: LatentSet, max_range: float) -> torch.Tensor:
    """View clearance (N,) of every frame of a latent set, from its trajectories' worlds."""
    from envs.occupancy import OccupancyMap
    from envs.worlds import generate_world

    out, maps = np.empty(len(latents.latents)), {}
    poses = latents.poses.numpy()
    for i, name in enumerate(latents.names):
        world = world_of(name)
        if world not in maps:
            maps[world] = OccupancyMap(generate_world(*world))
        occ, span = maps[world], latents.trajectory(i)
        out[span] = view_clearance(occ.occupied, occ.res, (occ.xmin, occ.ymin), poses[span], max_range)
    return torch.from_numpy(out).float()


@torch.no_grad()
def evaluate(model: ClearanceHead, z: torch.Tensor, labels: torch.Tensor, mean: float) -> dict[str, float]:
    """MAE (m), that of always answering the training mean, and the recall of views closer than the margin."""
    pred = torch.cat([model(b.float()) for b in z.split(512)])
    close = labels < model.config.margin
    recall = float((pred[close] < model.config.margin).float().mean()) if bool(close.any()) else float("nan")
    return {"val_mae_m": float((pred - labels).abs().mean()), "val_mae_of_mean_m": float((labels - mean).abs().mean()),
            "val_close_share": float(close.float().mean()), "val_close_recall": recall}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m planners.collision", description=__doc__.split("\n\n")[0])
    train_loop.add_head_args(p, steps=3000, data_help="simulator data (envs.collect) in RECON format")
    p.add_argument("--margin", type=float, default=ClearanceConfig.margin, help="penalty below this clearance (m)")
    p.add_argument("--near-share", type=float, default=0.0,
                   help="share of a batch drawn from views closer than 2 x margin (rare in driven data)")  # fmt: skip
    add_run_args(p)
    return p


def prepare(args: argparse.Namespace, dist: Distributed):
    """Everything the run needs; returns the ``fit`` call to make."""
    ae, key, config = train_loop.head_setup(args, KIND, lambda c, size: ClearanceConfig(c, size, margin=args.margin))
    kw, last = dict(split_dir=args.split_dir, dataset=args.dataset), args.out / "last"
    train = encode_split(ae, key, args.data, "train", args.cache, **kw)
    y = clearance_labels(train, config.max_range)
    mean, val, val_metrics = float(y.mean()), None, {}
    if split_path(args.data, "val", args.split_dir, args.dataset).is_file():
        v = encode_split(ae, key, args.data, "val", args.cache, **kw)
        pick = torch.randperm(len(v.latents), generator=torch.Generator().manual_seed(1234))[:4096]
        val = (v.latents[pick].float(), clearance_labels(v, config.max_range)[pick])
    loop = train_loop.head_loop(args)
    meta = train_loop.head_metadata(args, "planners.collision", near_share=args.near_share, train_mean_m=mean)
    torch.manual_seed(args.seed)

    near = torch.nonzero(y < 2 * config.margin)[:, 0]  # the views a collision penalty must recognise

    def loss_fn(model: ClearanceHead, g: torch.Generator) -> torch.Tensor:
        n_near = int(round(args.near_share * loop.batch_size)) if len(near) else 0
        idx = torch.cat([near[torch.randint(len(near), (n_near,), generator=g)],
                         torch.randint(len(y), (loop.batch_size - n_near,), generator=g)])  # fmt: skip
        z, target = train.latents[idx].float(), y[idx]
        flip = torch.rand(len(idx), generator=g) < 0.5  # a mirrored view has the same clearance
        z[flip] = z[flip].flip(-1)
        return F.smooth_l1_loss(model(z.to(dist.device)), target.to(dist.device), beta=0.1)

    def val_fn(ema: ClearanceHead) -> float:
        val_metrics.update(evaluate(ema, *val, mean))
        return val_metrics["val_mae_m"]

    def export(ema: ClearanceHead, info: dict) -> None:
        save_checkpoint_files(args.out, ema, KIND, {**meta, **info, **val_metrics})

    return functools.partial(fit, ClearanceHead(config), KIND, loss_fn, loop, dist, last, export,
                             val_fn if val is not None else None, "clearance head")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return head_cli("planners.collision", build_parser(), prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
