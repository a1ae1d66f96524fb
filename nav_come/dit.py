"""Conditional diffusion transformer: the base expert's denoiser (CDiT spirit, NWM).

It predicts ``v`` for the noisy latent of the target frame. The condition is
- the context latents, oldest to newest, channel-concatenated with the noisy target
  (cheap context injection: the token count does not grow with the context);
- the action ``(dx, dy, dyaw)`` in spacing units, each component embedded separately and summed;
- the time shift ``s`` to the target (1..max_shift), so one model predicts 1 to s steps ahead;
- the diffusion time ``t`` in [0, 1].
Time, action and shift embeddings are summed into one vector that modulates every block
through adaLN-Zero (DiT). A per-sample boolean ``uncond`` replaces the whole condition by
a learned null (context latents zeroed, action and shift replaced by a null embedding),
and ``drop_action`` replaces the action alone. Training draws both masks at random
(context and action dropout) so the same network gives the unconditional prediction that
the contrastive composition of experts needs; one batched forward can mix both.

Memory experts extend this network without changing what it computes at start:
``extra_frames`` adds conditioning frames as extra input channels whose patch-embedding
weights start at zero, and ``extra_cond_dim`` adds a vector to the adaLN input through a
zero-initialised projection. :meth:`DiT.from_base` builds such a network from trained
base weights; its output equals the base network's until the new weights move.
Subclasses can also override :meth:`DiT.embed_input`, :meth:`DiT.embed_condition` or
the blocks (e.g. to add a zero-initialised cross-attention).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nav_come.core.checkpoint import register_kind
from nav_come.diffusion import COSINE, CosineSchedule, diffusion_loss, rand

DIT_PRESETS: dict[str, dict] = {
    "tiny": dict(width=64, depth=2, heads=2),  # tests: ~0.2M parameters
    "small": dict(width=256, depth=6, heads=4),  # this CPU: ~7.5M, < 1 h to a useful model
    "base": dict(width=768, depth=12, heads=12),  # GPU: ~130M (DiT-B)
}


@dataclass
class DiTConfig:
    """Denoiser configuration, stored in every DiT checkpoint.

    latent_channels, latent_size: shape of one latent frame (c, h, w=h) from the autoencoder.
    context: number of context frames, oldest to newest.
    patch: side of the square patches (2 gives 64 tokens at 16×16).
    width, depth, heads, mlp_ratio: transformer size.
    max_shift: largest time shift (frames) between the newest context frame and the target.
    freq_dim: sinusoidal features per embedded scalar (time, each action component).
    action_scale: actions are multiplied by it before the sinusoidal embedding.
    context_dropout: training probability of dropping the whole condition (``uncond``).
    action_dropout: training probability of dropping the action alone.
    extra_frames: memory frames added as zero-initialised input channels (0 for the base).
    extra_cond_dim: size of a memory vector added to adaLN via a zero-init projection.
    preset: the ``DIT_PRESETS`` name it was built from (informative).
    """

    latent_channels: int = 4
    latent_size: int = 16
    context: int = 4
    patch: int = 2
    width: int = 256
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    max_shift: int = 4
    freq_dim: int = 256
    action_scale: float = 10.0
    context_dropout: float = 0.15
    action_dropout: float = 0.1
    extra_frames: int = 0
    extra_cond_dim: int = 0
    preset: str = "custom"

    def __post_init__(self) -> None:
        positive = ("latent_channels", "latent_size", "context", "patch", "width", "depth", "heads", "max_shift")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DiTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.latent_size % self.patch:
            raise ValueError(f"DiTConfig.latent_size {self.latent_size} must be a multiple of patch {self.patch}")
        if self.width % self.heads:
            raise ValueError(f"DiTConfig.width {self.width} must be a multiple of heads {self.heads}")
        if self.freq_dim % 2:
            raise ValueError(f"DiTConfig.freq_dim must be even, got {self.freq_dim}")
        for name in ("context_dropout", "action_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"DiTConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.extra_frames < 0 or self.extra_cond_dim < 0:
            raise ValueError(
                f"DiTConfig.extra_frames/extra_cond_dim must be >= 0, got {self.extra_frames}/{self.extra_cond_dim}"
            )

    @property
    def tokens(self) -> int:
        return (self.latent_size // self.patch) ** 2


def dit_config(preset: str, **overrides) -> DiTConfig:
    """The config of a named preset, with field overrides (e.g. ``latent_size=32``)."""
    if preset not in DIT_PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(DIT_PRESETS)}")
    return DiTConfig(**{**DIT_PRESETS[preset], "preset": preset, **overrides})


def sinusoidal(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of scalars: (B,) -> (B, dim) (DiT's timestep embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = x.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


class ScalarEmbedder(nn.Module):
    """A scalar per sample -> (B, width): sinusoidal features of ``scale * x`` then an MLP."""

    def __init__(self, width: int, freq_dim: int, scale: float):
        super().__init__()
        self.freq_dim, self.scale = freq_dim, scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal(x * self.scale, self.freq_dim))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: x (B, N, D), shift/scale (B, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head self-attention. ``qkv`` and ``proj`` are the names LoRA targets."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, H, N, Dh)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, H, N, Dh)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    """Token MLP; ``fc1`` and ``fc2`` are the names LoRA targets."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero: x (B, N, D), c (B, D) -> (B, N, D)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, int(width * mlp_ratio))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, -1)  # 6 × (B, D)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN then linear to patch pixels: (B, N, D) -> (B, N, p*p*c)."""

    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, -1)
        return self.linear(modulate(self.norm(x), shift, scale))


