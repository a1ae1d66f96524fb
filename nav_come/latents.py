"""Cached autoencoder latents of a split and the training windows drawn from them.

The autoencoder is frozen before the denoiser trains, so every frame of every
trajectory is encoded exactly once and kept in one safetensors file::

    <cache_dir>/latents-<split>-<key>.safetensors
        latents (N, c, h, w) float16   all frames of the split, trajectory after trajectory
        poses   (N, 3)       float64   world (x, y, yaw) of each frame (metres, radians)
        starts  (n+1,)       int64     frame offset of each trajectory; names in the metadata
        commanded (N, 3)     float64   optional: the command at each frame as one-step motion
                                       (metres, radians; recorded by this project's simulator)

``key`` hashes the autoencoder checkpoint, the data folder and the split's names, so a
new autoencoder or split never reads a stale cache. Writes are atomic.

:class:`LatentWindowDataset` turns it into denoiser training items: the context latents
of frames t-C+1..t, the target latent of frame t+s with s uniform in 1..max_shift, and
the action: the pose of t+s in the robot frame of t, xy in spacing units (docs/design.md §2).
Where the data records commands (:mod:`nav_come.core.data.recon`), the action is the motion
that was *commanded* from t to t+s, so a window in which the robot pushed into a wall
teaches "this action, against a wall, leaves the view as it is". Without contact the two
are the same.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save
from torch.utils.data import Dataset
from tqdm import tqdm

from nav_come.autoencoder import Autoencoder
from nav_come.core.data import poses, read_split, read_trajectory, revisit_mask, split_path
from nav_come.core.geometry import se2_compose, se2_relative, step_actions
from nav_come.core.io import atomic_write_bytes
from nav_come.world_model import encode_frames


@dataclass
class LatentSet:
    """All frame latents of one split. latents (N, c, h, w) float16; poses (N, 3) float64
    world (x, y, yaw); starts (n+1,) int64 trajectory offsets; names: trajectory names;
    commanded (N, 3) float64 one-step commanded motion per frame, or None (module docstring)."""

    latents: torch.Tensor
    poses: torch.Tensor
    starts: torch.Tensor
    names: list[str]
    commanded: torch.Tensor | None = None

    def trajectory(self, i: int) -> slice:
        return slice(int(self.starts[i]), int(self.starts[i + 1]))

    def to_bytes(self) -> bytes:
        tensors = {"latents": self.latents, "poses": self.poses, "starts": self.starts, "commanded": self.commanded}
        tensors = {k: v.contiguous() for k, v in tensors.items() if v is not None}
        return save(tensors, metadata={"names": json.dumps(self.names)})

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> LatentSet:
        with safe_open(str(path), framework="pt") as f:
            names = json.loads(f.metadata()["names"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return cls(tensors["latents"], tensors["poses"], tensors["starts"], names, tensors.get("commanded"))


def cache_key(ae_key: str, data_dir: str | os.PathLike, names: list[str]) -> str:
    """Hash of the autoencoder checkpoint hash, the resolved data folder and the split's names."""
    h = hashlib.sha256()
    for part in (ae_key, str(Path(data_dir).resolve()), *names):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def encode_split(
    ae: Autoencoder,
    ae_key: str,
    data_dir: str | os.PathLike,
    split: str,
    cache_dir: str | os.PathLike,
    *,
    split_dir: str | os.PathLike | None = None,
    dataset: str | None = None,
    progress: bool = True,
) -> LatentSet:
    """Latents of every frame of ``split``, read from the cache or encoded once and cached.

    ae_key: identifies the autoencoder weights (``checkpoint.checkpoint_hash`` of its folder).
    Frames are resized to ``ae.config.image_size`` (center crop + INTER_AREA) and encoded
    in float32; latents are stored as float16.
    """
    names = read_split(split_path(data_dir, split, split_dir, dataset))
    path = Path(cache_dir) / f"latents-{split}-{cache_key(ae_key, data_dir, names)}.safetensors"
    if path.is_file():
        return LatentSet.from_file(path)
    latents, world, starts, commanded = [], [], [0], []
    for name in tqdm(names, desc=f"encoding {split} frames", disable=not progress, leave=False):
        tr = read_trajectory(Path(data_dir) / name, image_size=ae.config.image_size)
        frames = torch.from_numpy(tr.frames).permute(0, 3, 1, 2)  # (T, 3, H, W) uint8
        latents.append(encode_frames(ae, frames, bf16=False).half().cpu())  # (T, c, h, w)
        world.append(torch.from_numpy(poses(tr.position, tr.yaw)))  # (T, 3)
        starts.append(starts[-1] + len(tr))
        commanded.append(None if tr.commanded is None else torch.from_numpy(tr.commanded))
    if any(c is not None for c in commanded):  # a trajectory without commands moved as commanded
        commanded = torch.cat([taken_steps(w) if c is None else c for c, w in zip(commanded, world, strict=True)])
    else:
        commanded = None
    result = LatentSet(torch.cat(latents), torch.cat(world), torch.tensor(starts, dtype=torch.int64), names,
                       commanded)
    atomic_write_bytes(path, result.to_bytes())
    return result


def taken_steps(world: torch.Tensor) -> torch.Tensor:
    """One-step motions actually taken along world poses (T, 3): (T, 3), the last row zero."""
    return torch.cat([step_actions(world), torch.zeros(1, 3, dtype=world.dtype)])


