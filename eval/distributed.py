"""Evaluation sharded over ``torchrun`` ranks: each rank scores its share, rank 0 merges.

    torchrun --nproc_per_node N eval/ate_rpe.py ...    (or eval/predict.py)

:func:`init` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) through
:func:`nav_come.core.train_loop.setup_distributed`: gloo on CPU, nccl with ``--device cuda``
(rank r on ``cuda:LOCAL_RANK``; more ranks than GPUs share them round-robin over gloo, which
keeps one GPU busy with a small model). :func:`shard` deals the items out round-robin with their
indices, :func:`gather` brings every rank's ``(index, result)`` pairs to rank 0 in index
order, and :func:`close` ends the process group. Without torchrun there is one rank and
these change nothing.

The numbers do not depend on the number of ranks as long as every random draw of item i
is seeded from (seed, i) and every mean is taken after the gather, over the full list.
"""

from __future__ import annotations

from typing import TypeVar

import torch.distributed as tdist

from nav_come.core.train_loop import Distributed, setup_distributed

T = TypeVar("T")


def init(device: str = "cpu") -> Distributed:
    """This process's rank, world size and device; opens the process group under torchrun.

    device: "cpu" or "cuda" ("auto": CUDA when available); ValueError for anything else or
    for "cuda" without a CUDA device.
    """
    return setup_distributed(device)


def shard(items: list[T], dist: Distributed | None = None) -> list[tuple[int, T]]:
    """This rank's ``(index, item)`` pairs: items rank, rank + world, ... (all of them for one rank)."""
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    return [(i, item) for i, item in enumerate(items) if i % world == rank]


def gather(pairs: list[tuple[int, T]], dist: Distributed | None = None) -> list[T] | None:
    """Rank 0: the values of every rank's ``(index, value)`` pairs, in index order; other ranks: None.

    Values are pickled, so they should hold CPU tensors or numpy arrays.
    """
    if dist is None or dist.world == 1:
        parts = [pairs]
    else:
        parts = [None] * dist.world if dist.is_main else None
        tdist.gather_object(list(pairs), parts, dst=0)
        if not dist.is_main:
            return None
    return [value for _, value in sorted((p for part in parts for p in part), key=lambda p: p[0])]


def close() -> None:
    """End the process group, if there is one."""
    if tdist.is_initialized():
        tdist.destroy_process_group()
