"""Data-parallel training under torchrun: DistributedDataParallel, batch sharding, rank-0 writing.

`torchrun --nproc_per_node=2 -m torchslim compress RECIPE` sets RANK/WORLD_SIZE/MASTER_ADDR; the
process group starts from those (gloo on CPU, nccl on GPU). Multi-node runs use torchrun's own
rendezvous flags (`--nnodes`, `--node_rank`, `--rdzv_endpoint`), nothing here changes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn


def init_from_env() -> bool:
    """Join the process group torchrun describes; False when not launched by torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return True


def rank_and_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_size()[0] == 0


def shard(batches: Iterable[Any]) -> Iterator[Any]:
    """This rank's share of every batch: its slice along dim 0 of each tensor in it.

    Every rank draws the same seeded order and takes rows `rank::size` of each batch, so one step
    of all ranks together sees exactly the batch a single process would (DDP averages the ranks'
    gradients of equal-sized halves into the full batch's): the same number of steps at the same
    learning rate, i.e. the same training, in less time. A batch with fewer rows than ranks is
    dropped on every rank, so all ranks make the same number of synchronised steps.
    """
    rank, size = rank_and_size()
    if size == 1:
        yield from batches
        return
    for batch in batches:
        if _rows(batch) >= size:
            yield _slice(batch, rank, size)


def _rows(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 0
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        return min((_rows(b) for b in batch if isinstance(b, (torch.Tensor, dict, list, tuple))), default=0)
    return 0


def _slice(batch: Any, rank: int, size: int) -> Any:
    """Rows `rank::size` of every tensor in a (nested) tuple, list or dict; other values unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch[rank::size] if batch.dim() else batch
    if isinstance(batch, dict):
        return {k: _slice(v, rank, size) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_slice(b, rank, size) for b in batch)
    return batch


def wrap(model: nn.Module) -> nn.Module:
    """DistributedDataParallel around `model` when running under torchrun, else `model` itself."""
    if rank_and_size()[1] == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def barrier() -> None:
    if rank_and_size()[1] > 1:
        dist.barrier()
