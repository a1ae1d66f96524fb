"""Cross-entropy method over action sequences: pure, batched, no I/O.

The default parameterisation is NWM's planning protocol (docs/design.md §3), exactly:
each candidate is ``(dx, dy, u)`` sampled in a normalised space, where
``(dx, dy)`` in [-1, 1] maps linearly to the action range [min, max] in spacing
units and becomes one constant step repeated ``horizon`` times; the per-step
yaw deltas are the step's heading ``atan2(dy, dx)`` at step 1 and 0 after it,
and ``u·π`` is added to the last step's yaw delta. A candidate's waypoints are
the cumulative sums of its per-step deltas (geometry.waypoints_from_actions).
The plan is the mean of the elites; the next iteration samples around it with
the elites' standard deviation.

The ``per_step`` parameterisation optimises one ``(dx, dy, dyaw)`` per step
(normalised the same way, yaw by π) as a richer option.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nav_come.core.data.config import DataConfig
from nav_come.core.geometry import waypoints_from_actions

PARAMETERISATIONS = ("nwm", "per_step")


@dataclass
class CEMConfig:
    """CEM settings; the defaults are NWM's RECON planning preset.

    n_candidates: samples per iteration. top_k: elites. iterations: CEM iterations.
    horizon: steps per candidate (8 = 2 s at 4 Hz). action_min/max: (dx, dy) range in
    spacing units that [-1, 1] maps to. init_mean/init_std: the first sampling
    distribution in the normalised space (dx, dy, u). parameterisation: "nwm" or "per_step".
    """

    n_candidates: int = 120
    top_k: int = 5
    iterations: int = 1
    horizon: int = 8
    action_min: tuple[float, float] = (-2.5, -4.0)
    action_max: tuple[float, float] = (5.0, 4.0)
    init_mean: tuple[float, float, float] = (-0.1, 0.0, 0.0)
    init_std: tuple[float, float, float] = (0.02, 0.1, 0.1)
    parameterisation: str = "nwm"
    min_std: float = 0.0

    def __post_init__(self) -> None:
        if self.parameterisation not in PARAMETERISATIONS:
            raise ValueError(f"parameterisation must be one of {PARAMETERISATIONS}, got {self.parameterisation!r}")
        if not 1 <= self.top_k <= self.n_candidates:
            raise ValueError(f"need 1 <= top_k <= n_candidates, got top_k={self.top_k}, n={self.n_candidates}")
        if self.iterations < 1 or self.horizon < 1:
            raise ValueError(f"iterations and horizon must be >= 1, got {self.iterations}, {self.horizon}")
        if any(hi <= lo for lo, hi in zip(self.action_min, self.action_max, strict=True)):
            raise ValueError(f"action_max must exceed action_min, got {self.action_min}, {self.action_max}")

    @classmethod
    def for_dataset(cls, data: DataConfig, **overrides) -> CEMConfig:
        """NWM's per-dataset action range and initial distribution."""
        return cls(
            action_min=tuple(data.action_min),
            action_max=tuple(data.action_max),
            init_mean=tuple(data.cem_init_mean),
            init_std=tuple(data.cem_init_std),
            **overrides,
        )

    @property
    def dim(self) -> tuple[int, ...]:
        """Shape of one candidate in the normalised space."""
        return (3,) if self.parameterisation == "nwm" else (self.horizon, 3)


def _scale(z: torch.Tensor, cfg: CEMConfig) -> torch.Tensor:
    """Normalised (..., 2) in [-1, 1] -> spacing units in [min, max]."""
    lo = torch.tensor(cfg.action_min, dtype=z.dtype, device=z.device)
    hi = torch.tensor(cfg.action_max, dtype=z.dtype, device=z.device)
    return (z + 1) / 2 * (hi - lo) + lo


def decode(z: torch.Tensor, cfg: CEMConfig) -> torch.Tensor:
    """Normalised candidates (N, *cfg.dim) -> per-step deltas (N, horizon, 3) in the start frame."""
    z = z.clamp(-1, 1)
    if cfg.parameterisation == "per_step":
        return torch.cat([_scale(z[..., :2], cfg), z[..., 2:] * math.pi], -1)  # (N, H, 3)
    step = _scale(z[:, :2], cfg)  # (N, 2)
    deltas = torch.zeros(z.shape[0], cfg.horizon, 3, dtype=z.dtype, device=z.device)
    deltas[:, :, :2] = step[:, None, :]
    deltas[:, 0, 2] = torch.atan2(step[:, 1], step[:, 0])
    deltas[:, -1, 2] += z[:, 2] * math.pi
    return deltas


@dataclass
class CEMResult:
    waypoints: torch.Tensor  # (horizon, 3) the plan's waypoints, spacing units, start frame
    deltas: torch.Tensor  # (horizon, 3) its per-step deltas
    mean: torch.Tensor  # (*dim) final sampling mean (warm start for the next plan)
    std: torch.Tensor  # (*dim)
    cost: float  # cost of the best candidate of the last iteration
    elite_costs: torch.Tensor  # (top_k,)


def initial(cfg: CEMConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The first sampling distribution: mean and std, each of shape ``cfg.dim``."""
    mean = torch.tensor(cfg.init_mean, dtype=torch.float32).expand(cfg.dim).clone()
    return mean, torch.tensor(cfg.init_std, dtype=torch.float32).expand(cfg.dim).clone()


def sample(mean: torch.Tensor, std: torch.Tensor, cfg: CEMConfig, generator: torch.Generator | None) -> torch.Tensor:
    """One iteration's candidates (N, *dim) in the normalised space."""
    noise = torch.randn((cfg.n_candidates, *cfg.dim), generator=generator)
    return (mean + std * noise).clamp(-1, 1)


def elites(z: torch.Tensor, costs: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``top_k`` cheapest candidates (top_k, *dim) and their costs (top_k,), cheapest first."""
    elite_costs, idx = torch.topk(costs, top_k, largest=False)
    return z[idx], elite_costs


def plan(
    cost_fn: Callable[[torch.Tensor], torch.Tensor],
    cfg: CEMConfig,
    generator: torch.Generator | None = None,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
) -> CEMResult:
    """Run CEM. ``cost_fn`` maps per-step deltas (N, horizon, 3) to costs (N,); lower is better.

    ``mean``/``std`` warm-start the search (e.g. the previous plan inside MPC); by
    default the sampling starts at cfg.init_mean/init_std.
    """
    init_mean, init_std = initial(cfg)
    mean = init_mean if mean is None else mean
    std = init_std if std is None else std
    for _ in range(cfg.iterations):
        z = sample(mean, std, cfg, generator)  # (N, *dim)
        costs = cost_fn(decode(z, cfg)).float().cpu()  # the search state lives on the CPU, whatever scored it
        best, elite_costs = elites(z, costs, cfg.top_k)  # (K, *dim), (K,)
        mean = best.mean(0)
        std = (best.std(0, unbiased=False) if cfg.top_k > 1 else std).clamp_min(cfg.min_std)
    deltas = decode(mean[None], cfg)[0]  # (H, 3)
    return CEMResult(waypoints_from_actions(deltas), deltas, mean, std, float(elite_costs[0]), elite_costs)
