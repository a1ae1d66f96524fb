"""Memory experts for CoME (docs/design.md §1) and the paper's memory baselines.

| name    | class                    | memory it adds to the base                                   |
|---------|--------------------------|--------------------------------------------------------------|
| base    | :class:`BaseExpert`      | none: the base world model's DiT (4 context frames + action)  |
| stm     | :class:`STMExpert`       | the last 32 frames: 14 strided frames' tokens, cross-attended |
| ltm     | :class:`LTMExpert`       | LoRA on the base, fine-tuned at test time on the long past    |
| sltm    | :class:`SpatialExpert`   | top-K past frames retrieved by pose, as input channels        |
| full    | :class:`FullExpert`      | tokens of every past frame, cross-attended (cost grows)       |
| ssm     | :class:`SSMExpert`       | a recurrent state of the whole past, cross-attended           |
| Sliding | ``STMExpert`` alone      | (the STM network sampled without composition)                 |

Every expert is a denoiser ``expert(x_t, t, cond) -> v`` with ``cond = expert.condition(memory,
query)``, and :class:`~nav_come.compose.ComposedDenoiser` combines any subset. Trained experts
start from the base (``from_base``) with zero-initialised memory pathways and are trained by
``python -m nav_come.train_expert``. Checkpoints are :mod:`nav_come.core.checkpoint` folders of kind
``stm``, ``ltm``, ``sltm``, ``full`` or ``ssm`` (config + weights); :func:`load_expert` reads any.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from nav_come.core.checkpoint import CheckpointError, load_checkpoint, read_config, register_kind, save_checkpoint
from nav_come.experts.baselines import FullExpert, Sliding, SSMExpert
from nav_come.experts.common import BaseExpert, Condition, Expert
from nav_come.experts.ltm import LTMConfig, LTMExpert, MemorizeReport, fit_weight
from nav_come.experts.memory_dit import MemoryDiT, MemoryDiTConfig
from nav_come.experts.spatial import SpatialConfig, SpatialExpert, copy_nearest, distance_alpha
from nav_come.experts.stm import MemoryExpert, MemoryExpertConfig, STMExpert

EXPERTS: dict[str, type[Expert]] = {
    "stm": STMExpert,
    "ltm": LTMExpert,
    "sltm": SpatialExpert,
    "full": FullExpert,
    "ssm": SSMExpert,
}
TRAINED = ("stm", "sltm", "full", "ssm")  # trained offline by nav_come.train_expert (the LTM trains at test time)

for _kind, _cls in EXPERTS.items():
    register_kind(_kind, _cls.config_cls, _cls)


def save_expert(directory: str | os.PathLike, expert: Expert, metadata: dict | None = None) -> Path:
    """Write an expert's checkpoint folder (its kind, config and weights)."""
    if expert.kind not in EXPERTS:
        raise ValueError(f"cannot save a {expert.kind!r} expert: savable kinds are {sorted(EXPERTS)}")
    return save_checkpoint(directory, expert, expert.kind, metadata)


def load_expert(directory: str | os.PathLike, device: str | torch.device = "cpu") -> Expert:
    """Rebuild any expert from its checkpoint folder (raises CheckpointError with the fix)."""
    kind = read_config(directory)[0]
    if kind not in EXPERTS:
        raise CheckpointError(f"{directory} holds a '{kind}' checkpoint, not a memory expert ({sorted(EXPERTS)})")
    expert, _ = load_checkpoint(directory, kind, device)
    return expert.eval()


__all__ = [
    "EXPERTS",
    "TRAINED",
    "BaseExpert",
    "Condition",
    "Expert",
    "FullExpert",
    "LTMConfig",
    "LTMExpert",
    "MemorizeReport",
    "MemoryDiT",
    "MemoryDiTConfig",
    "MemoryExpert",
    "MemoryExpertConfig",
    "SSMExpert",
    "STMExpert",
    "Sliding",
    "SpatialConfig",
    "SpatialExpert",
    "copy_nearest",
    "distance_alpha",
    "fit_weight",
    "load_expert",
    "save_expert",
]
