"""The contrastive product of memory experts, itself a denoiser ``(x_t, t, cond) -> v``.

Every expert runs on the same noisy ``x_t``. In noise-prediction form (docs/design.md §1)::

    eps = sum_i [ alpha_i · eps_i(x_t | c_i) + (1 - alpha_i) · eps_i(x_t | ∅_i) ]

where ``∅_i`` is expert i's contrastive partner: its unconditional branch (context dropout),
or for the LTM expert the same network without its test-time adapter. ``contrastive=False``
is the plain product (alpha_i = 1, no partner); ``normalise=True`` divides every coefficient
by the number of experts so that they sum to 1 (a geometric mixture). alpha_i is a float or a
callable of the expert's condition returning a float or a (B,) tensor (relevance-dependent
alpha, e.g. from the retrieval distance: ``experts.spatial.distance_alpha``).

**Relevance weights** (``weights``): expert i's two terms are multiplied by ``w_i >= 0`` (a
float or a callable of its condition, like alpha), and with ``normalise`` divided by
``sum_j w_j`` instead of the number of experts, so an expert whose memory is relevant to this
prediction (a near retrieval, an adapter that fits the recent frames) gets a larger share of
the mixture, per sample. ``weights=None`` is every w_i = 1, exactly the mixture above. The
partner term is untouched, so alpha_i > 1 is still classifier-free guidance within the share.

**v-space.** Since ``eps = sigma x_t + alpha_t v`` is affine in v, the sum above is computed
exactly as ``v = sum_b c_b v_b + (S - 1) (sigma_t / alpha_t) x_t`` with ``S = sum_b c_b``
(K experts: S = K; normalised: S = 1). One expert with alpha = 1 is therefore that expert,
bit for bit, and a single expert with alpha > 1 is classifier-free guidance.

**x0 guard.** With S > 1 the composed x0 is ``sum_b c_b x0_b - (S - 1) x_t / alpha_t``: at
t = 1 (alpha_t = 0.0067) that is about ``-150 (S - 1) x_t``. Where S > 1 the composed x0 is
clamped to ``±x0_clip`` (latents have unit std, so 4 is a loose bound on real latents) and v is
recomputed from it, which keeps the sampler finite. ``normalise=True`` never needs it.

**Batching.** Each expert returns its two branches as :class:`Branch` (network, keyword
arguments, adapter on/off). :func:`run_branches` drops duplicates (same network, adapter
flag and argument objects: e.g. the LTM's un-adapted partner and the base expert's
conditional branch when both run on the base network with the same context), groups what
is left by network and runs each group as ONE forward over the concatenated batch, with a
per-sample LoRA mask. ``batched=False`` runs every (distinct) branch as its own forward,
``dedup=False`` evaluates duplicates again; both False is the reference the batched path is
tested against, and the "before" count of the planning benchmark. One forward of n·B
samples is not always faster than n forwards of B: on this 2-core CPU a DiT forward of 720
samples takes 1.3× the time of two of 360 (``python -m eval.bench model``), so ``max_batch`` caps
a batched forward (the planners set :data:`CPU_MAX_BATCH` on a CPU, none on a GPU; a branch
larger than the cap still runs whole). ``eval.bench plan --unbatched`` measures the rest.
``stats``/``last`` count the forwards and the samples they ran, and the branches asked for
(what a composition without batching or dedup runs as forwards).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from nav_come.core.geometry import se2_compose
from nav_come.core.precision import autocast
from nav_come.diffusion import COSINE, SAMPLERS, CosineSchedule, randn
from nav_come.lora import adapter_mask, has_lora
from nav_come.memory_bank import EpisodeMemory, Query

Alpha = float | Callable[[Any], "float | torch.Tensor"]
CPU_MAX_BATCH = 512  # samples per forward on a CPU: 120 candidates × 3 rollouts, not two of them


@dataclass(eq=False)
class Branch:
    """One evaluation an expert asks for: ``network(x_t, t, **kwargs)`` with its LoRA adapter on
    (``adapter``) or off. Tensors in kwargs have batch B or 1; scalars mean "same for all"."""

    network: nn.Module
    kwargs: dict[str, Any]
    adapter: bool = False

    def key(self) -> tuple:
        """Identity of the evaluation: equal keys give equal outputs (used to drop duplicates)."""
        args = tuple((k, id(v) if isinstance(v, torch.Tensor) else v) for k, v in sorted(self.kwargs.items()))
        return id(self.network), self.adapter, args


@dataclass
class ForwardStats:
    """calls: denoiser calls; forwards: network forward passes; samples: their total batch;
    branches: branch evaluations asked for (one forward each without batching or dedup)."""

    calls: int = 0
    forwards: int = 0
    samples: int = 0
    branches: int = 0

    def add(self, other: ForwardStats) -> None:
        self.calls, self.forwards = self.calls + other.calls, self.forwards + other.forwards
        self.samples, self.branches = self.samples + other.samples, self.branches + other.branches


class Expert(Protocol):
    """What the composition needs from an expert (see :mod:`nav_come.experts`)."""

    def condition(self, memory: EpisodeMemory, query: Query) -> Any: ...

    def branches(self, cond: Any) -> tuple[Branch, Branch]: ...


def _per_sample(value: Any, B: int, key: str, device: torch.device) -> torch.Tensor:
    """A keyword argument as a (B, ...) tensor: scalars are repeated, batch-1 tensors expanded."""
    if isinstance(value, torch.Tensor) and value.ndim > 0:
        if value.shape[0] not in (1, B):
            raise ValueError(f"argument {key!r} has batch {value.shape[0]}, expected 1 or {B}")
        return value.expand(B, *value.shape[1:])
    return torch.as_tensor(value, device=device).expand(B)


def _merge(kwargs: list[dict[str, Any]], B: int, shared: Sequence[str], device: torch.device) -> dict[str, Any]:
    """Concatenate the branches' keyword arguments along the batch (each branch has batch B).

    A key in ``shared`` (the network broadcasts a batch-1 value) whose value is the same
    batch-1 tensor object in every branch is passed once, unexpanded.
    """
    keys = kwargs[0].keys()
    if any(kw.keys() != keys for kw in kwargs):
        raise ValueError(f"branches of one network disagree on their arguments: {[sorted(kw) for kw in kwargs]}")
    merged = {}
    for key in keys:
        values = [kw[key] for kw in kwargs]
        if all(v is None for v in values):
            merged[key] = None
        elif any(v is None for v in values):
            raise ValueError(f"argument {key!r} is None in some branches of one network but not in others")
        elif key in shared and all(v is values[0] for v in values) and values[0].shape[0] == 1:
            merged[key] = values[0]
        else:
            merged[key] = torch.cat([_per_sample(v, B, key, device) for v in values])
    return merged


def run_branches(
    branches: Sequence[Branch],
    x_t: torch.Tensor,
    t: torch.Tensor | float,
    bf16: bool = False,
    stats: ForwardStats | None = None,
    batched: bool = True,
    dedup: bool = True,
    max_batch: int | None = None,
) -> list[torch.Tensor]:
    """v (B, ...) float32 of every branch, with one forward per distinct network.

    x_t: (B, ...); t: (B,) or scalar. Duplicate branches are evaluated once (``dedup``), and the
    branches of one network run as one forward (``batched``; False: one forward per branch) of
    at most ``max_batch`` samples where that allows more than one branch (None: no limit).
    """
    B = x_t.shape[0]
    t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device).expand(B)
    first: dict[tuple, int] = {}  # branch key -> first branch with it
    source = [first.setdefault(b.key(), i) if dedup else i for i, b in enumerate(branches)]  # (n,) who computes i
    groups: dict[object, list[int]] = {}
    for i in sorted(set(source)):
        groups.setdefault(id(branches[i].network) if batched else i, []).append(i)
    per = max(1, max_batch // B) if max_batch else len(branches)  # branches per forward
    out: dict[int, torch.Tensor] = {}
    for members in (g[k : k + per] for g in groups.values() for k in range(0, len(g), per)):
        net, n = branches[members[0]].network, len(members)
        kwargs = _merge([branches[i].kwargs for i in members], B, getattr(net, "broadcast_kwargs", ()), x_t.device)
        adapter = torch.tensor([branches[i].adapter for i in members], device=x_t.device).repeat_interleave(B)
        if adapter.any() and not has_lora(net):
            raise ValueError(f"a branch asks for the adapter of a {type(net).__name__} that has no LoRA")
        lora = adapter_mask(net, adapter) if has_lora(net) else contextlib.nullcontext()
        with lora, autocast(x_t.device, bf16):
            xs, ts = (x_t, t) if n == 1 else (x_t.repeat(n, *([1] * (x_t.ndim - 1))), t.repeat(n))
            v = net(xs, ts, **kwargs).float()  # (n*B, ...)
        for i, chunk in zip(members, v.split(B), strict=True):
            out[i] = chunk
        if stats is not None:
            stats.forwards, stats.samples = stats.forwards + 1, stats.samples + n * B
    if stats is not None:
        stats.calls, stats.branches = stats.calls + 1, stats.branches + len(branches)
    return [out[s] for s in source]


def _column(c: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A coefficient (scalar or (B,)) shaped to broadcast over ``like`` (B, ...)."""
    return torch.as_tensor(c, dtype=torch.float32, device=like.device).reshape(-1, *([1] * (like.ndim - 1)))


