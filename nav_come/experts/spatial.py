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

**Recall path** (``SpatialConfig.recall``, :class:`RecallDiT`). Learning to copy a frame
through a transformer takes long training; the recall path gives the nearest retrieved latent
``r`` a direct route to the output instead. The network's own estimate ``x0_net`` is blended
per latent pixel::

    x0 = x0_net + sigma_t · g · (r - x0_net),   g = hard_sigmoid(gate(x0_net, r, pose of r, logSNR)) in [0, 1]

``g`` is 0 where nothing was retrieved, for the unconditional branch and under retrieval
dropout, so the partners are untouched. The factor ``sigma_t`` (1 at t = 1, 0 at t = 0) keeps
the v-loss of the blend bounded where ``x_t`` alone pins x0 down. The hard sigmoid reaches 0
and 1 exactly, so a gate that is sure returns the recalled latent itself at t = 1 (a one-step
prediction is then exactly the recalled frame).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from nav_come.compose import Branch
from nav_come.diffusion import COSINE, diffusion_loss
from nav_come.dit import DiT, DiTConfig, _mask
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

RECALL_HIDDEN = 32  # width of the recall gate
RECALL_MARGIN = 0.05  # the hard sigmoid reaches 0 and 1 where sigmoid(z) is within this of them
RECALL_START = -2.5  # gate logit at the start: g = 0.03, the network's own estimate almost unchanged


def hard_sigmoid(z: torch.Tensor, margin: float = RECALL_MARGIN) -> torch.Tensor:
    """A sigmoid stretched by ``margin`` and clipped to [0, 1]: exactly 0 and 1 are reachable."""
    return (torch.sigmoid(z) * (1 + 2 * margin) - margin).clamp(0, 1)


class RecallGate(nn.Module):
    """Per-pixel gate (B, 1, h, w) in [0, 1] from the network's x0, the recalled latent, the
    recalled frame's pose features and found flag (B, FRAME_FEATURES) and the log-SNR (B,)."""

    def __init__(self, channels: int, hidden: int = RECALL_HIDDEN):
        super().__init__()
        self.pixels = nn.Sequential(nn.Conv2d(3 * channels, hidden, 3, padding=1), nn.SiLU(), nn.Conv2d(hidden, 1, 1))
        self.sample = nn.Sequential(nn.Linear(FRAME_FEATURES + 1, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        for last in (self.pixels[-1], self.sample[-1]):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        nn.init.constant_(self.sample[-1].bias, RECALL_START)

    def forward(
        self, x0: torch.Tensor, recalled: torch.Tensor, features: torch.Tensor, logsnr: torch.Tensor
    ) -> torch.Tensor:
        z = self.pixels(torch.cat([x0, recalled, x0 - recalled], 1))  # (B, 1, h, w)
        z = z + self.sample(torch.cat([features, logsnr[:, None] / 10], 1))[:, :, None, None]
        return hard_sigmoid(z.float())


class RecallDiT(DiT):
    """The spatial expert's DiT with the recall path (module docstring): the nearest retrieved
    latent (``extra_frames[:, 0]``) reaches the output through a gated blend of x0."""

    def __init__(self, config: DiTConfig):
        super().__init__(config)
        if not config.extra_frames or config.extra_cond_dim < FRAME_FEATURES:
            raise ValueError("the recall path needs retrieved frames (extra_frames >= 1) and their features")
        self.memory_recall = RecallGate(config.latent_channels)
        self.schedule = COSINE

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor | float,
        context: torch.Tensor,
        action: torch.Tensor,
        shift: torch.Tensor | int = 1,
        **kwargs,
    ) -> torch.Tensor:
        """:meth:`DiT.forward` (the rest of its arguments by keyword), then the recall blend."""
        v = super().forward(x_t, t, context, action, shift, **kwargs)
        extra_frames, extra_cond = kwargs.get("extra_frames"), kwargs.get("extra_cond")
        if extra_frames is None or extra_cond is None:
            return v
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32).expand(x_t.shape[0])
        x = x_t.float()
        x0 = self.schedule.x0_from_v(x, v.float(), t)
        weight = self.recall_weight(x0, t, extra_frames, extra_cond, kwargs.get("uncond"))
        blended = self.schedule.v_from_x0(x, x0 + weight * (extra_frames[:, 0].float() - x0), t)
        return torch.where(weight.flatten(1).amax(1)[:, None, None, None] > 0, blended, v)  # no gate: v exactly

    def recall_weight(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        extra_frames: torch.Tensor,
        extra_cond: torch.Tensor,
        uncond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The blend weight ``sigma_t · g`` (B, 1, h, w) of the recalled latent, given the
        network's x0 (B, c, h, w) and t (B,); 0 where nothing was found or ``uncond``."""
        B, device = x0.shape[0], x0.device
        recalled, features = extra_frames[:, 0].float(), extra_cond[:, :FRAME_FEATURES].float()  # nearest first
        alpha, sigma = self.schedule.alpha_sigma(t)
        on = (features[:, -1] > 0) & ~_mask(uncond, B, device)  # (B,) found, and not the null condition
        g = self.memory_recall(x0, recalled, features, 2 * torch.log(alpha / sigma))  # (B, 1, h, w)
        return g * (sigma * on)[:, None, None, None]


def spatial_cond_dim(k: int) -> int:
    """adaLN memory vector size for k retrieved frames: k × (pose features + found) + absolute pose."""
    return k * FRAME_FEATURES + POSE_FEATURES


@dataclass
class SpatialConfig:
    """net: the network's config (extra_frames = k); retrieval: the bank query;
    retrieval_dropout: training probability of dropping the retrieval; contrast: the partner,
    "null" (unconditional branch) or "memory" (same context and action, no retrieval);
    recall: the network has the recall path (:class:`RecallDiT`)."""

    net: DiTConfig | dict
    retrieval: RetrievalConfig | dict = field(default_factory=RetrievalConfig)
    retrieval_dropout: float = 0.15
    contrast: str = "null"
    recall: bool = False

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
        self.network = network if network is not None else (RecallDiT if config.recall else DiT)(config.net)

    @classmethod
    def from_base(
        cls,
        base: DiT,
        retrieval: RetrievalConfig | None = None,
        retrieval_dropout: float = 0.15,
        contrast: str = "null",
        recall: bool = False,
    ) -> SpatialExpert:
        """The expert started at ``base``: a base world model (zero-initialised memory pathways,
        exactly the base), or a spatial expert's network of the same k (its weights; with
        ``recall`` a new recall path whose gate starts almost closed)."""
        retrieval = retrieval or RetrievalConfig()
        network_cls = RecallDiT if recall else DiT
        network = network_cls.from_base(base, extra_frames=retrieval.k, extra_cond_dim=spatial_cond_dim(retrieval.k))
        return cls(SpatialConfig(network.config, retrieval, retrieval_dropout, contrast, recall), network)

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
        """extra_frames and extra_cond, and ``distance`` (B,) of the nearest retrieval (inf: none),
        which a relevance weight reads (``planners.student``'s teacher)."""
        out = self.memory_inputs(store, store.poses[target], newest - self.context, store.episode_of(newest))
        return {"extra_frames": out["extra_frames"], "extra_cond": out["extra_cond"], "distance": out["distance"][:, 0]}

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
