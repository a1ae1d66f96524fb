"""Experts on :class:`MemoryDiT` (STM, and the Full and SSM baselines), and the STM expert.

All three condition the base DiT on memory tokens of past frames through zero-initialised
cross-attention (see :mod:`nav_come.experts.memory_dit`), plus a zero-initialised adaLN
vector of the query's poses. Their memory is defined relative to the **anchor**, the newest
real frame: during a rollout the context fills with predictions (``Query.lag`` of them), the
anchor stays, and the memory is the real frames older than the context (``Query.memory_end``).
So memory tokens are the same for every candidate of a plan and are encoded once per
prediction; only the query vector differs per sample:

    query features (12) = pose features of [newest context frame rel. anchor,
                                            target rel. anchor, anchor rel. episode start]
    frame features (5)  = pose features of the frame rel. anchor (SSM: rel. episode start), age

Training draws the lag uniformly in ``0..max_lag`` so the network sees what a rollout gives it.

**STM** (short-term memory): the ``window`` frames just older than the context, every
``stride``-th (default 28 frames at stride 2: 14 frames, 224 tokens), so context + window is
the last 32 frames. Its cost per step is constant in the episode length. **Sliding** in the
memory table is this network sampled alone (a sliding-window DiT, as in the paper).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from nav_come.compose import Branch
from nav_come.diffusion import diffusion_loss
from nav_come.dit import DiT
from nav_come.experts.common import (
    AGE_SCALE,
    QUERY_FEATURES,
    Condition,
    Expert,
    check_contrast,
    condition_dropout,
    dit_config_of,
    pose_features,
    query_kwargs,
    relative_pose,
)
from nav_come.experts.memory_dit import MemoryDiT, MemoryDiTConfig
from nav_come.memory_bank import EpisodeMemory, FrameStore, Query


@dataclass
class MemoryExpertConfig:
    """Settings of an expert on MemoryDiT, stored in its checkpoint.

    net: the network's config. window: frames older than the context that it sees (None: the
    whole history). stride: every stride-th of them. train_history: with window None, the
    newest frames of the history kept in training (inference keeps all). max_lag: largest
    rollout lag drawn in training. memory_dropout: training probability of removing the memory.
    contrast: the partner branch, "null" (the unconditional branch) or "memory" (same context
    and action, memory removed).
    """

    net: MemoryDiTConfig | dict
    window: int | None = 28
    stride: int = 2
    train_history: int = 256
    max_lag: int = 7
    memory_dropout: float = 0.15
    contrast: str = "null"

    def __post_init__(self) -> None:
        self.net = dit_config_of(self.net, MemoryDiTConfig)
        check_contrast(self.contrast)
        if (self.window is not None and self.window < 1) or self.stride < 1 or self.train_history < 1:
            raise ValueError(
                f"need window >= 1 or None, stride >= 1, train_history >= 1; got "
                f"{self.window}, {self.stride}, {self.train_history}"
            )
        if self.max_lag < 0 or not 0 <= self.memory_dropout < 1:
            raise ValueError(
                f"need max_lag >= 0 and memory_dropout in [0, 1); got {self.max_lag}, {self.memory_dropout}"
            )
        if self.net.extra_cond_dim != QUERY_FEATURES:
            raise ValueError(f"the network needs extra_cond_dim {QUERY_FEATURES}, got {self.net.extra_cond_dim}")


def _rows(x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.int64).reshape(-1)


def query_features(
    store: FrameStore, anchor: torch.Tensor, start: torch.Tensor, newest_pose: torch.Tensor, target_pose: torch.Tensor
) -> torch.Tensor:
    """(B, 12) query features; anchor, start: (B or 1,) frame indices; poses (B or 1, 3) world."""
    a, s = store.poses[anchor], store.poses[start]  # (B or 1, 3)
    rel = [relative_pose(a, newest_pose, store.spacing), relative_pose(a, target_pose, store.spacing)]
    rel.append(relative_pose(s, a, store.spacing))
    B = max(len(r) for r in rel)
    return torch.cat([pose_features(r).expand(B, -1) for r in rel], 1)


class MemoryExpert(Expert):
    """An expert on MemoryDiT; subclasses set ``kind`` and ``DEFAULTS`` (network and config settings)."""

    config_cls: ClassVar[type] = MemoryExpertConfig
    DEFAULTS: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: MemoryExpertConfig, network: MemoryDiT | None = None):
        super().__init__()
        self.config = config
        self.network = network if network is not None else MemoryDiT(config.net)

    @classmethod
    def from_base(cls, base: DiT, **settings) -> MemoryExpert:
        """The expert started exactly at ``base`` (new pathways zero); settings override DEFAULTS."""
        settings = {**cls.DEFAULTS, **settings}
        net_keys = ("memory", "memory_grid", "ssm_dim")
        network = MemoryDiT.from_base(
            base, extra_cond_dim=QUERY_FEATURES, **{k: settings.pop(k) for k in net_keys if k in settings}
        )
        return cls(MemoryExpertConfig(net=network.config, **settings), network)

    # ------------------------------------------------------------------ which frames are memory

    def select(self, start: torch.Tensor, end: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory frames of each sample, oldest first: global indices (B, L) and validity (B, L).

        start: (B,) first frame of the episode; end: (B,) newest frame that is memory.
        """
        cfg = self.config
        if cfg.window is not None:
            steps = torch.arange(math.ceil(cfg.window / cfg.stride) - 1, -1, -1) * cfg.stride  # (L,)
            idx = end[:, None] - steps
            return idx, (idx >= start[:, None])
        lo = torch.maximum(start, end - cfg.train_history + 1) if train else start
        L = int((end - lo + 1).clamp(min=0).max()) if len(end) else 0
        idx = lo[:, None] + torch.arange(L)  # (B, L)
        valid = idx <= end[:, None]
        return torch.where(valid, idx, -1), valid  # padding may run past the store: -1 gathers as frame 0, masked

    def frame_features(
        self, store: FrameStore, idx: torch.Tensor, valid: torch.Tensor, anchor: torch.Tensor, start: torch.Tensor
    ) -> torch.Tensor:
        """(B, L, 5) features of memory frames idx (B, L): pose rel. anchor and age (SSM: rel. start)."""
        ssm = self.config.net.memory == "ssm"
        ref = store.poses[start if ssm else anchor][:, None]  # (B, 1, 3)
        rel = relative_pose(ref, store.poses[idx.clamp(min=0)], store.spacing)  # (B, L, 3)
        age = torch.zeros_like(rel[..., 0]) if ssm else torch.log1p((anchor[:, None] - idx).clamp(min=0)) / AGE_SCALE
        return torch.cat([pose_features(rel), age[..., None]], -1) * valid[..., None]

    def memory_inputs(
        self, store: FrameStore, anchor: torch.Tensor, end: torch.Tensor, start: torch.Tensor, train: bool
    ) -> dict[str, torch.Tensor]:
        """Raw memory of B samples: frames (B, L, c, h, w), features (B, L, 5), valid (B, L)."""
        idx, valid = self.select(start, end, train)
        features = self.frame_features(store, idx, valid, anchor, start)
        return {"memory_frames": store.gather(idx, valid), "memory_features": features, "memory_valid": valid}

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def encode(self, memory: EpisodeMemory, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory tokens (1, 1+M, D) and mask of the episode's real frames up to ``end``."""
        raw = self.memory_inputs(memory, _rows(memory.now), _rows(end), _rows(0), train=False)
        device = next(self.network.parameters()).device
        raw = {k: v.to(device) for k, v in raw.items()}
        return self.network.encode_memory(raw["memory_frames"], raw["memory_features"], raw["memory_valid"])

    def condition(self, memory: EpisodeMemory, query: Query) -> Condition:
        device = query.action.device
        tokens, mask = self.encode(memory, query.memory_end(memory.now))
        target = query.target_pose(memory.spacing)
        extra = query_features(memory, _rows(memory.now), _rows(0), query.pose, target)  # (B, 12)
        kwargs = {**query_kwargs(query), "extra_cond": extra.to(device)}
        return Condition({**kwargs, "memory": tokens.to(device), "memory_mask": mask.to(device)})

    def branches(self, cond: Condition) -> tuple[Branch, Branch]:
        null = self.config.contrast == "null"
        return (
            Branch(self.network, {**cond.kwargs, "uncond": False, "drop_memory": False}),
            Branch(self.network, {**cond.kwargs, "uncond": null, "drop_memory": not null}),
        )

    # ------------------------------------------------------------------ training

    def training_inputs(
        self, store: FrameStore, newest: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        start = store.start_of(newest)  # (B,)
        lag = torch.randint(0, self.config.max_lag + 1, newest.shape, generator=generator)
        anchor = torch.maximum(newest - lag, start)
        end = torch.minimum(newest - self.context, anchor)
        raw = self.memory_inputs(store, anchor, end, start, train=True)
        raw["extra_cond"] = query_features(store, anchor, start, store.poses[newest], store.poses[target])
        return raw

    def training_loss(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None, dropout: bool = True
    ) -> torch.Tensor:
        """v-MSE with condition, action and memory dropout; memory tokens encoded inside (trained)."""
        net, B = self.network, batch["target"].shape[0]
        drops = condition_dropout(net.config, B, generator, batch["target"].device, self.config.memory_dropout, dropout)

        def denoiser(x_t: torch.Tensor, t: torch.Tensor, _: Any) -> torch.Tensor:
            memory, mask = net.encode_memory(batch["memory_frames"], batch["memory_features"], batch["memory_valid"])
            kw = {k: batch[k] for k in ("context", "action", "shift", "extra_cond")}
            return net(x_t, t, **kw, **drops, memory=memory, memory_mask=mask)

        return diffusion_loss(denoiser, batch["target"], None, generator, schedule=self.schedule)


class STMExpert(MemoryExpert):
    """Short-term memory: a 32-frame recent window (see the module docstring)."""

    kind = "stm"
    DEFAULTS = {"memory": "tokens", "memory_grid": 4, "window": 28, "stride": 2}