@dataclass
class ComposedDenoiser:
    """A denoiser ``(x_t, t, cond) -> v`` over several experts; see the module docstring.

    experts: {name: expert} (or a sequence of experts with a ``name``); alphas: {name: alpha}
    (missing names get 1.0) or one alpha for all; weights: {name: relevance weight} (missing
    names get 1.0) or None. ``cond`` is ``{name: that expert's condition}``,
    as :meth:`condition` builds it. ``batched``, ``dedup``: see :func:`run_branches`.
    """

    experts: Mapping[str, Expert] | Sequence[Expert]
    alphas: Mapping[str, Alpha] | float | None = None
    weights: Mapping[str, Alpha] | None = None
    contrastive: bool = True
    normalise: bool = False
    x0_clip: float | None = 4.0
    schedule: CosineSchedule = COSINE
    bf16: bool | None = None  # None: where the device runs bf16 natively
    batched: bool = True
    dedup: bool = True
    max_batch: int | None = None
    stats: ForwardStats = field(default_factory=ForwardStats)
    last: ForwardStats = field(default_factory=ForwardStats)

    def __post_init__(self) -> None:
        if not isinstance(self.experts, Mapping):
            self.experts = {e.name: e for e in self.experts}
        self.experts = dict(self.experts)
        if not self.experts:
            raise ValueError("a composition needs at least one expert")
        if not isinstance(self.alphas, Mapping):
            self.alphas = dict.fromkeys(self.experts, 1.0 if self.alphas is None else self.alphas)
        unknown = set(self.alphas) - set(self.experts)
        if unknown:
            raise ValueError(
                f"alphas for experts not in the composition: {sorted(unknown)} (have {list(self.experts)})"
            )
        self.alphas = {name: self.alphas.get(name, 1.0) for name in self.experts}
        unknown = set(self.weights or {}) - set(self.experts)
        if unknown:
            raise ValueError(
                f"weights for experts not in the composition: {sorted(unknown)} (have {list(self.experts)})"
            )
        if self.x0_clip is not None and not self.x0_clip > 0:
            raise ValueError(f"x0_clip must be > 0 or None, got {self.x0_clip}")

    @property
    def context(self) -> int:
        return next(iter(self.experts.values())).context

    def prepare(self, memory: EpisodeMemory) -> dict[str, Any]:
        """Let every expert take in the episode before predicting (the LTM memorises it)."""
        return {name: e.prepare(memory) for name, e in self.experts.items() if hasattr(e, "prepare")}

    def condition(self, memory: EpisodeMemory, query: Query) -> dict[str, Any]:
        """Every expert's condition for ``query`` in ``memory``."""
        return {name: e.condition(memory, query) for name, e in self.experts.items()}

    def terms(self, cond: Mapping[str, Any]) -> list[tuple[Branch, float | torch.Tensor]]:
        """(branch, coefficient) pairs of the sum; coefficients are floats or (B,) tensors."""
        terms, shares = [], []
        for name, expert in self.experts.items():
            conditional, partner = expert.branches(cond[name])
            alpha = self.alphas[name]
            alpha = alpha(cond[name]) if callable(alpha) else float(alpha)
            own = [(conditional, 1.0)] if not self.contrastive else [(conditional, alpha)]
            if self.contrastive and not (isinstance(alpha, float) and alpha == 1.0):  # a zero coefficient: no forward
                own.append((partner, 1.0 - alpha))
            if self.weights is not None:
                w = self.weights.get(name, 1.0)
                w = w(cond[name]) if callable(w) else float(w)
                own = [(b, c * w) for b, c in own]
                shares.append(w)
            terms += own
        if self.normalise:
            total = len(self.experts) if self.weights is None else sum(shares)
            terms = [(b, c / total) for b, c in terms]
        return terms

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Mapping[str, Any]) -> torch.Tensor:
        """Composed v (B, ...) float32."""
        terms = self.terms(cond)
        self.last = ForwardStats()
        vs = run_branches(
            [b for b, _ in terms], x_t, t, self.bf16, self.last, self.batched, self.dedup, self.max_batch
        )
        self.stats.add(self.last)
        x = x_t.float()
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(x.shape[0])
        v = sum(_column(c, x) * v_b for (_, c), v_b in zip(terms, vs, strict=True))  # (B, ...)
        total = sum(_column(c, x) for _, c in terms)  # S: (1 or B, 1, ...)
        if not bool((total == 1).all()):
            alpha_t, sigma_t = (_column(a, x) for a in self.schedule.alpha_sigma(t))
            v = v + (total - 1) * (sigma_t / alpha_t) * x
            if self.x0_clip is not None:
                x0 = self.schedule.x0_from_v(x, v, t).clamp(-self.x0_clip, self.x0_clip)
                v = torch.where(total > 1, self.schedule.v_from_x0(x, x0, t), v)
        return v


