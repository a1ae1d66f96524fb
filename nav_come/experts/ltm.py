"""The long-term memory expert (LTM): LoRA on the frozen base, fine-tuned at test time.

The adapter (rank 16 by default on ``qkv``, ``proj``, ``fc1``, ``fc2``; B starts at zero, so
the expert starts as the base) memorises the episode's **long-term past**: frames older
than the STM's reach (``exclude_recent`` = context + STM window = 32 frames by default). It
trains with the base's own objective (v-MSE, no condition dropout) on windows drawn from
that past: 4 context frames, a target 1..max_shift frames later and its relative-pose action,
about ``steps_per_frame`` = 2 AdamW steps per stored frame at lr 1e-4 (docs/design.md §1).

- :meth:`LTMExpert.memorize` starts over on a history; :meth:`LTMExpert.update` (also
  :meth:`prepare`) continues as frames arrive, training only for the frames that became
  long-term since the last call, half of each batch on them and half replayed from the rest.
  Both return a :class:`MemorizeReport` with the time per stored frame.
- :meth:`LTMExpert.reset` puts the adapter back to zero between episodes.
- After each memorisation the expert measures how well the adapter fits the **recent** frames
  it did not train on (:meth:`LTMExpert.fit_gain`: the relative drop of the diffusion loss
  on windows ending in the last ``exclude_recent`` frames, adapter on against off, same draws).
  A robot back in a place it memorised gets a large gain; the condition carries it as
  ``info["fit"]``, and :func:`fit_weight` turns it into a relevance weight for the composition.
- Its contrastive partner is the same network with the adapter off, same context.

:meth:`LTMExpert.attach` puts the adapter on the base expert's own network, in place; the
base expert's branches ask for the adapter off, so the base, the LTM and its partner (which
coincides with the base's conditional branch) run in ONE batched forward. Anything else that
calls that network directly sees the adapter (peft's semantics): use ``adapter_disabled``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from nav_come.compose import Branch
from nav_come.core.precision import autocast
from nav_come.dit import DiT, DiTConfig, dit_training_loss
from nav_come.experts.common import Condition, Expert, dit_config_of, query_kwargs
from nav_come.latents import LatentSet, LatentWindowDataset
from nav_come.lora import LoRAConfig, adapter_mask, inject_lora, lora_parameters, reset_lora
from nav_come.memory_bank import EpisodeMemory, Query


@dataclass
class LTMConfig:
    """net: the base network's config; lora: adapter rank, scale and target layers;
    steps_per_frame: AdamW steps per newly stored frame; lr, weight_decay: AdamW;
    batch_size: windows per step; exclude_recent: the newest frames left to the context and
    the STM (not memorised); bf16: autocast while memorising (None: where native); seed: the draws of the windows."""

    net: DiTConfig | dict
    lora: LoRAConfig | dict = field(default_factory=LoRAConfig)
    steps_per_frame: float = 2.0
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 8
    exclude_recent: int = 32
    bf16: bool | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.net = dit_config_of(self.net)
        if isinstance(self.lora, dict):
            self.lora = LoRAConfig(**self.lora)
        if not (self.steps_per_frame > 0 and self.lr > 0 and self.weight_decay >= 0 and self.batch_size >= 1):
            raise ValueError(
                f"LTMConfig needs steps_per_frame > 0, lr > 0, weight_decay >= 0, batch_size >= 1; got "
                f"{self.steps_per_frame}, {self.lr}, {self.weight_decay}, {self.batch_size}"
            )
        if self.exclude_recent < self.net.context:
            raise ValueError(f"exclude_recent must be >= the context ({self.net.context}), got {self.exclude_recent}")


@dataclass
class MemorizeReport:
    """frames: frames newly memorised; steps: optimiser steps; seconds: wall time;
    loss_first/loss_last: the training loss of the first and last step (None without steps)."""

    frames: int = 0
    steps: int = 0
    seconds: float = 0.0
    loss_first: float | None = None
    loss_last: float | None = None
    fit_gain: float = 0.0

    @property
    def s_per_frame(self) -> float | None:
        return self.seconds / self.frames if self.frames else None


@contextlib.contextmanager
def _only_adapter_trains(network: torch.nn.Module) -> Iterator[None]:
    """Base weights frozen (no gradients computed for them) inside the block."""
    adapter = {id(p) for p in lora_parameters(network)}
    before = [(p, p.requires_grad) for p in network.parameters()]
    for p, _ in before:
        p.requires_grad_(id(p) in adapter)
    try:
        yield
    finally:
        for p, flag in before:
            p.requires_grad_(flag)


class LTMExpert(Expert):
    """Test-time LoRA memory; see the module docstring."""

    kind = "ltm"
    config_cls: ClassVar[type] = LTMConfig

    def __init__(self, config: LTMConfig, network: DiT | None = None):
        super().__init__()
        self.config = config
        self.network = network if network is not None else DiT(config.net)
        inject_lora(self.network, config.lora)
        self.reset()

    @classmethod
    def attach(cls, network: DiT, **settings) -> LTMExpert:
        """An LTM whose adapter lives on ``network`` (e.g. the base expert's), in place."""
        return cls(LTMConfig(net=network.config, **settings), network)

    def reset(self) -> None:
        """Adapter back to zero (the frozen network), optimiser and memorised range cleared."""
        self.generator = torch.Generator().manual_seed(self.config.seed)
        reset_lora(self.network, self.generator)
        self.optimizer: torch.optim.Optimizer | None = None
        self.memorised = -1  # newest frame memorised so far
        self.fit = 0.0  # fit_gain after the last memorisation

    def memorize(self, memory: EpisodeMemory) -> MemorizeReport:
        """Start over and memorise the long-term past of ``memory``."""
        self.reset()
        return self.update(memory)

    def prepare(self, memory: EpisodeMemory) -> MemorizeReport:
        return self.update(memory)

    def _windows(self, memory: EpisodeMemory, limit: int) -> LatentWindowDataset:
        """Training windows whose frames are all <= limit."""
        data = LatentSet(memory.latents[: limit + 1], memory.poses[: limit + 1], torch.tensor([0, limit + 1]), ["ep"])
        return LatentWindowDataset(data, self.context, self.network.config.max_shift, memory.spacing)

    def update(self, memory: EpisodeMemory) -> MemorizeReport:
        """Memorise the frames that became long-term since the last call (see the module docstring)."""
        cfg, C = self.config, self.context
        limit = memory.now - cfg.exclude_recent  # newest frame to memorise
        first_new = max(self.memorised + 1, C)  # frame 0..C-1 are never a target
        if limit < first_new:
            return MemorizeReport()
        start = time.perf_counter()
        windows = self._windows(memory, limit)
        fresh = (windows.index + 1 >= first_new).nonzero()[:, 0]  # windows whose next frame is new
        n_frames = limit - first_new + 1
        steps = math.ceil(cfg.steps_per_frame * n_frames)
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW(lora_parameters(self.network), lr=cfg.lr, weight_decay=cfg.weight_decay)
        device = next(self.network.parameters()).device
        losses = []
        with torch.enable_grad(), _only_adapter_trains(self.network):
            for _ in range(steps):
                losses.append(self._step(windows, fresh, device))
        self.memorised = limit
        self.fit = self.fit_gain(memory)
        return MemorizeReport(n_frames, steps, time.perf_counter() - start, losses[0], losses[-1], self.fit)

    def _step(self, windows: LatentWindowDataset, fresh: torch.Tensor, device: torch.device) -> float:
        """One AdamW step on a batch: half windows ending on new frames, half from the whole past."""
        g, B = self.generator, self.config.batch_size
        n_fresh = B // 2
        pick = torch.randint(len(fresh), (n_fresh,), generator=g)
        items = torch.cat([fresh[pick], torch.randint(len(windows), (B - n_fresh,), generator=g)])
        shift = 1 + (torch.rand(B, generator=g) * windows.ahead[items]).long()
        batch = {k: v.to(device) for k, v in windows.gather(items, shift).items()}
        with adapter_mask(self.network, torch.ones(B, dtype=torch.bool, device=device)):
            with autocast(device, self.config.bf16):
                loss = dit_training_loss(self.network, batch, g, dropout=False)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    @torch.no_grad()
    def loss_on(self, memory: EpisodeMemory, limit: int | None = None, draws: int = 4, seed: int = 0) -> float:
        """Mean diffusion loss of the adapted network on windows of frames <= limit (fixed draws)."""
        limit = memory.now if limit is None else limit
        windows, device = self._windows(memory, limit), next(self.network.parameters()).device
        g = torch.Generator().manual_seed(seed)
        losses = []
        for _ in range(draws):
            batch = {k: v.to(device) for k, v in windows.sample_batch(self.config.batch_size, g).items()}
            with adapter_mask(self.network, torch.ones(len(batch["target"]), dtype=torch.bool, device=device)):
                losses.append(dit_training_loss(self.network, batch, g, dropout=False).item())
        return sum(losses) / len(losses)

    @torch.no_grad()
    def fit_gain(self, memory: EpisodeMemory, draws: int = 4) -> float:
        """Relative drop of the diffusion loss, adapter on against off, on windows whose newest
        context frame is among the last ``exclude_recent`` frames of ``memory`` (the frames the
        adapter never trained on); the same windows and noise for both, from a generator of
        its own (the memorisation's draws are untouched). 0 before anything was memorised."""
        cfg = self.config
        if self.memorised < 0:
            return 0.0
        windows = self._windows(memory, memory.now)
        recent = (windows.index > memory.now - cfg.exclude_recent).nonzero()[:, 0]
        if not len(recent):
            return 0.0
        g, device = torch.Generator().manual_seed(cfg.seed), next(self.network.parameters()).device
        loss = {True: 0.0, False: 0.0}
        for _ in range(draws):
            items = recent[torch.randint(len(recent), (cfg.batch_size,), generator=g)]
            shift = 1 + (torch.rand(cfg.batch_size, generator=g) * windows.ahead[items]).long()
            batch = {k: v.to(device) for k, v in windows.gather(items, shift).items()}
            state = g.get_state()
            for on in (True, False):
                g.set_state(state)  # the same t and noise with and without the adapter
                mask = torch.full((cfg.batch_size,), on, dtype=torch.bool, device=device)
                with adapter_mask(self.network, mask), autocast(device, cfg.bf16):
                    loss[on] += dit_training_loss(self.network, batch, g, dropout=False).item()
        return (loss[False] - loss[True]) / loss[False] if loss[False] > 0 else 0.0

    def condition(self, memory: EpisodeMemory, query: Query) -> Condition:
        return Condition(query_kwargs(query), {"fit": self.fit})

    def branches(self, cond: Condition) -> tuple[Branch, Branch]:
        kw = {**cond.kwargs, "uncond": False}
        return Branch(self.network, kw, adapter=True), Branch(self.network, dict(kw), adapter=False)


def fit_weight(high: float, low: float = 1.0, full: float = 0.1) -> Callable[[Condition], float]:
    """Relevance weight of the LTM from its adapter's fit on the recent frames (``info["fit"]``):
    ``low`` at no gain (or a loss), ``high`` from a relative gain of ``full`` on, linear between."""
    if not full > 0:
        raise ValueError(f"full must be > 0, got {full}")

    def weight(cond: Condition) -> float:
        return low + (high - low) * min(max(cond.info["fit"] / full, 0.0), 1.0)

    return weight
