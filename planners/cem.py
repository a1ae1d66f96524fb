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

:func:`seeded_plan` is the proposal-seeded variant: the first population mixes a policy's
proposals with draws from the same prior, later iterations refine the elites per step.
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


# ---------------------------------------------------------------------- proposal-seeded CEM


@dataclass
class SeededConfig:
    """Proposal-seeded CEM: the first population is a policy's proposals plus ``n_prior`` draws
    from the NWM prior (``prior``); each later iteration samples ``n_refine`` candidates per step
    ``(dx, dy, dyaw)`` around the elites (their mean and std over each step, std at least
    ``min_std``) and keeps the best so far. The plan is the cheapest candidate seen ("best") or
    the mean of the last elites ("mean"). One iteration with ``n_prior`` 0 and "best" ranks the
    proposals: NWM's use of a world model as a judge of a policy's samples.

    prior: the NWM-protocol CEM whose initial distribution the prior draws come from;
    top_k: elites; iterations: 1 ranks, more refine; min_std: (dx, dy, dyaw) floor of the
    refinement std, spacing units and radians.
    """

    prior: CEMConfig
    n_prior: int = 32
    n_refine: int = 32
    top_k: int = 8
    iterations: int = 2
    min_std: tuple[float, float, float] = (0.05, 0.05, 0.05)
    select: str = "best"

    def __post_init__(self) -> None:
        if self.select not in ("best", "mean"):
            raise ValueError(f"select must be 'best' or 'mean', got {self.select!r}")
        if self.n_prior < 0 or self.n_refine < 1 or self.top_k < 1 or self.iterations < 1:
            raise ValueError(f"need n_prior >= 0, n_refine >= 1, top_k >= 1, iterations >= 1; got {self.n_prior}, "
                             f"{self.n_refine}, {self.top_k}, {self.iterations}")  # fmt: skip
        if any(s < 0 for s in self.min_std):
            raise ValueError(f"min_std must be >= 0, got {self.min_std}")


def clamp_deltas(deltas: torch.Tensor, cfg: CEMConfig) -> torch.Tensor:
    """Per-step deltas (..., H, 3) with (dx, dy) inside the action range and dyaw wrapped to [-π, π)."""
    lo = torch.tensor(cfg.action_min, dtype=deltas.dtype, device=deltas.device)
    hi = torch.tensor(cfg.action_max, dtype=deltas.dtype, device=deltas.device)
    yaw = deltas[..., 2:]
    yaw = torch.where((yaw >= -math.pi) & (yaw < math.pi), yaw, torch.remainder(yaw + math.pi, 2 * math.pi) - math.pi)
    return torch.cat([torch.maximum(torch.minimum(deltas[..., :2], hi), lo), yaw], -1)  # in range: unchanged


def seeded_plan(
    cost_fn: Callable[[torch.Tensor], torch.Tensor],
    proposals: torch.Tensor,
    cfg: SeededConfig,
    generator: torch.Generator | None = None,
) -> CEMResult:
    """Proposal-seeded CEM (see :class:`SeededConfig`). proposals: per-step deltas (P, H, 3) in the
    start frame, spacing units (P may be 0 when ``n_prior`` > 0). ``mean``/``std`` of the result
    are the last elites' per-step mean and std (H, 3)."""
    prior = cfg.prior
    if proposals.ndim != 3 or proposals.shape[1:] != (prior.horizon, 3):
        raise ValueError(f"proposals must be (P, {prior.horizon}, 3) per-step deltas, got {tuple(proposals.shape)}")
    if len(proposals) + cfg.n_prior < 1:
        raise ValueError("seeded CEM needs proposals or prior draws (n_prior > 0)")
    mean, std = initial(prior)
    drawn = decode((mean + std * torch.randn((cfg.n_prior, *prior.dim), generator=generator)).clamp(-1, 1), prior)
    deltas = clamp_deltas(torch.cat([proposals.float().cpu(), drawn]), prior)  # (P + n_prior, H, 3)
    floor = torch.tensor(cfg.min_std)

    def score(candidates: torch.Tensor):
        costs = cost_fn(candidates).float().cpu()  # (N,) the search state lives on the CPU
        elite, elite_costs = elites(candidates, costs, min(cfg.top_k, len(costs)))  # (k, H, 3), (k,)
        spread = elite.std(0, unbiased=False) if len(elite) > 1 else torch.zeros_like(elite[0])
        return elite, elite_costs, elite.mean(0), spread.maximum(floor)

    elite, elite_costs, e_mean, e_std = score(deltas)
    best_d, best_c = elite[0].clone(), float(elite_costs[0])
    for _ in range(cfg.iterations - 1):  # refine per step around the elites, keeping the best so far
        noise = torch.randn((cfg.n_refine, *e_mean.shape), generator=generator)
        candidates = clamp_deltas(torch.cat([best_d[None], e_mean + e_std * noise]), prior)  # (1 + n_refine, H, 3)
        elite, elite_costs, e_mean, e_std = score(candidates)
        if float(elite_costs[0]) < best_c:
            best_d, best_c = elite[0].clone(), float(elite_costs[0])
    plan_d = best_d if cfg.select == "best" else e_mean
    return CEMResult(waypoints_from_actions(plan_d), plan_d, e_mean, e_std, best_c, elite_costs)