@torch.no_grad()
def rollout(
    denoiser: Any,
    memory: EpisodeMemory | None,
    step_actions: torch.Tensor,
    steps: int,
    generator: torch.Generator | None = None,
    sampler: str = "ddim",
    context: torch.Tensor | None = None,
) -> torch.Tensor:
    """Autoregressive latent rollout from the newest real frames of ``memory``: the one
    imagination loop of the project (``WorldModel.rollout`` and every planner run it).

    denoiser: an expert or a :class:`ComposedDenoiser` (anything with ``context``,
    ``condition(memory, query)`` and the denoiser call). step_actions: (B, K, 3) one-step
    motions (pose k+1 in the frame of pose k, spacing units). Each prediction replaces the
    oldest context latent; the memory keeps the real past. ``context`` (B or 1, C, c, h, w):
    latents to start from instead of the memory's newest frames (one context per sample);
    ``memory`` None: no episode, for a denoiser that reads none (the base expert), the start
    pose is the origin. Returns latents (B, K, c, h, w).
    """
    B, K = step_actions.shape[:2]
    ctx = memory.context(denoiser.context) if context is None else context
    ctx = ctx.expand(B, -1, -1, -1, -1)  # (B, C, c, h, w)
    pose = memory.poses[memory.now].expand(B, 3) if memory is not None else torch.zeros(B, 3, dtype=torch.float64)
    spacing = memory.spacing if memory is not None else 1.0
    schedule = getattr(denoiser, "schedule", COSINE)
    out = []
    for k in range(K):
        query = Query(ctx, step_actions[:, k].float(), 1, pose, lag=k)
        x_T = randn((B, *ctx.shape[2:]), generator, ctx.device)
        z = SAMPLERS[sampler](denoiser, x_T, steps, denoiser.condition(memory, query), generator, schedule=schedule)
        out.append(z)
        ctx = torch.cat([ctx[:, 1:], z[:, None]], 1)
        metres = torch.cat([step_actions[:, k, :2].double() * spacing, step_actions[:, k, 2:].double()], 1).cpu()
        pose = se2_compose(pose, metres)
    return torch.stack(out, 1)
