"""A goal-progress value on latents: how many steps of driving a view still is from the goal.

A final-frame distance scores a rollout by how much its last imagined frame looks like the
goal. Once the goal is out of view, every candidate's last frame looks equally unlike it, and
the planner wanders. ``ProgressHead`` reads two autoencoder latents, an observation's and the
goal's, and estimates the number of frames a drive needs from the one to the other (a temporal
distance, as ViNT's distance head and the goal-progress values of navigation world-action
models estimate), capped at ``horizon``. The planning cost reads it on every imagined frame of a
rollout (:func:`planners.cost.world_model_cost`, ``progress_weight``), so a candidate that
passes the goal, or heads for where it lies, is preferred before the goal fills the view.

Training pairs come from the training split's cached latents: an anchor frame and a goal frame
``d`` frames later in the same trajectory, ``d`` uniform in 0 .. 2 x horizon. The label is the
number of frames from the anchor to the FIRST frame that stands where the goal stands (within
``match_distance`` spacing units and ``match_turn`` degrees), so a drive that loops before it
arrives does not teach a longer distance than the way it first came. A share ``negatives`` of
the goals come from another place (another trajectory; for the simulator's data, another world)
and are labelled ``horizon`` (far)::

    python -m planners.progress --data data/maze --ckpt checkpoints/maze --out checkpoints/maze/progress --threads 1

Layout of ``--out DIR``: ``DIR/model.safetensors`` + ``DIR/config.json`` (kind ``progresshead``,
:func:`load_progress_head`), and ``DIR/last/`` (resume state; the same command continues).
Validation: mean absolute error in frames on fixed pairs of the val split, that of always
answering the training labels' mean, and the rank correlation of prediction and label on the
pairs of one trajectory (how well it orders views by progress). Mistakes print one line and
exit with status 2.
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
from nav_come.core.geometry import wrap_angle
from nav_come.core.metrics import spearman
from nav_come.core.train_loop import Distributed, add_run_args, fit, head_cli
from nav_come.latents import LatentSet, encode_split
from planners.collision import SIM_NAME
from planners.pose_distance import latent_trunk

KIND = "progresshead"
VAL_PAIRS = 2048


@dataclass
class ProgressConfig:
    """latent_channels, latent_size: the autoencoder's latents; widths, hidden, dropout: the
    network (as :class:`~planners.pose_distance.PoseHeadConfig`); horizon: frames, the cap of the
    estimate (farther, or another place, is ``horizon``); match_distance (spacing units),
    match_turn (degrees): a frame this close to the goal's pose has arrived there; negatives:
    share of training goals from another place."""

    latent_channels: int = 4
    latent_size: int = 16
    widths: tuple[int, ...] = (32, 64, 128)
    hidden: int = 256
    dropout: float = 0.3
    horizon: int = 64
    match_distance: float = 1.0
    match_turn: float = 30.0
    negatives: float = 0.2

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)
        if self.latent_size % 2 ** (len(self.widths) - 1):
            raise ValueError(f"latent_size {self.latent_size} must be divisible by 2^(len(widths) - 1)")
        if self.horizon < 1 or self.match_distance <= 0 or not 0 < self.match_turn <= 180:
            raise ValueError(f"need horizon >= 1, match_distance > 0 and 0 < match_turn <= 180, got "
                             f"{self.horizon}, {self.match_distance}, {self.match_turn}")  # fmt: skip
        if not 0 <= self.negatives < 1:
            raise ValueError(f"negatives is a share in [0, 1), got {self.negatives}")


class ProgressHead(nn.Module):
    """(observation latent, goal latent) -> frames of driving to the goal, in [0, horizon]."""

    def __init__(self, config: ProgressConfig):
        super().__init__()
        self.config = c = config
        self.features = latent_trunk(2 * c.latent_channels, c.widths)
        side = c.latent_size // 2 ** (len(c.widths) - 1)
        self.mlp = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(c.widths[-1] * side * side, c.hidden), nn.SiLU(),
                                 nn.Dropout(c.dropout), nn.Linear(c.hidden, 1))  # fmt: skip

    def forward(self, obs: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """obs, goal: (B, c, h, w) latents -> (B,) logits of the progress fraction steps / horizon."""
        return self.mlp(self.features(torch.cat([obs, goal], 1))).float()[:, 0]

    @torch.no_grad()
    def steps(self, obs: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """Estimated frames from each observation (B, c, h, w) to its goal (B, ...) or one goal (c, h, w): (B,)."""
        dev = next(self.parameters()).device
        obs = obs.to(dev, torch.float32)
        goal = goal.to(dev, torch.float32).expand_as(obs)
        out = torch.cat([self(o, g) for o, g in zip(obs.split(512), goal.split(512), strict=True)])
        return self.config.horizon * torch.sigmoid(out)


register_kind(KIND, ProgressConfig, ProgressHead)


def load_progress_head(directory: str | Path, device: str | torch.device = "cpu") -> ProgressHead:
    model, metadata = load_checkpoint(directory, KIND, device)
    model.metadata = metadata
    return model.eval()


def place_groups(names: list[str]) -> np.ndarray:
    """(n,) group id of each trajectory: the simulator's trajectories of one world
    (``<family>_<seed>_<k>``) are one place; any other trajectory is a place of its own."""
    keys = [m.group(1, 2) if (m := SIM_NAME.match(name)) else name for name in names]
    index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return np.array([index[k] for k in keys])


def frames_to_goal(poses: np.ndarray, goal: int, radius: float, turn: float) -> int:
    """Frames from poses[0] to the first pose within ``radius`` (metres) and ``turn`` (radians) of
    poses[goal]: poses (T, 3) world x, y, yaw of consecutive frames, goal an index into them."""
    near = np.linalg.norm(poses[: goal + 1, :2] - poses[goal, :2], axis=1) <= radius
    near &= np.abs(wrap_angle(poses[: goal + 1, 2] - poses[goal, 2])) <= turn + 1e-9
    return int(np.argmax(near))  # the goal itself qualifies, so some frame does


class ProgressPairs:
    """Anchor/goal frame pairs of one :class:`LatentSet` and their progress labels (frames, capped).

    flip: mirror half the pairs left-right (both latents; the label does not change)."""

    def __init__(self, latents: LatentSet, spacing: float, config: ProgressConfig, flip: bool = False):
        self.set, self.config, self.flip = latents, config, flip
        self.radius, self.turn = config.match_distance * spacing, np.deg2rad(config.match_turn)
        self.poses = latents.poses.numpy()
        self.traj = np.repeat(np.arange(len(latents.names)), np.diff(latents.starts.numpy()))  # (N,) trajectory
        self.place = place_groups(latents.names)[self.traj]  # (N,) place of each frame
        self.ends = latents.starts.numpy()[1:][self.traj]  # (N,) one past the last frame of its trajectory
        if config.negatives > 0 and len(np.unique(self.place)) < 2:
            raise ValueError("the progress head's far pairs need trajectories of at least two places")

    def draw(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(obs latents (n, c, h, w), goal latents, labels (n,) frames to the goal in [0, horizon])."""
        H = self.config.horizon
        anchors = torch.randint(len(self.poses), (n,), generator=g).numpy()
        ahead = torch.randint(2 * H + 1, (n,), generator=g).numpy()
        far = torch.rand(n, generator=g).numpy() < self.config.negatives
        others = torch.randint(len(self.poses), (n,), generator=g).numpy()
        goals, labels = np.empty(n, np.int64), np.empty(n)
        for k, (a, d) in enumerate(zip(anchors, ahead, strict=True)):
            if far[k] or a + d >= self.ends[a]:  # another place (or past the trajectory's end): far
                o = others[k]
                while self.place[o] == self.place[a]:
                    o = (o + 7919) % len(self.poses)
                goals[k], labels[k] = o, H
            else:
                goals[k] = a + d
                labels[k] = min(frames_to_goal(self.poses[a : a + d + 1], d, self.radius, self.turn), H)
        obs, goal = self.set.latents[anchors].float(), self.set.latents[goals].float()
        if self.flip:
            m = torch.rand(n, generator=g) < 0.5
            obs[m], goal[m] = obs[m].flip(-1), goal[m].flip(-1)
        return obs, goal, torch.from_numpy(labels).float()


