"""Helpers for distributed (DDP) runs: which process writes, identical importance on every rank, sharded loading."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "is_distributed",
    "is_main_process",
    "distributed_sampler",
    "main_process_only",
    "synchronize_sum",
    "shut_down",
]


def is_distributed() -> bool:
    """Whether a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """True on rank 0 of a distributed run, and always in a single-process run."""
    return not is_distributed() or dist.get_rank() == 0


def synchronize_sum(tensors: Sequence[torch.Tensor]) -> None:
    """Sum ``tensors`` over all ranks in place, then give every rank rank 0's result bit for bit.

    The broadcast after the all-reduce makes the values identical everywhere even where a reduction's order
    could differ between ranks, so every rank selects the same sparse trainable set.

    Args:
        tensors: tensors to reduce (no-op outside a distributed run).
    """
    if not is_distributed():
        return
    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        dist.broadcast(tensor, src=0)


def distributed_sampler(dataset: Any, shuffle: bool = True, even_divisible: bool = True) -> Any | None:
    """MONAI's ``DistributedSampler`` over ``dataset`` in a distributed run, ``None`` otherwise.

    Args:
        dataset: the dataset to shard.
        shuffle: shuffle every epoch (training).
        even_divisible: pad so that every rank gets as many items (training); ``False`` for evaluation.

    Returns:
        the sampler or ``None``.
    """
    if not is_distributed():
        return None
    from monai.data import DistributedSampler

    return DistributedSampler(dataset=dataset, shuffle=shuffle, even_divisible=even_divisible)


def main_process_only(handlers: Sequence[Any], shared: int) -> list[Any]:
    """All ``handlers`` on the main process; only the first ``shared`` of them on the other ranks.

    Handlers that log, draw or save (stats, TensorBoard, progress bars, checkpoints) come after the ``shared``
    ones that every rank needs (importance estimation, gradient mask, schedulers, validation).

    Args:
        handlers: the full handler list; ``None`` entries (components a bundle disabled for the chosen method) are
            dropped after the split, so ``shared`` counts positions in the full list.
        shared: how many leading handlers every rank runs.

    Returns:
        the handlers for this process.
    """
    selected = list(handlers) if is_main_process() else list(handlers)[:shared]
    return [handler for handler in selected if handler is not None]


def shut_down() -> None:
    """Wait for every rank, then destroy the process group (no-op outside a distributed run).

    Without the barrier a rank that finishes first tears its gloo connections down while another is still in a
    collective (the evaluator's metrics, the last checkpoint), which can abort that rank.
    """
    if not is_distributed():
        return
    dist.barrier()
    dist.destroy_process_group()
