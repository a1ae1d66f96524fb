"""Where a plan's time goes: a stopwatch the planners charge their sections to.

A planner with ``timer`` set (see :class:`planners.methods.WorldModelPlanner`) charges
``encode`` (context and goal latents), ``denoise`` (the rollouts: every denoiser call),
``decode`` (latents to pixels) and ``cost`` (the goal distance) to it; what a plan spends
outside those sections is the CEM's own bookkeeping (sampling candidates, elites).
``timer=None`` costs nothing. On CUDA each section boundary synchronises, so that kernels
are charged to the section that launched them (CPU ops are synchronous).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch

SECTIONS = ("encode", "denoise", "decode", "cost")


class PlanTimer:
    """Seconds per section, summed over the sections' calls until :meth:`reset`."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self.seconds = dict.fromkeys(SECTIONS, 0.0)

    def reset(self) -> None:
        self.seconds = dict.fromkeys(SECTIONS, 0.0)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if name not in self.seconds:
            raise ValueError(f"unknown plan section {name!r}; sections are {SECTIONS}")
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[name] += time.perf_counter() - start


def section(timer: PlanTimer | None, name: str) -> contextlib.AbstractContextManager:
    """``timer(name)``, or nothing when there is no timer."""
    return timer(name) if timer is not None else contextlib.nullcontext()