def progress_loss(logits: torch.Tensor, labels: torch.Tensor, horizon: int) -> torch.Tensor:
    """Binary cross-entropy of the predicted fraction against labels / horizon (a bounded regression)."""
    return F.binary_cross_entropy_with_logits(logits, labels / horizon)


@torch.no_grad()
def evaluate(model: ProgressHead, batch: tuple[torch.Tensor, ...], mean: float) -> dict[str, float]:
    """Mean absolute error (frames), that of always answering ``mean``, and the rank correlation."""
    obs, goal, labels = batch
    pred = model.steps(obs, goal)
    return {"val_mae": float((pred - labels).abs().mean()), "val_mae_of_mean": float((labels - mean).abs().mean()),
            "val_spearman": spearman(pred.numpy(), labels.numpy())}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m planners.progress", description=__doc__.split("\n\n")[0])
    train_loop.add_head_args(p, steps=6000)
    p.add_argument("--horizon", type=int, default=ProgressConfig.horizon, help="frames: the estimate's cap")
    add_run_args(p)
    return p


def prepare(args: argparse.Namespace, dist: Distributed):
    """Everything the run needs; returns the ``fit`` call to make."""
    ae, key, config = train_loop.head_setup(args, KIND, lambda c, size: ProgressConfig(c, size, horizon=args.horizon))
    spacing = dataset_config(args.data, args.dataset, args.spacing).metric_waypoint_spacing
    kw, last = dict(split_dir=args.split_dir, dataset=args.dataset), args.out / "last"
    train = ProgressPairs(encode_split(ae, key, args.data, "train", args.cache, **kw), spacing, config, flip=True)
    mean = float(train.draw(VAL_PAIRS, torch.Generator().manual_seed(99))[2].mean())
    val_batch, val_metrics = None, {}
    if split_path(args.data, "val", args.split_dir, args.dataset).is_file():
        val = ProgressPairs(encode_split(ae, key, args.data, "val", args.cache, **kw), spacing, config)
        val_batch = val.draw(VAL_PAIRS, torch.Generator().manual_seed(1234))
    loop, meta = train_loop.head_loop(args), train_loop.head_metadata(args, "planners.progress", spacing=spacing)
    torch.manual_seed(args.seed)

    def loss_fn(model: ProgressHead, g: torch.Generator) -> torch.Tensor:
        obs, goal, labels = train.draw(loop.batch_size, g)
        logits = model(obs.to(dist.device), goal.to(dist.device))
        return progress_loss(logits, labels.to(dist.device), config.horizon)

    def val_fn(ema: ProgressHead) -> float:
        val_metrics.update(evaluate(ema, val_batch, mean))
        return val_metrics["val_mae"]

    def export(ema: ProgressHead, info: dict) -> None:
        save_checkpoint_files(args.out, ema, KIND, {**meta, **info, **val_metrics})

    return functools.partial(fit, ProgressHead(config), KIND, loss_fn, loop, dist, last, export,
                             val_fn if val_batch is not None else None, "progress head")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return head_cli("planners.progress", build_parser(), prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
