"""What every expert shares: the expert contract, the base expert, pose features and dropout.

An expert is an ``nn.Module`` that is a denoiser ``expert(x_t, t, cond) -> v`` (its
conditional branch alone) and also provides

- ``condition(memory, query) -> Condition``: its network's keyword arguments for a
  :class:`~nav_come.memory_bank.Query` in an :class:`~nav_come.memory_bank.EpisodeMemory`
  (plus ``info`` that relevance-dependent alphas may read, e.g. retrieval distances);
- ``branches(cond) -> (conditional, partner)``: the two :class:`~nav_come.compose.Branch`
  of its contrastive pair, which :class:`~nav_come.compose.ComposedDenoiser` batches;
- ``prepare(memory)``: anything to do once per new real frame (the LTM memorises);
- for trained experts, ``training_inputs(store, newest, target, generator)`` (its memory
  inputs for a batch of training windows of a :class:`~nav_come.memory_bank.FrameStore`)
  and ``training_loss(batch, generator)``.

Poses given to networks are relative poses in spacing units, embedded as
``(x / POSE_SCALE, y / POSE_SCALE, sin yaw, cos yaw)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from nav_come.compose import Branch, run_branches
from nav_come.core.geometry import se2_relative
from nav_come.diffusion import COSINE, CosineSchedule, rand
from nav_come.dit import DiT, DiTConfig
from nav_come.memory_bank import EpisodeMemory, FrameStore, Query

POSE_SCALE = 8.0  # spacing units: relative xy is divided by it before embedding (a window spans ~30 steps)
AGE_SCALE = math.log(1024.0)  # log1p(frames ago) / AGE_SCALE is ~1 for a frame 1000 steps old
POSE_FEATURES = 4
FRAME_FEATURES = POSE_FEATURES + 1  # pose + age of a memory frame
QUERY_FEATURES = 3 * POSE_FEATURES  # newest context and target relative to the anchor, anchor relative to the start
MEMORY_PREFIXES = ("memory_", "extra_cond")  # parameter names of the pathways memory adds to the base
CONTRASTS = ("null", "memory")


def relative_pose(ref: torch.Tensor, pose: torch.Tensor, spacing: float) -> torch.Tensor:
    """Pose (..., 3) in the frame of ref (..., 3), both world; xy in spacing units. float32."""
    rel = se2_relative(ref.double(), pose.double())
    return torch.cat([rel[..., :2] / spacing, rel[..., 2:]], -1).float()


def pose_features(rel: torch.Tensor) -> torch.Tensor:
    """(..., 3) relative pose in spacing units -> (..., 4) network features."""
    return torch.stack([rel[..., 0] / POSE_SCALE, rel[..., 1] / POSE_SCALE, rel[..., 2].sin(), rel[..., 2].cos()], -1)


def dit_config_of(value: DiTConfig | dict, cls: type = DiTConfig) -> DiTConfig:
    """A nested network config, rebuilt from the dict a checkpoint stores."""
    return cls(**value) if isinstance(value, dict) else value


def check_contrast(contrast: str) -> None:
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")


@dataclass
class Condition:
    """An expert's condition: its network's keyword arguments, and ``info`` for alphas/baselines."""

    kwargs: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


def query_kwargs(query: Query) -> dict[str, Any]:
    """The base DiT's arguments for a query (the same tensor objects for every expert)."""
    return {"context": query.context, "action": query.action, "shift": query.shift}


def condition_dropout(
    config: DiTConfig,
    B: int,
    generator: torch.Generator | None,
    device: torch.device,
    memory_dropout: float,
    enabled: bool = True,
) -> dict[str, torch.Tensor]:
    """Training masks (B,): whole-condition dropout, action dropout and memory dropout (all False
    unless ``enabled``; the draws are made either way, so both use the generator alike)."""
    u = rand((3, B), generator, device)  # (3, B)
    if not enabled:
        u = torch.ones_like(u)
    return {
        "uncond": u[0] < config.context_dropout,
        "drop_action": u[1] < config.action_dropout,
        "drop_memory": u[2] < memory_dropout,
    }


def train_only_memory(network: DiT, base_channels: int) -> list[str]:
    """Freeze the base weights; only the pathways memory adds stay trainable.

    The new input channels of ``patch_embed`` (beyond ``base_channels``) train through a
    gradient mask. Returns the names of the trainable parameters.
    """
    trainable = []
    for name, p in network.named_parameters():
        if name.startswith(MEMORY_PREFIXES):
            trainable.append(name)
        elif name == "patch_embed.weight" and p.shape[1] > base_channels:
            p.register_hook(lambda g: torch.cat([torch.zeros_like(g[:, :base_channels]), g[:, base_channels:]], 1))
            trainable.append(name)
        else:
            p.requires_grad_(False)
    return trainable


class Expert(nn.Module):
    """Base class of the experts; see the module docstring."""

    kind: ClassVar[str] = ""
    network: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self.name = self.kind
        self.bf16 = None  # bf16 autocast when run alone, None: where native (the composition has its own flag)
        self.schedule: CosineSchedule = COSINE

    @property
    def context(self) -> int:
        return self.network.config.context

    def condition(self, memory: EpisodeMemory, query: Query) -> Condition:
        raise NotImplementedError

    def branches(self, cond: Condition) -> tuple[Branch, Branch]:
        raise NotImplementedError

    def prepare(self, memory: EpisodeMemory) -> Any:
        return None

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """The expert alone: v (B, ...) of its conditional branch."""
        return run_branches([self.branches(cond)[0]], x_t, t, self.bf16)[0]

    def training_inputs(
        self, store: FrameStore, newest: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        """Memory inputs of training windows: newest context frame and target frame (B,) global indices."""
        raise NotImplementedError(f"the {self.kind or type(self).__name__} expert is not trained offline")

    def training_loss(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None, dropout: bool = True
    ) -> torch.Tensor:
        raise NotImplementedError(f"the {self.kind or type(self).__name__} expert is not trained offline")


class BaseExpert(Expert):
    """The base world model's DiT as an expert: context + action; partner = the null condition."""

    kind = "base"

    def __init__(self, network: DiT):
        super().__init__()
        self.network = network

    def condition(self, memory: EpisodeMemory, query: Query) -> Condition:
        return Condition(query_kwargs(query))

    def branches(self, cond: Condition) -> tuple[Branch, Branch]:
        return (
            Branch(self.network, {**cond.kwargs, "uncond": False}),
            Branch(self.network, {**cond.kwargs, "uncond": True}),
        )
