"""What memory experts read: the episode's frames and poses, the prediction asked for, and
retrieval of past frames by pose.

- :class:`FrameStore`: latents (N, c, h, w) and world poses (N, 3) of one or more episodes
  (``starts`` marks where each begins). Training reads a whole split through it (the latent
  cache), inference one episode.
- :class:`EpisodeMemory`: one episode as it unfolds; frames ``0..now`` are real.
- :class:`Query`: a batch of predictions in that episode (context latents, action, shift, the
  world pose of the newest context frame, and ``lag``, how many of the newest context frames
  are the model's own predictions during a rollout).
- :class:`MemoryBank`: (pose, frame index) of an episode in a uniform grid hash over xy, so
  the top-K frames nearest a target pose are found among the frames of a few cells only.

Poses are world ``(x, y, yaw)`` in metres and radians (:mod:`nav_come.core.geometry`). The
retrieval distance is ``metres + yaw_weight · |Δyaw|`` (radians); frames facing more than
``max_yaw`` away from the target share little of the view and are not retrieved (a cheap
view-overlap check). The latents themselves stay in the store; the bank maps a pose query
to frame indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from nav_come.core.geometry import se2_compose, wrap_angle


@dataclass
class RetrievalConfig:
    """k: frames retrieved per query; yaw_weight: metres per radian of heading difference;
    radius: largest retrieval distance (metres-equivalent) of a returned frame;
    max_yaw: largest heading difference (radians) of a returned frame (view overlap)."""

    k: int = 2
    yaw_weight: float = 0.5
    radius: float = 2.0
    max_yaw: float = math.pi / 2

    def __post_init__(self) -> None:
        if self.k < 1 or not self.yaw_weight >= 0 or not self.radius > 0 or not 0 < self.max_yaw <= math.pi:
            raise ValueError(
                f"RetrievalConfig needs k >= 1, yaw_weight >= 0, radius > 0, 0 < max_yaw <= pi; got "
                f"{self.k}, {self.yaw_weight}, {self.radius}, {self.max_yaw}"
            )


def pose_distance(a: np.ndarray, b: np.ndarray, yaw_weight: float) -> np.ndarray:
    """Retrieval distance between world poses a, b (..., 3): metres + yaw_weight · |Δyaw|."""
    return np.hypot(a[..., 0] - b[..., 0], a[..., 1] - b[..., 1]) + yaw_weight * np.abs(
        wrap_angle(a[..., 2] - b[..., 2])
    )


class MemoryBank:
    """(pose, frame index) pairs in a uniform xy grid of ``cell`` metres; see the module docstring.

    A query visits the cells within ``radius`` of the target, so its cost grows with the
    frames near the target, not with the episode. Adding a frame is O(1).
    """

    def __init__(self, cell: float = 2.0):
        if not cell > 0:
            raise ValueError(f"cell must be > 0 metres, got {cell}")
        self.cell = float(cell)
        self.cells: dict[tuple[int, int], list[int]] = {}
        self._poses: list[np.ndarray] = []
        self._index: list[int] = []

    def __len__(self) -> int:
        return len(self._index)

    def add(self, poses: np.ndarray, indices: np.ndarray) -> None:
        """Store frames: world poses (n, 3) with their frame indices (n,)."""
        poses, indices = np.asarray(poses, np.float64).reshape(-1, 3), np.asarray(indices, np.int64).reshape(-1)
        if len(poses) != len(indices):
            raise ValueError(f"got {len(poses)} poses for {len(indices)} indices")
        keys = np.floor(poses[:, :2] / self.cell).astype(np.int64)  # (n, 2)
        for pose, index, (i, j) in zip(poses, indices, keys, strict=True):
            self.cells.setdefault((int(i), int(j)), []).append(len(self._index))
            self._poses.append(pose)
            self._index.append(int(index))

    def query(
        self, targets: np.ndarray, config: RetrievalConfig, max_index: np.ndarray | int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``config.k`` stored frames nearest each target pose, among those with
        index <= max_index (excludes the context), distance <= radius and |Δyaw| <= max_yaw.

        targets: (B, 3) world poses; max_index: int or (B,). Returns frame indices (B, k)
        int64, nearest first (the most recent on a tie), -1 where fewer were found, and their distances (B, k) (inf).
        """
        targets = np.asarray(targets, np.float64).reshape(-1, 3)
        B, k = len(targets), config.k
        max_index = np.broadcast_to(np.asarray(max_index, np.int64), (B,))
        out_idx, out_dist = np.full((B, k), -1, np.int64), np.full((B, k), np.inf)
        if not self._index:
            return out_idx, out_dist
        poses, index = np.asarray(self._poses), np.asarray(self._index)  # (n, 3), (n,)
        reach = int(math.ceil(config.radius / self.cell))
        for b, target in enumerate(targets):
            ci, cj = (int(v) for v in np.floor(target[:2] / self.cell))
            rows = [r for di in range(-reach, reach + 1) for dj in range(-reach, reach + 1)
                    for r in self.cells.get((ci + di, cj + dj), ())]  # fmt: skip
            if not rows:
                continue
            rows = np.asarray(rows)
            d = pose_distance(poses[rows], target, config.yaw_weight)  # (m,)
            dyaw = np.abs(wrap_angle(poses[rows, 2] - target[2]))
            ok = (index[rows] <= max_index[b]) & (d <= config.radius) & (dyaw <= config.max_yaw)
            rows, d = rows[ok], d[ok]
            order = np.lexsort((-index[rows], d))[:k]  # nearest first; on a tie, the most recent
            out_idx[b, : len(order)], out_dist[b, : len(order)] = index[rows[order]], d[order]
        return out_idx, out_dist


