"""The spatial expert (SLTM): the base DiT conditioned on past frames retrieved by pose.

For each prediction the target's world pose (newest context pose composed with the action)
queries the episode's :class:`~nav_come.memory_bank.MemoryBank`: the top-K frames older
than the context, nearest by ``metres + 0.5·|Δyaw|``, within ``radius`` and facing within
``max_yaw`` of the target (view overlap). The network is ``DiT.from_base(base,
extra_frames=K, extra_cond_dim=5K+4)`` (docs/design.md §5, measured to work):

- the retrieved latents enter as extra input channels whose patch-embedding weights start at
  zero (missing ones are zeros);
- through the zero-initialised adaLN projection: for each retrieved frame its pose relative
  to the target (pose features) and a found flag, then the target pose relative to the
  episode start (absolute pose).

Training drops the whole retrieval for 15% of the samples (``retrieval_dropout``), so the
"memory" partner (same context, no retrieval) is in distribution. At a revisit the
retrieved view is nearly the answer; :func:`copy_nearest` is the naive-recall baseline that
returns the nearest retrieved frame, and :func:`distance_alpha` gives an alpha that depends
on how near the best retrieved frame is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from nav_come.compose import Branch
from nav_come.diffusion import diffusion_loss
from nav_come.dit import DiT, DiTConfig
from nav_come.experts.common import (
    FRAME_FEATURES,
    POSE_FEATURES,
    Condition,
    Expert,
    check_contrast,
    condition_dropout,
    dit_config_of,
    pose_features,
    query_kwargs,
    relative_pose,
)
from nav_come.memory_bank import EpisodeMemory, FrameStore, Query, RetrievalConfig


def spatial_cond_dim(k: int) -> int:
    """adaLN memory vector size for k retrieved frames: k × (pose features + found) + absolute pose."""
    return k * FRAME_FEATURES + POSE_FEATURES


@dataclass
class SpatialConfig:
    """net: the network's config (extra_frames = k); retrieval: the bank query;
    retrieval_dropout: training probability of dropping the retrieval; contrast: the partner,
    "null" (unconditional branch) or "memory" (same context and action, no retrieval)."""

    net: DiTConfig | dict
    retrieval: RetrievalConfig | dict = field(default_factory=RetrievalConfig)
    retrieval_dropout: float = 0.15
    contrast: str = "null"

    def __post_init__(self) -> None:
        self.net = dit_config_of(self.net)
        if isinstance(self.retrieval, dict):
            self.retrieval = RetrievalConfig(**self.retrieval)
        check_contrast(self.contrast)
        if not 0 <= self.retrieval_dropout < 1:
            raise ValueError(f"retrieval_dropout must be in [0, 1), got {self.retrieval_dropout}")
        k = self.retrieval.k
        if self.net.extra_frames != k or self.net.extra_cond_dim != spatial_cond_dim(k):
            raise ValueError(
                f"the network needs extra_frames={k} and extra_cond_dim={spatial_cond_dim(k)} for k={k}, got "
                f"{self.net.extra_frames} and {self.net.extra_cond_dim}"
            )


class SpatialExpert(Expert):
    """Retrieval-conditioned expert; see the module docstring."""

    kind = "sltm"
    config_cls: ClassVar[type] = SpatialConfig

    def __init__(self, config: SpatialConfig, network: DiT | None = None):
        super().__init__()
        self.config = config
        self.network = network if network is not None else DiT(config.net)

    @classmethod
    def from_base(
        cls,
        base: DiT,
        retrieval: RetrievalConfig | None = None,
        retrieval_dropout: float = 0.15,
        contrast: str = "null",
    ) -> SpatialExpert:
        """The expert started exactly at ``base`` (zero-initialised memory pathways)."""
        retrieval = retrieval or RetrievalConfig()
        network = DiT.from_base(base, extra_frames=retrieval.k, extra_cond_dim=spatial_cond_dim(retrieval.k))
        return cls(SpatialConfig(network.config, retrieval, retrieval_dropout, contrast), network)

    def memory_inputs(
        self, store: FrameStore, target: torch.Tensor, end: torch.Tensor, episode: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Retrieval for target world poses (B, 3) among frames <= end (B,) of each episode (B,):
        extra_frames (B, K, c, h, w), extra_cond (B, 5K+4), retrieved (B, K) indices, distance (B, K)."""
        idx, dist = store.retrieve(target, end, episode, self.config.retrieval)  # (B, K) each
        found = idx >= 0
        rel = relative_pose(target[:, None], store.poses[idx.clamp(min=0)], store.spacing)  # (B, K, 3)
        per_frame = torch.cat([pose_features(rel), found[..., None].float()], -1) * found[..., None]  # (B, K, 5)
        absolute = pose_features(relative_pose(store.poses[store.starts[episode]], target, store.spacing))  # (B, 4)
        return {
            "extra_frames": store.gather(idx, found),
            "extra_cond": torch.cat([per_frame.flatten(1), absolute], 1),
            "retrieved": idx,
            "distance": dist,
        }

    def condition(self, memory: EpisodeMemory, query: Query) -> Condition:
        B, device = query.batch, query.action.device
        end = torch.full((B,), query.memory_end(memory.now))
        out = self.memory_inputs(
            memory, query.target_pose(memory.spacing).cpu(), end, torch.zeros(B, dtype=torch.int64)
        )
        kwargs = {**query_kwargs(query), "extra_frames": out["extra_frames"].to(device)}
        kwargs["extra_cond"] = out["extra_cond"].to(device)
        return Condition(kwargs, {"distance": out["distance"][:, 0], "retrieved": out["retrieved"]})

    def branches(self, cond: Condition) -> tuple[Branch, Branch]:
        kw = cond.kwargs
        if self.config.contrast == "null":
            partner = {**kw, "uncond": True}
        else:
            partner = {**kw, "uncond": False}
            partner.update(
                extra_frames=torch.zeros_like(kw["extra_frames"]), extra_cond=torch.zeros_like(kw["extra_cond"])
            )
        return Branch(self.network, {**kw, "uncond": False}), Branch(self.network, partner)

    def training_inputs(
        self, store: FrameStore, newest: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        out = self.memory_inputs(store, store.poses[target], newest - self.context, store.episode_of(newest))
        return {"extra_frames": out["extra_frames"], "extra_cond": out["extra_cond"]}

    def training_loss(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None, dropout: bool = True
    ) -> torch.Tensor:
        """v-MSE with condition, action and retrieval dropout."""
        net, B, device = self.network, batch["target"].shape[0], batch["target"].device
        drops = condition_dropout(net.config, B, generator, device, self.config.retrieval_dropout, dropout)
        keep = (~drops.pop("drop_memory")).float()  # (B,)
        kw = {k: batch[k] for k in ("context", "action", "shift")}
        kw["extra_frames"] = batch["extra_frames"] * keep[:, None, None, None, None]
        kw["extra_cond"] = batch["extra_cond"] * keep[:, None]

        def denoiser(x_t: torch.Tensor, t: torch.Tensor, _: object) -> torch.Tensor:
            return net(x_t, t, **kw, **drops)

        return diffusion_loss(denoiser, batch["target"], None, generator, schedule=self.schedule)


def copy_nearest(memory: EpisodeMemory, query: Query, retrieval: RetrievalConfig | None = None) -> torch.Tensor:
    """The naive-recall baseline: the latent (B, c, h, w) of the retrieved frame nearest each
    target pose (same rule as the spatial expert), or the newest context frame if none."""
    retrieval = retrieval or RetrievalConfig(k=1)
    B = query.batch
    end, episode = torch.full((B,), query.memory_end(memory.now)), torch.zeros(B, dtype=torch.int64)
    idx, _ = memory.retrieve(query.target_pose(memory.spacing).cpu(), end, episode, retrieval)
    found = idx[:, 0] >= 0  # (B,)
    nearest = memory.gather(idx[:, 0], found).to(query.context.device)  # (B, c, h, w)
    newest = query.context[:, -1].float().expand(B, -1, -1, -1)
    return torch.where(found.to(nearest.device)[:, None, None, None], nearest, newest)


def distance_alpha(
    near: float, far: float = 1.0, d_near: float = 0.5, d_far: float = 2.0
) -> Callable[[Condition], torch.Tensor]:
    """Relevance-dependent alpha for the spatial expert: ``near`` when the best retrieved frame is
    within d_near (pose distance), ``far`` beyond d_far or when none was found, linear between."""
    if not d_far > d_near:
        raise ValueError(f"need d_far > d_near, got {d_far} <= {d_near}")

    def alpha(cond: Condition) -> torch.Tensor:
        w = ((cond.info["distance"] - d_near) / (d_far - d_near)).clamp(0, 1)  # (B,), inf -> 1
        return near + (far - near) * w

    return alpha