def blocked_steps(data: LatentSet, tol: float = 1e-6) -> torch.Tensor:
    """(N,) bool: the step from each frame fell short of its command (needs ``data.commanded``)."""
    taken = torch.cat([taken_steps(data.poses[data.trajectory(i)]) for i in range(len(data.names))])
    return (data.commanded - taken).abs().amax(1) > tol


class LatentWindowDataset(Dataset):
    """Denoiser training items from a :class:`LatentSet`.

    An item is a window whose newest context frame t has t >= context - 1 and t + 1 in the
    trajectory: ``context`` (C, c, h, w) frames t-C+1..t, ``target`` (c, h, w) frame t+s,
    ``action`` (3,) pose of t+s in the robot frame of t (xy / spacing, wrapped yaw) and
    ``shift`` s, uniform in 1..min(max_shift, T-1-t).

    revisit_weight: sampling weight of windows whose one-step target t+1 is a revisit
    (within 0.5 m and 30° of a frame more than 16 frames older,
    :func:`nav_come.core.data.revisit_mask`); 1 samples uniformly.
    contact_weight: sampling weight of windows in which a step within ``max_shift`` of t was
    stopped short of its command (the robot pushed into something; needs recorded commands),
    multiplying the revisit weight; 1 leaves them as they come.
    seed: ``__getitem__(i)`` draws its shift from ``numpy.random.default_rng((seed, i))``.
    """

    def __init__(
        self,
        data: LatentSet,
        context: int,
        max_shift: int,
        spacing: float,
        revisit_weight: float = 1.0,
        seed: int = 0,
        contact_weight: float = 1.0,
    ):
        if context < 1 or max_shift < 1 or not spacing > 0 or not revisit_weight >= 0 or not contact_weight > 0:
            raise ValueError(
                f"need context, max_shift >= 1, spacing > 0, revisit_weight >= 0, contact_weight > 0; got "
                f"{context}, {max_shift}, {spacing}, {revisit_weight}, {contact_weight}"
            )
        self.data, self.context, self.spacing, self.seed = data, context, float(spacing), seed
        index, ahead, revisit = [], [], []
        for i in range(len(data.names)):
            rows = data.trajectory(i)
            T = rows.stop - rows.start
            t = np.arange(context - 1, T - 1)  # (n,) windows with at least one future frame
            index.append(rows.start + t)
            ahead.append(np.minimum(max_shift, T - 1 - t))
            if revisit_weight != 1.0:
                pose = data.poses[rows].numpy()
                revisit.append(revisit_mask(pose[:, :2], pose[:, 2])[t + 1])
        if not sum(len(x) for x in index):
            raise ValueError(f"no training window: every trajectory needs at least {context + 1} frames")
        self.index = torch.from_numpy(np.concatenate(index))  # (N,) global frame of t
        self.ahead = torch.from_numpy(np.concatenate(ahead))  # (N,) largest shift of each window
        self.weights = None
        if revisit:
            mask = torch.from_numpy(np.concatenate(revisit))
            self.weights = torch.where(mask, float(revisit_weight), 1.0).double()  # (N,)
        if contact_weight != 1.0 and data.commanded is not None:
            blocked = blocked_steps(data)  # (N_frames,)
            near = torch.zeros(len(self.index), dtype=torch.bool)
            for j in range(max_shift):  # any step t+j within the window's reach
                k = torch.minimum(self.index + j, self.index + self.ahead - 1)
                near |= blocked[k]
            w = torch.where(near, float(contact_weight), 1.0).double()
            self.weights = w if self.weights is None else self.weights * w

    def __len__(self) -> int:
        return len(self.index)

    def gather(self, items: torch.Tensor, shift: torch.Tensor) -> dict[str, torch.Tensor]:
        """Batch of windows ``items`` (B,) with shifts (B,): context, target, action, shift."""
        g = self.index[items]  # (B,) newest context frame
        ctx = g[:, None] + torch.arange(1 - self.context, 1)  # (B, C), oldest first
        if self.data.commanded is None:
            rel = se2_relative(self.data.poses[g], self.data.poses[g + shift])  # (B, 3) metres, radians
        else:  # chain the commanded steps t .. t+s-1
            rel = torch.zeros(len(g), 3, dtype=self.data.commanded.dtype)
            for j in range(int(shift.max())):
                step = self.data.commanded[torch.minimum(g + j, g + shift - 1)]  # (B, 3)
                rel = torch.where((j < shift)[:, None], se2_compose(rel, step), rel)
        action = torch.cat([rel[:, :2] / self.spacing, rel[:, 2:]], 1)  # (B, 3) spacing units
        return {
            "context": self.data.latents[ctx].float(),  # (B, C, c, h, w)
            "target": self.data.latents[g + shift].float(),  # (B, c, h, w)
            "action": action.float(),
            "shift": shift.long(),  # (B,)
        }

    def sample_items(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows (B,) (with replacement; revisit-weighted if configured) and shifts (B,), uniform."""
        if self.weights is None:
            items = torch.randint(len(self), (batch_size,), generator=generator)
        else:
            items = torch.multinomial(self.weights, batch_size, replacement=True, generator=generator)
        u = torch.rand(batch_size, generator=generator)
        return items, 1 + (u * self.ahead[items]).long()

    def sample_batch(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """A random batch of :meth:`sample_items`, gathered."""
        return self.gather(*self.sample_items(batch_size, generator))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = int(np.random.default_rng((self.seed, int(i))).integers(1, int(self.ahead[i]) + 1))
        batch = self.gather(torch.tensor([i]), torch.tensor([s]))
        return {k: v[0] for k, v in batch.items()}