def _mask(mask: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
    """A (B,) bool mask; None means all False."""
    if mask is None:
        return torch.zeros(batch, dtype=torch.bool, device=device)
    return mask.to(device=device, dtype=torch.bool).expand(batch)


class DiT(nn.Module):
    """The denoiser ``(x_t, t, condition) -> v``; see the module docstring."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        D, p = cfg.width, cfg.patch
        self.in_channels = cfg.latent_channels * (1 + cfg.context + cfg.extra_frames)
        self.patch_embed = nn.Conv2d(self.in_channels, D, p, stride=p)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.tokens, D))
        self.t_embed = ScalarEmbedder(D, cfg.freq_dim, 1000.0)  # t in [0, 1] -> DiT's 0..1000 range
        self.action_embed = nn.ModuleList([ScalarEmbedder(D, cfg.freq_dim, cfg.action_scale) for _ in range(3)])
        self.shift_embed = nn.Embedding(cfg.max_shift + 1, D)  # row 0 unused
        self.null_context = nn.Parameter(torch.zeros(D))
        self.null_action = nn.Parameter(torch.zeros(D))
        self.extra_cond = nn.Linear(cfg.extra_cond_dim, D) if cfg.extra_cond_dim else None
        self.blocks = nn.ModuleList([DiTBlock(D, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.final = FinalLayer(D, p * p * cfg.latent_channels)
        self._initialize()

    def _initialize(self) -> None:
        """DiT's init: xavier linears, zero adaLN and output (the blocks start as identity)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        with torch.no_grad():  # memory frames enter through zero weights: the base function is unchanged
            w[:, self.config.latent_channels * (1 + self.config.context) :] = 0
        for p in (self.pos_emb, self.null_context, self.null_action, self.shift_embed.weight):
            nn.init.normal_(p, std=0.02)
        for emb in (self.t_embed, *self.action_embed):
            nn.init.normal_(emb.mlp[0].weight, std=0.02)
            nn.init.normal_(emb.mlp[2].weight, std=0.02)
        zero = [b.ada[-1] for b in self.blocks] + [self.final.ada[-1], self.final.linear]
        zero += [self.extra_cond] if self.extra_cond is not None else []
        for m in zero:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def embed_input(
        self, x_t: torch.Tensor, context: torch.Tensor, uncond: torch.Tensor, extra_frames: torch.Tensor | None
    ) -> torch.Tensor:
        """Noisy target (B, c, h, w) and context (B, C, c, h, w) -> tokens (B, N, D)."""
        cfg = self.config
        if context.shape[1:] != (cfg.context, *x_t.shape[1:]):
            raise ValueError(f"context must be (B, {cfg.context}, {tuple(x_t.shape[1:])}), got {tuple(context.shape)}")
        keep = (~uncond).to(x_t.dtype)[:, None, None, None, None]  # (B, 1, 1, 1, 1)
        frames = [x_t[:, None], context.to(x_t.dtype) * keep]
        if cfg.extra_frames:
            if extra_frames is None:
                extra_frames = x_t.new_zeros(x_t.shape[0], cfg.extra_frames, *x_t.shape[1:])
            frames.append(extra_frames.to(x_t.dtype) * keep)
        x = torch.cat(frames, 1).flatten(1, 2)  # (B, (1+C+E)*c, h, w)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        return x + self.pos_emb

    def embed_condition(
        self,
        t: torch.Tensor,
        action: torch.Tensor,
        shift: torch.Tensor,
        uncond: torch.Tensor,
        drop_action: torch.Tensor,
        extra_cond: torch.Tensor | None,
    ) -> torch.Tensor:
        """The adaLN input (B, D): time + (action + shift, or the null context) [+ memory vector]."""
        a = sum(emb(action[:, i]) for i, emb in enumerate(self.action_embed))  # (B, D)
        a = torch.where(drop_action[:, None], self.null_action, a)
        cond = torch.where(uncond[:, None], self.null_context, a + self.shift_embed(shift))  # (B, D)
        c = self.t_embed(t) + cond
        if self.extra_cond is not None and extra_cond is not None:
            c = c + self.extra_cond(extra_cond) * (~uncond)[:, None]
        return c

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*c) -> (B, c, h, w)."""
        B, p, c = x.shape[0], self.config.patch, self.config.latent_channels
        g = self.config.latent_size // p
        x = x.view(B, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)  # (B, c, g, p, g, p)
        return x.reshape(B, c, g * p, g * p)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor | float,
        context: torch.Tensor,
        action: torch.Tensor,
        shift: torch.Tensor | int = 1,
        uncond: torch.Tensor | None = None,
        drop_action: torch.Tensor | None = None,
        extra_frames: torch.Tensor | None = None,
        extra_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """v-prediction (B, c, h, w).

        x_t: (B, c, h, w) noisy target latent; t: (B,) or scalar diffusion time in [0, 1];
        context: (B, C, c, h, w) oldest to newest; action: (B, 3) (dx, dy, dyaw) in spacing units;
        shift: (B,) or int in 1..max_shift; uncond / drop_action: (B,) bool masks (None = all False);
        extra_frames: (B, E, c, h, w) memory frames; extra_cond: (B, extra_cond_dim).
        """
        x, c = self.embed(x_t, t, context, action, shift, uncond, drop_action, extra_frames, extra_cond)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final(x, c))

    def embed(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor | float,
        context: torch.Tensor,
        action: torch.Tensor,
        shift: torch.Tensor | int = 1,
        uncond: torch.Tensor | None = None,
        drop_action: torch.Tensor | None = None,
        extra_frames: torch.Tensor | None = None,
        extra_cond: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, N, D) and adaLN input (B, D) of :meth:`forward`'s arguments (for subclasses)."""
        B, device = x_t.shape[0], x_t.device
        t = torch.as_tensor(t, device=device, dtype=torch.float32).expand(B)
        shift = torch.as_tensor(shift, device=device, dtype=torch.long).expand(B)
        uncond = _mask(uncond, B, device)
        drop_action = _mask(drop_action, B, device) | uncond
        x = self.embed_input(x_t, context, uncond, extra_frames)  # (B, N, D)
        c = self.embed_condition(t, action.float(), shift, uncond, drop_action, extra_cond)  # (B, D)
        return x, c

    @classmethod
    def config_from_base(cls, base_config: DiTConfig, **changes) -> DiTConfig:
        """The config of a network started from a base; subclasses with their own config class override it."""
        return dataclasses.replace(base_config, **changes)

    @classmethod
    def from_base(cls, base: DiT, **changes) -> DiT:
        """A network with ``changes`` to the config that starts from ``base``'s weights.

        Meant for memory experts (``extra_frames``, ``extra_cond_dim``): every base tensor
        is copied, the new input channels and projections stay zero, so the new network
        computes exactly the base function until it is trained.
        """
        model = cls(cls.config_from_base(base.config, **changes))
        state = model.state_dict()
        for name, value in base.state_dict().items():
            if name not in state:
                raise ValueError(f"cannot start from the base: the new network has no tensor {name}")
            target = state[name]
            if target.shape == value.shape:
                state[name] = value.clone()
            elif (
                name == "patch_embed.weight"
                and base.config.context == model.config.context
                and target.shape[1] > value.shape[1]
                and target.shape[2:] == value.shape[2:]
            ):
                state[name] = torch.cat([value, target[:, value.shape[1] :]], 1)  # new channels stay zero
            else:
                raise ValueError(
                    f"cannot start from the base: {name} is {tuple(value.shape)} in the base "
                    f"but {tuple(target.shape)} in the new network"
                )
        model.load_state_dict(state)
        return model


