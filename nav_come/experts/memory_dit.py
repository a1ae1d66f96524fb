"""MemoryDiT: the base DiT plus a zero-initialised cross-attention to memory tokens.

The STM, Full and SSM experts share this network; they differ in which past frames become
memory tokens:

- ``memory="tokens"`` (STM, Full): every memory frame becomes ``memory_grid²`` tokens
  (a linear map of each (latent_size / memory_grid)² latent patch), plus a learned
  position per patch and an embedding of the frame's features (pose relative to the anchor
  frame, age);
- ``memory="ssm"`` (SSM): each frame's patches (and features) are folded into a fixed state
  of ``memory_grid²`` × ``ssm_dim`` by a gated, diagonal linear recurrence
  ``h_k = a_k ⊙ h_{k-1} + (1 - a_k) ⊙ u_k`` with a data-dependent decay ``a_k`` (decays start
  spread over 1 to 1000 frames, as S4/Mamba initialise theirs), computed in closed form; the
  state is then projected to ``memory_grid²`` tokens.

The memory tokens are normalised and projected ONCE to keys and values shared by all blocks
(the ``memory`` argument, (B, 1+M, 2D)); after every DiT block, ``x += gate ·
CrossAttention(x, memory)`` with the block's own query and output projections. The output
projections start at zero and ``gate`` is 0 for samples without memory (the null condition,
``drop_memory`` or no valid memory frame), so the network starts exactly at the base
function and stays exactly the base on samples without memory. A learned null token is
always attendable so attention never sees an empty set. Keys and values are computed by
:meth:`MemoryDiT.encode_memory` outside :meth:`forward`, so a prediction encodes them once
(batch 1) for all its sampler steps, branches and candidates (``broadcast_kwargs``); in
training, sharing them keeps the cost of a long memory to one projection per step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nav_come.dit import DiT, DiTConfig, _mask
from nav_come.experts.common import FRAME_FEATURES

MEMORY_KINDS = ("tokens", "ssm")


@dataclass
class MemoryDiTConfig(DiTConfig):
    """DiTConfig plus: memory: "tokens" or "ssm" (see the module docstring);
    memory_grid: memory tokens per frame (or state tokens) = memory_grid²;
    ssm_dim: width of the recurrent state per state token (SSM only)."""

    memory: str = "tokens"
    memory_grid: int = 4
    ssm_dim: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.memory not in MEMORY_KINDS:
            raise ValueError(f"MemoryDiTConfig.memory must be one of {MEMORY_KINDS}, got {self.memory!r}")
        if self.memory_grid < 1 or self.latent_size % self.memory_grid:
            raise ValueError(
                f"MemoryDiTConfig.memory_grid must divide latent_size {self.latent_size}, got {self.memory_grid}"
            )
        if self.ssm_dim < 1:
            raise ValueError(f"MemoryDiTConfig.ssm_dim must be >= 1, got {self.ssm_dim}")


class MemoryAttention(nn.Module):
    """Cross-attention of x (B, N, D) to memory keys|values (B or 1, M, 2D) with a (B or 1, M) mask."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mem_q, self.mem_out = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        Bm, M, H = memory.shape[0], memory.shape[1], self.heads
        q = self.mem_q(self.norm(x)).view(B, N, H, D // H).transpose(1, 2)  # (B, H, N, Dh)
        kv = memory.to(q.dtype).view(Bm, M, 2, H, D // H).permute(2, 0, 3, 1, 4)  # (2, Bm, H, M, Dh)
        k, v = kv[0].expand(B, -1, -1, -1), kv[1].expand(B, -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :].expand(B, 1, 1, M))
        return self.mem_out(out.transpose(1, 2).reshape(B, N, D))  # (B, N, D)


def ssm_scan(
    u: torch.Tensor, gate: torch.Tensor, mask: torch.Tensor, state: torch.Tensor | None = None
) -> torch.Tensor:
    """Final state of ``h_k = a_k h_{k-1} + (1 - a_k) u_k``, ``a_k = sigmoid(gate_k)``, in closed form.

    u, gate: (B, L, S, D); mask: (B, L) frames that exist (others leave h unchanged);
    state: (B, S, D) before the first frame (zeros if None). Returns (B, S, D).
    """
    keep = mask[:, :, None, None].to(u.dtype)  # (B, L, 1, 1)
    log_a = -F.softplus(-gate) * keep  # log a_k, 0 for missing frames
    log_1ma = -F.softplus(gate)  # log (1 - a_k)
    after = log_a.flip(1).cumsum(1).flip(1) - log_a  # (B, L, S, D): sum_{j>k} log a_j
    h = (torch.exp(after + log_1ma) * keep * u).sum(1)  # (B, S, D)
    if state is not None:
        h = h + torch.exp(log_a.sum(1)) * state
    return h


class MemoryDiT(DiT):
    """The denoiser of the STM, Full and SSM experts; see the module docstring."""

    broadcast_kwargs = ("memory", "memory_mask")  # a batch-1 memory serves every sample

    def __init__(self, config: MemoryDiTConfig):
        super().__init__(config)
        D, g, c = config.width, config.memory_grid, config.latent_channels
        self.patch_dim = c * (config.latent_size // g) ** 2
        self.memory_pos = nn.Parameter(torch.zeros(1, 1, g * g, D))
        if config.memory == "tokens":
            self.memory_embed = nn.Linear(self.patch_dim, D)
            self.memory_frame = nn.Linear(FRAME_FEATURES, D)
        else:
            self.memory_ssm_in = nn.Linear(self.patch_dim + FRAME_FEATURES, config.ssm_dim)
            self.memory_gate = nn.Linear(self.patch_dim + FRAME_FEATURES, config.ssm_dim)
            self.memory_ssm_out = nn.Linear(config.ssm_dim, D)
        self.memory_null = nn.Parameter(torch.zeros(1, 1, D))
        self.memory_norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.memory_kv = nn.Linear(D, 2 * D)
        self.memory_attn = nn.ModuleList([MemoryAttention(D, config.heads) for _ in range(config.depth)])
        self._init_memory()

    def _init_memory(self) -> None:
        linears = [m for n, m in self.named_modules() if n.startswith("memory_") and isinstance(m, nn.Linear)]
        for m in linears:
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        for a in self.memory_attn:
            nn.init.zeros_(a.mem_out.weight)  # zero-init: the base function at start
            nn.init.zeros_(a.mem_out.bias)
        nn.init.normal_(self.memory_pos, std=0.02)
        nn.init.normal_(self.memory_null, std=0.02)
        if self.config.memory == "ssm":  # decays a = exp(-dt), dt log-uniform in [1e-3, 1]
            nn.init.normal_(self.memory_gate.weight, std=0.02)
            dt = torch.exp(torch.linspace(math.log(1e-3), 0.0, self.config.ssm_dim))
            with torch.no_grad():
                self.memory_gate.bias.copy_(torch.logit(torch.exp(-dt)))

    @classmethod
    def config_from_base(cls, base_config: DiTConfig, **changes) -> MemoryDiTConfig:
        return MemoryDiTConfig(**{**dataclasses.asdict(base_config), **changes})

    def patches(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, L, c, h, w) -> (B, L, g², c·p·p) with p = h / memory_grid."""
        B, L, c, h, w = frames.shape
        g = self.config.memory_grid
        p = h // g
        x = frames.reshape(B, L, c, g, p, g, p).permute(0, 1, 3, 5, 2, 4, 6)  # (B, L, g, g, c, p, p)
        return x.reshape(B, L, g * g, c * p * p)

    def frame_tokens(self, frames: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Tokens of memory frames (B, L, c, h, w) with features (B, L, F): (B, L, g², D)."""
        x = self.memory_embed(self.patches(frames)) + self.memory_pos  # (B, L, g², D)
        return x + self.memory_frame(features)[:, :, None]

    def ssm_state(
        self, frames: torch.Tensor, features: torch.Tensor, mask: torch.Tensor, state: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The recurrent state (B, g², ssm_dim) after ``frames`` (B, L, ...), continuing from ``state``."""
        patches = self.patches(frames)  # (B, L, g², P)
        inputs = torch.cat([patches, features[:, :, None].expand(-1, -1, patches.shape[2], -1)], -1)  # (B, L, g², P+F)
        return ssm_scan(self.memory_ssm_in(inputs), self.memory_gate(inputs), mask, state)

    def state_tokens(self, state: torch.Tensor) -> torch.Tensor:
        """(B, g², ssm_dim) recurrent state -> (B, g², D) memory tokens."""
        return self.memory_ssm_out(state) + self.memory_pos[:, 0]

    def memory_tokens(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prepend the null token, normalise and project to keys|values:
        (B, M, D), (B, M) -> the ``memory`` (B, 1+M, 2D) and ``memory_mask`` (B, 1+M) of :meth:`forward`."""
        B = tokens.shape[0]
        tokens = torch.cat([self.memory_null.expand(B, 1, -1).to(tokens.dtype), tokens], 1)
        mask = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=mask.device), mask.to(torch.bool)], 1)
        return self.memory_kv(self.memory_norm(tokens)), mask

    def encode_memory(
        self, frames: torch.Tensor, features: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory frames (B, L, c, h, w), features (B, L, F), mask (B, L) -> the ``memory``
        (B, 1+M, 2D) and ``memory_mask`` (B, 1+M) arguments of :meth:`forward`."""
        g2 = self.config.memory_grid**2
        if self.config.memory == "ssm":
            tokens = self.state_tokens(self.ssm_state(frames, features, mask))  # (B, g², D)
            return self.memory_tokens(tokens, mask.any(1, keepdim=True).expand(-1, g2))
        tokens = self.frame_tokens(frames, features).flatten(1, 2)  # (B, L*g², D)
        return self.memory_tokens(tokens, mask.repeat_interleave(g2, 1))

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
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        drop_memory: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """DiT.forward plus memory: (B or 1, 1+M, 2D) keys|values and (B or 1, 1+M) mask from
        :meth:`encode_memory`; drop_memory (B,) removes memory and ``extra_cond``. -> v (B, c, h, w)."""
        B, device = x_t.shape[0], x_t.device
        off = _mask(uncond, B, device) | _mask(drop_memory, B, device)  # (B,) samples without memory
        x, c = self.embed(x_t, t, context, action, shift, uncond, drop_action, extra_frames, None)
        if extra_cond is not None:  # added here so that samples without memory get none of it (bias included)
            c = c + self.extra_cond(extra_cond) * (~off)[:, None].to(c.dtype)
        rows = None
        if memory is not None:
            on = memory_mask[:, 1:].any(1).expand(B) & ~off  # (B,)
            rows = on.nonzero()[:, 0] if bool(on.any()) else None
        if rows is not None and len(rows) < B:  # cross-attention only where memory acts
            memory = memory if memory.shape[0] == 1 else memory[rows]
            memory_mask = memory_mask if memory_mask.shape[0] == 1 else memory_mask[rows]
        for block, attend in zip(self.blocks, self.memory_attn, strict=True):
            x = block(x, c)
            if rows is not None:
                x = x.index_add(0, rows, attend(x[rows], memory, memory_mask).to(x.dtype))
        return self.unpatchify(self.final(x, c))
