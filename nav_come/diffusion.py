"""Noise schedule, v-prediction, training loss and samplers behind one denoiser contract.

Time is continuous, ``t`` in [0, 1] (1 = noise). The schedule is the cosine schedule
written as an angle: ``alpha = cos(phi(t))``, ``sigma = sin(phi(t))`` with ``phi``
linear in ``t`` between the angles of log-SNR ``logsnr_max`` (t=0) and ``logsnr_min``
(t=1). The default ±10 keeps ``alpha(1) ≈ 0.0067``, the terminal value of DDPM's
1000-step linear schedule, so conversions to ε never divide by zero (the composition
of experts sums ε predictions).

The network predicts ``v = alpha * eps - sigma * x0`` (Salimans & Ho), which samples
well in few steps. Since ``alpha**2 + sigma**2 = 1``: ``x0 = alpha x_t - sigma v`` and
``eps = sigma x_t + alpha v``.

**Denoiser contract** (k-diffusion/DiT style): a denoiser is any callable
``denoiser(x_t, t, cond) -> v`` with ``x_t`` (B, ...), ``t`` (B,) float and ``cond``
whatever that denoiser needs. Every sampler has the signature
``sampler(denoiser, x_T, steps, cond, generator=None)``; a composition of experts is
just another denoiser. Samplers run in float32 and are deterministic under a generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def randn(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str, dtype=torch.float32
) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, then moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """Uniform [0, 1) noise drawn on the generator's device, then moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _bcast(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) matching x's rank."""
    return a.view(-1, *([1] * (x.ndim - 1)))


@dataclass(frozen=True)
class CosineSchedule:
    """Truncated cosine schedule in continuous time; see the module docstring."""

    logsnr_min: float = -10.0
    logsnr_max: float = 10.0

    def __post_init__(self) -> None:
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError(f"logsnr_min must be < logsnr_max, got {self.logsnr_min}, {self.logsnr_max}")

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Signal and noise scales at t: (B,) -> ((B,), (B,)), alpha**2 + sigma**2 = 1."""
        phi_min = math.atan(math.exp(-0.5 * self.logsnr_max))
        phi_max = math.atan(math.exp(-0.5 * self.logsnr_min))
        phi = phi_min + t.float() * (phi_max - phi_min)
        return torch.cos(phi), torch.sin(phi)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.alpha_sigma(t)
        return (alpha / sigma) ** 2

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.alpha_sigma(t)
        return _bcast(alpha, x0) * x0 + _bcast(sigma, x0) * eps

    def v_target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.alpha_sigma(t)
        return _bcast(alpha, x0) * eps - _bcast(sigma, x0) * x0

    def x0_from_v(self, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.alpha_sigma(t)
        return _bcast(alpha, x_t) * x_t - _bcast(sigma, x_t) * v

    def eps_from_v(self, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.alpha_sigma(t)
        return _bcast(sigma, x_t) * x_t + _bcast(alpha, x_t) * v

    def v_from_eps(self, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.alpha_sigma(t)
        return (eps - _bcast(sigma, x_t) * x_t) / _bcast(alpha, x_t)

    def v_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.alpha_sigma(t)
        return (_bcast(alpha, x_t) * x_t - x0) / _bcast(sigma, x_t)


COSINE = CosineSchedule()


def diffusion_loss(
    denoiser: Denoiser,
    x0: torch.Tensor,
    cond: Any,
    generator: torch.Generator | None = None,
    *,
    schedule: CosineSchedule = COSINE,
    min_snr_gamma: float | None = None,
) -> torch.Tensor:
    """Mean squared error on v at t ~ U(0, 1) (scalar).

    min_snr_gamma: Min-SNR-γ weighting (Hang et al.), ``min(SNR, γ) / (SNR + 1)`` per
    sample for v-prediction; None weighs every t equally.
    """
    B = x0.shape[0]
    t = rand((B,), generator, x0.device)  # (B,)
    eps = randn(tuple(x0.shape), generator, x0.device)  # (B, ...)
    x_t = schedule.add_noise(x0, eps, t)
    v = denoiser(x_t, t, cond).float()
    per_sample = (v - schedule.v_target(x0, eps, t)).pow(2).flatten(1).mean(1)  # (B,)
    if min_snr_gamma is not None:
        snr = schedule.snr(t)
        per_sample = per_sample * snr.clamp(max=min_snr_gamma) / (snr + 1)
    return per_sample.mean()


def ddim_sample(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    steps: int,
    cond: Any,
    generator: torch.Generator | None = None,
    *,
    eta: float = 0.0,
    schedule: CosineSchedule = COSINE,
) -> torch.Tensor:
    """DDIM from t=1 to t=0 in ``steps`` uniform steps; returns x0 (B, ...).

    eta=0 is deterministic DDIM; eta=1 is ancestral DDPM sampling. The last step returns
    the denoiser's x0 estimate, so ``steps=1`` is a single forward pass.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    B, device = x_T.shape[0], x_T.device
    times = torch.linspace(1.0, 0.0, steps + 1, device=device)
    x = x_T.float()
    for i in range(steps):
        t = times[i].expand(B)  # (B,)
        v = denoiser(x, t, cond).float()
        x0, eps = schedule.x0_from_v(x, v, t), schedule.eps_from_v(x, v, t)
        if i == steps - 1:
            return x0
        alpha_t, sigma_t = schedule.alpha_sigma(times[i])
        alpha_s, sigma_s = schedule.alpha_sigma(times[i + 1])
        c = eta * (sigma_s / sigma_t) * (1 - (alpha_t / alpha_s) ** 2).clamp(min=0).sqrt()  # DDIM's sigma_i
        x = alpha_s * x0 + (sigma_s**2 - c**2).clamp(min=0).sqrt() * eps
        if eta > 0:
            x = x + c * randn(tuple(x.shape), generator, device)
    return x


def ddpm_sample(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    steps: int,
    cond: Any,
    generator: torch.Generator | None = None,
    *,
    schedule: CosineSchedule = COSINE,
) -> torch.Tensor:
    """Ancestral DDPM sampling (DDIM with eta=1) in ``steps`` uniform steps."""
    return ddim_sample(denoiser, x_T, steps, cond, generator, eta=1.0, schedule=schedule)


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"ddim": ddim_sample, "ddpm": ddpm_sample}
