"""The paper's memory baselines, on the same MemoryDiT as the STM (comparable parameter counts):

- **Sliding**: the STM network sampled alone, without composition (``STMExpert``; a
  sliding-window DiT, as the paper's STM is). No extra training.
- **Full**: cross-attention to tokens of *every* frame older than the context (4 per frame:
  ``memory_grid`` 2). Its cost per step grows linearly with the history, and over an episode
  quadratically. Training keeps the newest ``train_history`` frames; inference keeps all.
- **SSM**: a gated diagonal linear recurrence folds every frame older than the context into a
  fixed state (16 positions × 64) projected to 16 tokens that the DiT cross-attends to. Its frame
  poses are relative to the episode start, so the state is updated incrementally as frames
  arrive (cached per episode): constant cost per step and per new frame.

All start from the base expert with zero-initialised memory pathways (``from_base``).
"""

from __future__ import annotations

import torch

from nav_come.experts.stm import MemoryExpert, STMExpert, _rows
from nav_come.memory_bank import EpisodeMemory

Sliding = STMExpert  # the paper's "Sliding" row: the STM network alone


class FullExpert(MemoryExpert):
    """Attention over the whole history's pooled tokens (cost grows with the history)."""

    kind = "full"
    DEFAULTS = {"memory": "tokens", "memory_grid": 2, "window": None, "stride": 1, "train_history": 128}


class SSMExpert(MemoryExpert):
    """A recurrent state compressing the whole history (constant cost)."""

    kind = "ssm"
    DEFAULTS = {"memory": "ssm", "memory_grid": 4, "window": None, "stride": 1, "train_history": 128}

    CACHED_STATES = 16  # states kept per episode (a rollout's lags, then the next plan's)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._episode: EpisodeMemory | None = None
        self._states: dict[int, torch.Tensor] = {}  # last frame folded in -> state (1, g², ssm_dim)

    @torch.no_grad()
    def encode(self, memory: EpisodeMemory, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The state after frames 0..end, continued from the newest cached state of this episode before it."""
        if self._episode is not memory:
            self.reset()
            self._episode = memory
        known = [e for e in self._states if e <= end]
        lo, state = (max(known) + 1, self._states[max(known)]) if known else (0, None)
        device = next(self.network.parameters()).device
        if end >= lo:
            idx = torch.arange(lo, end + 1)[None]  # (1, L)
            valid = torch.ones_like(idx, dtype=torch.bool)
            features = self.frame_features(memory, idx, valid, _rows(memory.now), _rows(0))
            frames = memory.gather(idx, valid)
            state = self.network.ssm_state(frames.to(device), features.to(device), valid.to(device), state)
            self._states[end] = state
            while len(self._states) > self.CACHED_STATES:
                self._states.pop(min(self._states))
        g2, found = self.config.net.memory_grid**2, state is not None
        if state is None:  # no frame yet: only the null token is attendable (and the gate keeps memory off)
            state = torch.zeros(1, g2, self.config.net.ssm_dim, device=device)
        mask = torch.full((1, g2), found, dtype=torch.bool, device=device)
        return self.network.memory_tokens(self.network.state_tokens(state), mask)

    def reset(self) -> None:
        """Forget the cached states (a new episode also does)."""
        self._episode, self._states = None, {}
