"""Training samples from RECON trajectory folders: context frames, future frames,
relative poses (the world model's action condition and the GT waypoints) and a goal.

Poses and actions follow :mod:`nav_come.core.data.actions`: robot frame of the current
frame t, x forward, y left, spacing units, wrapped yaw in radians.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from nav_come.core.data.actions import one_step_actions, relative_poses, revisit_mask
from nav_come.core.data.config import dataset_config
from nav_come.core.data.recon import DataFormatError, Trajectory, load_frames, read_split, read_trajectory, split_path


class TrajectoryDataset(Dataset):
    """All windows (trajectory, t) with ``t >= context_size - 1`` (and ``>= min_start``)
    and ``t + max(pred_len, max goal offset) <= T - 1``.

    Args:
        data_dir: folder holding one folder per trajectory.
        split: split name; its names come from :func:`nav_come.core.data.split_path`.
        split_dir, dataset: the field's split layout ``<split_dir>/<dataset>/<split>``;
            ``dataset`` also picks the waypoint spacing.
        context_size: C, frames t-C+1..t.
        pred_len: K, future frames t+1..t+K.
        goal_offset: inclusive (lo, hi) range of the goal frame offset, or None for no goal.
        image_size: square side frames are resized to (center-crop, INTER_AREA); None keeps them.
        spacing: metres per step; default ``dataset_config(data_dir, dataset)``.
        names: explicit trajectory names; overrides the split file.
        cache: decode each trajectory's frames once and keep them in RAM as uint8.
        min_start: smallest t (e.g. to guarantee a longer history for memory experts).
        seed: the goal offset of item i is drawn from ``numpy.random.default_rng((seed, i))``.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str = "train",
        *,
        split_dir: str | os.PathLike | None = None,
        dataset: str | None = None,
        context_size: int = 4,
        pred_len: int = 8,
        goal_offset: tuple[int, int] | None = (8, 8),
        image_size: int | None = 64,
        spacing: float | None = None,
        names: list[str] | None = None,
        cache: bool = True,
        min_start: int | None = None,
        seed: int = 0,
    ) -> None:
        if context_size < 1 or pred_len < 1:
            raise ValueError(f"context_size and pred_len must be >= 1, got {context_size} and {pred_len}")
        if goal_offset is not None:
            goal_offset = (int(goal_offset[0]), int(goal_offset[1]))
            if not 1 <= goal_offset[0] <= goal_offset[1]:
                raise ValueError(f"goal_offset must be an inclusive range 1 <= lo <= hi, got {goal_offset}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.data_dir = Path(data_dir)
        self.context_size, self.pred_len, self.goal_offset = context_size, pred_len, goal_offset
        self.image_size, self.cache, self.seed = image_size, cache, seed
        self.spacing = float(spacing) if spacing is not None else self._default_spacing(dataset)
        if names is None:
            source = split_path(self.data_dir, split, split_dir, dataset)
            names = read_split(source)
        else:
            source = "the names argument"
        self.trajectories = [self._read_poses(name, source) for name in names]
        self._index = self._build_index(min_start)  # (N, 2) int64: (traj, t)
        self._frames: dict[int, np.ndarray] = {}
        self._revisits: dict[tuple, list[np.ndarray]] = {}

    def _default_spacing(self, dataset: str | None) -> float:
        try:
            return dataset_config(self.data_dir, dataset).metric_waypoint_spacing
        except ValueError as e:
            raise ValueError(str(e).replace("pass --spacing", "pass spacing=")) from e

    def _read_poses(self, name: str, source) -> Trajectory:
        folder = self.data_dir / name
        if not folder.is_dir():
            raise DataFormatError(f"{source} lists trajectory {name!r} but folder {folder} does not exist")
        return read_trajectory(folder, load_images=False)

    def _build_index(self, min_start: int | None) -> np.ndarray:
        lo = max(self.context_size - 1, min_start or 0)
        ahead = max(self.pred_len, self.goal_offset[1] if self.goal_offset else 0)
        index = [(i, t) for i, tr in enumerate(self.trajectories) for t in range(lo, len(tr) - ahead)]
        if not index:
            longest = max((len(tr) for tr in self.trajectories), default=0)
            raise ValueError(
                f"no sample fits in {len(self.trajectories)} trajectories of {self.data_dir} (longest has "
                f"{longest} frames): each needs {lo + ahead + 1} frames (start t >= {lo}, then {ahead} ahead); "
                "use shorter context_size/pred_len/goal_offset or longer trajectories"
            )
        return np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._index)

    def preload(self) -> None:
        """Decode every trajectory's frames now (e.g. before DataLoader workers fork)."""
        for i in range(len(self.trajectories)):
            self._frames_of(i, None)

    def _frames_of(self, traj: int, idx: list[int] | None) -> np.ndarray:
        """Frames ``idx`` (all if None) of trajectory ``traj``: (n, H, W, 3) uint8."""
        tr = self.trajectories[traj]
        if not self.cache:
            return load_frames(tr.path, range(len(tr)) if idx is None else idx, self.image_size)
        if traj not in self._frames:
            self._frames[traj] = load_frames(tr.path, range(len(tr)), self.image_size)
        return self._frames[traj] if idx is None else self._frames[traj][idx]

    def goal_offset_of(self, i: int) -> int | None:
        """Goal offset of item i: uniform in the inclusive range, from ``default_rng((seed, i))``."""
        if self.goal_offset is None:
            return None
        lo, hi = self.goal_offset
        return lo if lo == hi else int(np.random.default_rng((self.seed, int(i))).integers(lo, hi + 1))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        traj, t = (int(v) for v in self._index[i])
        tr, C, K = self.trajectories[traj], self.context_size, self.pred_len
        g = self.goal_offset_of(i)
        idx = list(range(t - C + 1, t + K + 1)) + ([t + g] if g is not None else [])
        images = torch.from_numpy(self._frames_of(traj, idx)).permute(0, 3, 1, 2).float().div_(255)  # (n, 3, H, W)
        rel = relative_poses(tr.position, tr.yaw, t, np.arange(-C + 1, K + 1), self.spacing)  # (C+K, 3)
        steps = one_step_actions(tr.position[t : t + K + 1], tr.yaw[t : t + K + 1], self.spacing)  # (K, 3)
        item = {
            "context": images[:C],  # (C, 3, H, W)
            "future": images[C : C + K],  # (K, 3, H, W)
            "rel_poses": torch.from_numpy(rel[C:]).float(),  # (K, 3)
            "step_actions": torch.from_numpy(steps).float(),  # (K, 3)
            "context_poses": torch.from_numpy(rel[:C]).float(),  # (C, 3); last row is 0
            "traj_index": torch.tensor(traj, dtype=torch.int64),
            "t": torch.tensor(t, dtype=torch.int64),
        }
        if g is not None:
            item["goal"] = images[C + K]  # (3, H, W)
            item["goal_offset"] = torch.tensor(g, dtype=torch.int64)
            item["goal_pose"] = torch.from_numpy(relative_poses(tr.position, tr.yaw, t, [g], self.spacing)[0]).float()
        return item

    def revisit_items(
        self,
        any_future: bool = False,
        min_gap: int = 16,
        max_dist: float = 0.5,
        max_yaw: float = math.radians(30),
    ) -> np.ndarray:
        """bool (N,): whether item i's target frame t+1 (or, with ``any_future``, any of
        t+1..t+K) is a revisit per :func:`nav_come.core.data.revisit_mask` (metres, radians)."""
        key = (min_gap, max_dist, max_yaw)
        if key not in self._revisits:
            self._revisits[key] = [revisit_mask(tr.position, tr.yaw, *key) for tr in self.trajectories]
        masks = self._revisits[key]
        horizon = self.pred_len if any_future else 1
        out = np.zeros(len(self), dtype=bool)
        for k in range(1, horizon + 1):
            out |= np.fromiter((masks[tr][t + k] for tr, t in self._index), dtype=bool, count=len(self))
        return out

    def sample_weights(self, revisit_weight: float = 1.0, **revisit_kwargs) -> torch.Tensor:
        """(N,) float64 weights for ``WeightedRandomSampler``: ``revisit_weight`` for items
        whose target is a revisit (see :meth:`revisit_items` for the keyword args), 1 otherwise."""
        if not revisit_weight >= 0:
            raise ValueError(f"revisit_weight must be >= 0, got {revisit_weight}")
        revisit = torch.from_numpy(self.revisit_items(**revisit_kwargs))
        return torch.where(revisit, float(revisit_weight), 1.0).double()

    def revisit_fraction(self, **revisit_kwargs) -> float:
        """Share of items whose target is a revisit (see :meth:`revisit_items`)."""
        return float(self.revisit_items(**revisit_kwargs).mean())
