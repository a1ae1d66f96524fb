"""NoMaD (Sridhar et al., ICRA 2024): goal-masked transformer + diffusion policy.

- One token per context frame from a small conv encoder (shared over frames), and a goal
  token from a second encoder fed the current frame and the goal stacked (6 channels).
- A transformer encoder over these C + 1 tokens (learned position embeddings). **Goal
  masking**: with probability ``goal_mask_prob`` during training the goal token is hidden
  from attention and from the average pooling, which makes the same network an
  exploration policy; at evaluation the goal is given (``predict(goal_mask=True)`` explores).
- The average-pooled context vector conditions a 1-D U-Net (FiLM on the context vector
  and the diffusion step embedding) that predicts the noise of an action sequence
  (K, 4): per-step (dx, dy) deltas scaled to [-1, 1] with data statistics kept in the
  config (NoMaD's ``normalize_data``), and (cos, sin) of each waypoint's yaw.
- Discrete DDPM with the ``squaredcos_cap_v2`` schedule, epsilon prediction and x0
  clipping to [-1, 1], 10 steps for training and sampling, as NoMaD's diffusers scheduler.
  Written here in a few lines to avoid a diffusers dependency.
- A distance head on the (goal-conditioned) context vector.

Loss (NoMaD's ``alpha = 1e-4``): ``alpha * MSE(distance, unmasked samples only) +
(1 - alpha) * MSE(noise)``. Under Adam the small factor mostly keeps the distance
gradient out of the shared encoder; the distance head itself still trains.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nav_come.core.data.config import ACTION_MAX, ACTION_MIN
from nav_come.diffusion import rand, randn
from nav_come.dit import ScalarEmbedder
from planners.policy_common import (
    ConvEncoder,
    Policy,
    PolicyConfig,
    cumulative_xy,
    delta_range,
    from_xycs,
    group_norm,
    normalise,
    register_policy,
    unnormalise,
    xy_deltas,
)

ACTION_DIM = 4  # normalised dx, dy, cos yaw, sin yaw

NOMAD_PRESETS: dict[str, dict] = {
    "tiny": dict(
        image_size=32,
        widths=(8, 16, 32),
        depths=(1, 1),
        feature_dim=32,
        n_layers=1,
        n_heads=2,
        unet_dims=(16, 32),
        time_dim=16,
    ),
    "small": dict(  # 2.3M params
        widths=(16, 32, 64, 128), depths=(1, 2, 2), feature_dim=128, n_layers=2, n_heads=4, unet_dims=(32, 64, 128)
    ),
}


@dataclass
class NoMaDConfig(PolicyConfig):
    """NoMaD settings (the shared fields are documented on :class:`PolicyConfig`);
    ``feature_dim`` is the token width of the transformer.

    n_layers, n_heads: transformer encoder depth and heads (feed-forward 4x wide).
    unet_dims: channels of the U-Net levels; each level but the last halves the length.
    kernel_size: temporal kernel of the U-Net convolutions.
    time_dim: size of the diffusion step embedding.
    diffusion_steps: DDPM steps of training and sampling (NoMaD: 10).
    goal_mask_prob: training probability of masking the goal token (NoMaD: 0.5).
    delta_min, delta_max: range of per-step (dx, dy) in spacing units mapped to [-1, 1];
        the training CLI sets it from the training data (defaults: NWM's action stats).
    alpha: weight of the distance loss (NoMaD: 1e-4); the noise loss gets ``1 - alpha``.
    """

    n_layers: int = 2
    n_heads: int = 4
    unet_dims: tuple[int, ...] = (64, 128, 256)
    kernel_size: int = 5
    time_dim: int = 64
    diffusion_steps: int = 10
    goal_mask_prob: float = 0.5
    delta_min: tuple[float, ...] = ACTION_MIN
    delta_max: tuple[float, ...] = ACTION_MAX
    alpha: float = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        self.unet_dims = tuple(int(d) for d in self.unet_dims)
        self.delta_min, self.delta_max = tuple(map(float, self.delta_min)), tuple(map(float, self.delta_max))
        for field in ("n_layers", "n_heads", "kernel_size", "time_dim", "diffusion_steps"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"NoMaDConfig.{field} must be >= 1, got {getattr(self, field)}")
        if self.feature_dim % self.n_heads:
            raise ValueError(f"NoMaDConfig.feature_dim {self.feature_dim} must be a multiple of n_heads {self.n_heads}")
        if not self.unet_dims or min(self.unet_dims) < 1 or self.pred_len % 2 ** (len(self.unet_dims) - 1):
            raise ValueError(
                f"NoMaDConfig.unet_dims {self.unet_dims} must be positive, and pred_len {self.pred_len} a multiple of "
                f"2**(len(unet_dims) - 1)"
            )
        if self.kernel_size % 2 == 0 or self.time_dim % 2:
            raise ValueError(
                f"NoMaDConfig needs an odd kernel_size and even time_dim, got {self.kernel_size}, {self.time_dim}"
            )
        lo, hi = self.delta_min, self.delta_max
        if len(lo) != 2 or len(hi) != 2 or not all(a < b for a, b in zip(lo, hi, strict=True)):
            raise ValueError(f"NoMaDConfig.delta_min {lo} must be below delta_max {hi}, two values each")
        if not 0.0 <= self.goal_mask_prob <= 1.0 or not 0.0 <= self.alpha < 1.0:
            raise ValueError(
                f"NoMaDConfig needs goal_mask_prob in [0, 1] and alpha in [0, 1), got "
                f"{self.goal_mask_prob}, {self.alpha}"
            )


def squaredcos_cap_v2(steps: int, max_beta: float = 0.999) -> list[float]:
    """Cumulative alphas (alpha-bar) of the ``squaredcos_cap_v2`` (Nichol & Dhariwal) schedule, length ``steps``."""

    def f(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    abar, out = 1.0, []
    for i in range(steps):
        abar *= 1 - min(1 - f((i + 1) / steps) / f(i / steps), max_beta)
        out.append(abar)
    return out


# ----------------------------------------------------------------------------- 1-D conditional U-Net


def _conv_block(c_in: int, c_out: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(c_in, c_out, k, padding=k // 2), group_norm(c_out), nn.Mish())


class FiLMResBlock1d(nn.Module):
    """Two conv blocks, FiLM (scale, shift) from the condition after the first. (B, c_in, L) -> (B, c_out, L)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, k: int):
        super().__init__()
        self.conv1, self.conv2 = _conv_block(c_in, c_out, k), _conv_block(c_out, c_out, k)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond)[..., None].chunk(2, 1)  # (B, c_out, 1) each
        h = self.conv1(x) * (1 + scale) + shift
        return self.conv2(h) + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """Noise predictor ``(x_t (B, K, A), t (B,), cond (B, D)) -> eps (B, K, A)`` (diffusion policy's U-Net)."""

    def __init__(self, action_dim: int, cond_dim: int, dims: tuple[int, ...], time_dim: int, k: int):
        super().__init__()
        self.time = ScalarEmbedder(time_dim, time_dim, 1.0)
        cd, chans = cond_dim + time_dim, (action_dim, *dims)

        def pair(c_in: int, c_out: int) -> nn.ModuleList:
            return nn.ModuleList([FiLMResBlock1d(c_in, c_out, cd, k), FiLMResBlock1d(c_out, c_out, cd, k)])

        self.down = nn.ModuleList(pair(chans[i], chans[i + 1]) for i in range(len(dims)))
        self.downsample = nn.ModuleList(nn.Conv1d(d, d, 3, 2, 1) for d in dims[:-1])
        self.mid = pair(dims[-1], dims[-1])
        self.upsample = nn.ModuleList(nn.ConvTranspose1d(d, d, 4, 2, 1) for d in dims[1:])
        self.up = nn.ModuleList(pair(dims[i + 1] + dims[i], dims[i]) for i in range(len(dims) - 1))
        self.out = nn.Sequential(_conv_block(dims[0], dims[0], k), nn.Conv1d(dims[0], action_dim, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = torch.cat([self.time(t), cond], -1)  # (B, time_dim + D)
        h, skips = x.transpose(1, 2), []  # (B, A, K)
        for i, blocks in enumerate(self.down):
            h = blocks[1](blocks[0](h, c), c)  # (B, dims[i], K / 2**i)
            if i < len(self.downsample):
                skips.append(h)
                h = self.downsample[i](h)
        h = self.mid[1](self.mid[0](h, c), c)
        for i in reversed(range(len(self.up))):
            h = torch.cat([self.upsample[i](h), skips[i]], 1)  # (B, dims[i+1] + dims[i], K / 2**i)
            h = self.up[i][1](self.up[i][0](h, c), c)
        return self.out(h).transpose(1, 2)  # (B, K, A)


# ----------------------------------------------------------------------------- policy


@register_policy
class NoMaD(Policy):
    """Context + goal tokens -> goal-masked transformer -> pooled vector -> diffusion over actions."""

    name = "nomad"
    config_class = NoMaDConfig
    presets = NOMAD_PRESETS

    def __init__(self, config: NoMaDConfig):
        super().__init__(config)
        c, D = config, config.feature_dim
        self.obs_encoder = ConvEncoder(3, c.widths, c.depths, D)
        self.goal_encoder = ConvEncoder(6, c.widths, c.depths, D)
        self.pos_emb = nn.Parameter(torch.randn(1, c.context_size + 1, D) * 0.02)
        layer = nn.TransformerEncoderLayer(D, c.n_heads, 4 * D, 0.0, "gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, c.n_layers, enable_nested_tensor=False)
        self.dist_head = nn.Sequential(nn.Linear(D, D // 4), nn.ReLU(), nn.Linear(D // 4, 1))
        self.noise_net = ConditionalUnet1D(ACTION_DIM, D, c.unet_dims, c.time_dim, c.kernel_size)
        self.abar = squaredcos_cap_v2(c.diffusion_steps)  # python floats: the sampler's exact schedule
        self.register_buffer("abar_t", torch.tensor(self.abar), persistent=False)  # (T,) for training

    @classmethod
    def adapt_config(cls, config: NoMaDConfig, trajectories: list, spacing: float) -> NoMaDConfig:
        """Set the action normalisation range from the training trajectories."""
        lo, hi = delta_range(trajectories, config.pred_len, spacing)
        return dataclasses.replace(config, delta_min=lo, delta_max=hi)

    def encode(self, context: torch.Tensor, goal: torch.Tensor, goal_mask: torch.Tensor) -> torch.Tensor:
        """context (B, C, 3, S, S), goal (B, 3, S, S) in [-1, 1], goal_mask (B,) bool (True hides
        the goal) -> pooled context vector (B, D)."""
        B, C = context.shape[:2]
        obs = self.obs_encoder(context.flatten(0, 1)).view(B, C, -1)  # (B, C, D)
        goal_tok = self.goal_encoder(torch.cat([context[:, -1], goal], 1))[:, None]  # (B, 1, D)
        tokens = torch.cat([obs, goal_tok], 1) + self.pos_emb  # (B, C+1, D)
        hidden = torch.cat([torch.zeros_like(goal_mask[:, None]).expand(B, C), goal_mask[:, None]], 1)  # (B, C+1)
        tokens = self.transformer(tokens, src_key_padding_mask=hidden)
        keep = (~hidden).to(tokens.dtype)[..., None]  # (B, C+1, 1)
        return (tokens * keep).sum(1) / keep.sum(1)  # (B, D)

    def encode_actions(self, waypoints: torch.Tensor) -> torch.Tensor:
        """(B, K, 3) waypoints -> (B, K, 4) diffusion targets in [-1, 1]."""
        c = self.config
        yaw = waypoints[..., 2]
        return torch.cat(
            [normalise(xy_deltas(waypoints), c.delta_min, c.delta_max), yaw.cos()[..., None], yaw.sin()[..., None]], -1
        )

    def decode_actions(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, 4) sampled actions -> (B, K, 3) waypoints."""
        c = self.config
        xy = cumulative_xy(unnormalise(x[..., :2].clamp(-1, 1), c.delta_min, c.delta_max))  # (B, K, 2)
        return from_xycs(torch.cat([xy, x[..., 2:]], -1))

    def loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """NoMaD's loss on a batch with ``context``, ``goal``, ``rel_poses`` and ``goal_offset``."""
        context, goal = self.prepare(batch["context"], batch["goal"])
        B, device = context.shape[0], context.device
        masked = rand((B,), generator, device) < self.config.goal_mask_prob  # (B,) bool
        cond = self.encode(context, goal, masked)  # (B, D)
        x0 = self.encode_actions(batch["rel_poses"].to(device).float())  # (B, K, 4)
        gen_device = generator.device if generator is not None else device
        t = torch.randint(self.config.diffusion_steps, (B,), generator=generator, device=gen_device).to(device)
        eps = randn(tuple(x0.shape), generator, device)  # (B, K, 4)
        abar = self.abar_t[t][:, None, None]  # (B, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        noise_loss = F.mse_loss(self.noise_net(x_t, t, cond).float(), eps)
        keep = (~masked).float()  # the distance is only defined with a goal
        dist_err = (self.dist_head(cond).squeeze(-1).float() - batch["goal_offset"].to(device).float()) ** 2
        dist_loss = (dist_err * keep).sum() / keep.sum().clamp(min=1)
        return self.config.alpha * dist_loss + (1 - self.config.alpha) * noise_loss

    def ddpm_step(self, x: torch.Tensor, eps: torch.Tensor, t: int, generator: torch.Generator | None) -> torch.Tensor:
        """x_t -> x_{t-1}: diffusers' DDPMScheduler.step (fixed_small variance, clip_sample)."""
        abar, abar_prev = self.abar[t], self.abar[t - 1] if t > 0 else 1.0
        beta = 1 - abar / abar_prev
        x0 = ((x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)).clamp(-1, 1)
        mean = (math.sqrt(abar_prev) * beta / (1 - abar)) * x0 + (
            math.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar)
        ) * x
        if t == 0:
            return mean
        std = math.sqrt(max((1 - abar_prev) / (1 - abar) * beta, 1e-20))
        return mean + std * randn(tuple(x.shape), generator, x.device)

    @torch.no_grad()
    def predict(
        self,
        context: torch.Tensor,
        goal: torch.Tensor | None,
        generator: torch.Generator | None = None,
        goal_mask: bool = False,
    ) -> dict[str, torch.Tensor | None]:
        """See :mod:`planners.policy_common`. ``goal_mask=True`` hides the goal (exploration;
        ``goal`` may then be None and ``distance`` is None). Sampling draws from ``generator``."""
        if goal is None:
            if not goal_mask:
                raise ValueError("NoMaD.predict needs a goal image unless goal_mask=True (exploration)")
            goal = torch.zeros_like(context[:, -1])
        context, goal = self.prepare(context, goal)
        B, K = context.shape[0], self.config.pred_len
        cond = self.encode(context, goal, torch.full((B,), goal_mask, dtype=torch.bool, device=context.device))
        x = randn((B, K, ACTION_DIM), generator, context.device)  # (B, K, 4)
        for t in reversed(range(self.config.diffusion_steps)):
            eps = self.noise_net(x, torch.full((B,), t, device=x.device), cond).float()
            x = self.ddpm_step(x, eps, t, generator)
        distance = None if goal_mask else self.dist_head(cond).squeeze(-1).float()
        return {"waypoints": self.decode_actions(x), "distance": distance}  # (B, K, 3), (B,) or None