def dit_training_loss(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    generator: torch.Generator | None = None,
    *,
    schedule: CosineSchedule = COSINE,
    min_snr_gamma: float | None = None,
    dropout: bool = True,
) -> torch.Tensor:
    """The base expert's objective on one batch (scalar): v-MSE with condition dropout.

    batch: ``context`` (B, C, c, h, w), ``target`` (B, c, h, w), ``action`` (B, 3), ``shift`` (B,),
    all on the model's device. With ``dropout``, each sample drops its whole condition with
    probability ``config.context_dropout`` and its action with ``config.action_dropout``.
    ``model`` is a DiT or a wrapper with the same forward (e.g. DDP).
    """
    config = getattr(model, "module", model).config
    B, device = batch["target"].shape[0], batch["target"].device
    cond = {"context": batch["context"], "action": batch["action"], "shift": batch["shift"]}
    if dropout:
        u = rand((2, B), generator, device)  # (2, B)
        cond["uncond"] = u[0] < config.context_dropout
        cond["drop_action"] = u[1] < config.action_dropout

    def denoiser(x_t: torch.Tensor, t: torch.Tensor, c: dict) -> torch.Tensor:
        return model(x_t, t, **c)

    return diffusion_loss(denoiser, batch["target"], cond, generator, schedule=schedule, min_snr_gamma=min_snr_gamma)


register_kind("dit", DiTConfig, DiT, DIT_PRESETS)
