"""Low-rank adapters (LoRA) on the linear layers of a network, switchable per sample.

Written here rather than taken from peft: peft would pull transformers and accelerate for a
few ``nn.Linear`` wrappers, and it cannot switch the adapter on for some samples of a batch
and off for the others, which is how the LTM expert and its un-adapted contrastive partner
share one batched forward.

:func:`inject_lora` replaces every ``nn.Linear`` whose attribute name is in
``config.targets`` (DiT: ``qkv``, ``proj``, ``fc1``, ``fc2``) by a :class:`LoRALinear`
that keeps the same ``weight`` and ``bias`` parameters (the state-dict names of the base
weights do not change) and adds ``lora_A`` (r, in) and ``lora_B`` (out, r):

    y = W x + b + (alpha / r) · B A x

``lora_B`` starts at zero, so the adapted network starts exactly at the frozen one.
The adapter is on by default (peft's semantics); :func:`adapter_disabled` turns it off and
:func:`adapter_mask` turns it on for the samples where a (B,) bool mask is True.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

DIT_TARGETS = ("qkv", "proj", "fc1", "fc2")  # DiT's attention and MLP projections


@dataclass
class LoRAConfig:
    """rank: r of the adapters; alpha: scale numerator (the update is ``alpha / rank · B A``);
    targets: attribute names of the ``nn.Linear`` layers to adapt."""

    rank: int = 16
    alpha: float = 16.0
    targets: tuple[str, ...] = DIT_TARGETS

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        if self.rank < 1 or not self.alpha > 0 or not self.targets:
            raise ValueError(
                f"LoRA needs rank >= 1, alpha > 0 and targets; got {self.rank}, {self.alpha}, {self.targets}"
            )


class LoRALinear(nn.Linear):
    """``nn.Linear`` plus a low-rank update, on for all samples, none, or a (B,) mask of them."""

    def __init__(self, linear: nn.Linear, rank: int, alpha: float):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        self.weight, self.bias = linear.weight, linear.bias  # the frozen layer's own parameters
        w = linear.weight
        self.lora_A = nn.Parameter(torch.empty(rank, linear.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(linear.out_features, rank, device=w.device, dtype=w.dtype))
        self.scale = alpha / rank
        self.enabled = True
        self.sample_mask: torch.Tensor | None = None  # (B,) bool, set by adapter_mask
        self.reset_adapter()

    def reset_adapter(self, generator: torch.Generator | None = None) -> None:
        """A ~ kaiming-uniform (as peft), B = 0: the layer equals the frozen one again."""
        bound = 1 / math.sqrt(self.in_features)  # kaiming_uniform_(a=sqrt(5)) of an (r, in) matrix
        with torch.no_grad():
            a = torch.rand(self.lora_A.shape, generator=generator, dtype=torch.float32) * 2 * bound - bound
            self.lora_A.copy_(a)
            self.lora_B.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, ..., in)
        mask = self.sample_mask
        if not self.enabled or (mask is not None and not bool(mask.any())):
            return F.linear(x, self.weight, self.bias)
        if torch.is_grad_enabled():  # training the adapter: the low-rank path keeps its gradient small
            delta = F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale  # (B, ..., out)
            if mask is not None and not bool(mask.all()):
                delta = delta * mask.view(-1, *([1] * (x.ndim - 1))).to(delta.dtype)
            return F.linear(x, self.weight, self.bias) + delta
        # sampling: the merged weight W + s·B A, and only for the samples the adapter is on for,
        # so that a batch half adapted and half not costs what the plain layer costs
        merged = self.weight + (self.lora_B @ self.lora_A) * self.scale
        if mask is None or bool(mask.all()):
            return F.linear(x, merged, self.bias)
        on, off = mask.nonzero()[:, 0], (~mask).nonzero()[:, 0]
        y_on, y_off = F.linear(x[on], merged, self.bias), F.linear(x[off], self.weight, self.bias)
        out = y_on.new_empty(*x.shape[:-1], self.out_features)
        out[on], out[off] = y_on, y_off.to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.lora_A.shape[0]}, scale={self.scale:g}"


def inject_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Replace the target linears of ``model`` in place; returns their qualified names."""
    if has_lora(model):
        raise ValueError("the network already carries LoRA adapters")
    names = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if name in config.targets and type(child) is nn.Linear:
                setattr(parent, name, LoRALinear(child, config.rank, config.alpha))
                names.append(f"{parent_name}.{name}" if parent_name else name)
    if not names:
        raise ValueError(f"no nn.Linear named any of {config.targets} in {type(model).__name__}")
    return names


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in lora_layers(model) for p in (m.lora_A, m.lora_B)]


def reset_lora(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """Every adapter back to B = 0 (the network equals the frozen one)."""
    for m in lora_layers(model):
        m.reset_adapter(generator)


@contextlib.contextmanager
def adapter_disabled(model: nn.Module) -> Iterator[None]:
    """The un-adapted network inside the block (peft's ``disable_adapter``)."""
    layers = lora_layers(model)
    before = [m.enabled for m in layers]
    for m in layers:
        m.enabled = False
    try:
        yield
    finally:
        for m, flag in zip(layers, before, strict=True):
            m.enabled = flag


@contextlib.contextmanager
def adapter_mask(model: nn.Module, mask: torch.Tensor) -> Iterator[None]:
    """Inside the block, the adapter acts on the samples where ``mask`` (B,) is True only."""
    layers = lora_layers(model)
    before = [(m.enabled, m.sample_mask) for m in layers]
    for m in layers:
        m.enabled, m.sample_mask = True, mask.to(torch.bool)
    try:
        yield
    finally:
        for m, (flag, old) in zip(layers, before, strict=True):
            m.enabled, m.sample_mask = flag, old