class FrameStore:
    """Latents (N, c, h, w) and world poses (N, 3) of episodes that begin at ``starts`` (E+1,).

    latents may be float16 (the latent cache); gathers return float32. spacing: metres per
    step of the dataset (actions are in spacing units).
    """

    def __init__(self, latents: torch.Tensor, poses: torch.Tensor, starts: torch.Tensor, spacing: float):
        if latents.ndim != 4 or poses.shape != (len(latents), 3):
            raise ValueError(
                f"need latents (N, c, h, w) and poses (N, 3), got {tuple(latents.shape)}, {tuple(poses.shape)}"
            )
        if not spacing > 0:
            raise ValueError(f"spacing must be > 0 metres per step, got {spacing}")
        self.latents, self.poses = latents, poses.to(torch.float64)
        self.starts = torch.as_tensor(starts, dtype=torch.int64)
        self.spacing = float(spacing)
        self._banks: dict[tuple[int, float], MemoryBank] = {}

    def episode_of(self, index: torch.Tensor) -> torch.Tensor:
        """Episode number of global frame indices (B,)."""
        return torch.searchsorted(self.starts, index, right=True) - 1

    def start_of(self, index: torch.Tensor) -> torch.Tensor:
        """First global frame of the episode of each frame index (B,)."""
        return self.starts[self.episode_of(index)]

    def bank(self, episode: int, cell: float) -> MemoryBank:
        """The retrieval bank of one episode (built on first use, then kept up to date)."""
        bank = self._banks.setdefault((episode, cell), MemoryBank(cell))
        lo, hi = int(self.starts[episode]) + len(bank), int(self.starts[episode + 1])
        if hi > lo:
            bank.add(self.poses[lo:hi].numpy(), np.arange(lo, hi))
        return bank

    def retrieve(
        self, targets: torch.Tensor, max_index: torch.Tensor, episode: torch.Tensor, config: RetrievalConfig
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-K frames of each query's episode nearest its target pose.

        targets: (B, 3) world poses; max_index: (B,) global index of the newest frame allowed;
        episode: (B,) episode of each query. Returns global indices (B, K) (-1: none) and
        distances (B, K) (inf: none).
        """
        max_index = max_index.to(torch.int64).expand(len(targets))
        episode = episode.to(torch.int64).expand(len(targets))
        idx, dist = np.full((len(targets), config.k), -1, np.int64), np.full((len(targets), config.k), np.inf)
        for e in torch.unique(episode).tolist():
            rows = (episode == e).nonzero()[:, 0].numpy()
            bank = self.bank(e, config.radius)
            idx[rows], dist[rows] = bank.query(targets[rows].double().numpy(), config, max_index[rows].numpy())
        return torch.from_numpy(idx), torch.from_numpy(dist).float()

    def gather(self, index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Latents of global indices (...,) as float32 (..., c, h, w), zeros where not ``valid``."""
        z = self.latents[index.clamp(min=0)].float()
        return z * valid.reshape(*valid.shape, 1, 1, 1).to(z.device, z.dtype)  # latents may sit on the GPU


class EpisodeMemory(FrameStore):
    """One episode: latents (T, c, h, w) and world poses (T, 3) of frames 0..T-1; ``now`` is the
    newest real frame (default T-1; later frames are ignored)."""

    def __init__(self, latents: torch.Tensor, poses: torch.Tensor | np.ndarray, spacing: float, now: int | None = None):
        poses = torch.as_tensor(np.asarray(poses, np.float64)) if not isinstance(poses, torch.Tensor) else poses
        super().__init__(latents, poses, torch.tensor([0, len(latents)]), spacing)
        self.now = len(latents) - 1 if now is None else int(now)
        if not 0 <= self.now < len(latents):
            raise ValueError(f"now must index a stored frame (0..{len(latents) - 1}), got {now}")

    def __len__(self) -> int:
        return len(self.latents)

    def append(self, latents: torch.Tensor, poses: torch.Tensor | np.ndarray) -> None:
        """Add new real frames (n, c, h, w) with world poses (n, 3); ``now`` moves to the newest."""
        poses = torch.as_tensor(np.asarray(poses, np.float64)).reshape(-1, 3)
        self.latents = torch.cat([self.latents, latents.to(self.latents)])
        self.poses = torch.cat([self.poses, poses])
        self.starts = torch.tensor([0, len(self.latents)])
        self.now = len(self.latents) - 1

    def context(self, frames: int) -> torch.Tensor:
        """Latents (1, frames, c, h, w) of the newest real frames, oldest first."""
        if self.now + 1 < frames:
            raise ValueError(f"the episode has {self.now + 1} frames; a context needs {frames}")
        return self.latents[self.now - frames + 1 : self.now + 1][None].float()


@dataclass
class Query:
    """A batch of B predictions in an episode.

    context: (B or 1, C, c, h, w) latents, oldest first; action: (B, 3) target pose in the
    frame of the newest context frame (dx, dy in spacing units, dyaw in radians); shift: frames
    from the newest context frame to the target (int or (B,)); pose: (B or 1, 3) world pose of
    the newest context frame; lag: how many of the newest context frames are predictions (0 when
    all are real; step k of a rollout has lag k).
    """

    context: torch.Tensor
    action: torch.Tensor
    shift: torch.Tensor | int
    pose: torch.Tensor
    lag: int = 0

    def __post_init__(self) -> None:
        B = self.action.shape[0]
        self.shift = torch.as_tensor(self.shift, dtype=torch.long, device=self.action.device).expand(B)
        self.pose = torch.as_tensor(self.pose, dtype=torch.float64).reshape(-1, 3).cpu()  # geometry stays on the CPU
        if self.context.ndim != 5 or self.context.shape[0] not in (1, B) or self.pose.shape[0] not in (1, B):
            raise ValueError(
                f"Query needs context (B or 1, C, c, h, w) and pose (B or 1, 3) for B={B} actions; got "
                f"{tuple(self.context.shape)} and {tuple(self.pose.shape)}"
            )
        if self.lag < 0:
            raise ValueError(f"lag must be >= 0, got {self.lag}")

    @property
    def batch(self) -> int:
        return self.action.shape[0]

    def target_pose(self, spacing: float) -> torch.Tensor:
        """World poses (B, 3) of the targets: the newest context pose composed with the action."""
        metres = torch.cat([self.action[:, :2].double() * spacing, self.action[:, 2:].double()], 1).cpu()  # (B, 3)
        return se2_compose(self.pose, metres)

    def memory_end(self, now: int) -> int:
        """Newest real frame outside the context: frames up to it are memory, later ones context."""
        return min(now, now + self.lag - self.context.shape[1])
