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
    """This rank's share of the batches: every `size`-th one, the same count on every rank.

    Every rank draws the same seeded order, so striding partitions one epoch without overlap (the
    role of a DistributedSampler, for loaders we do not own). The last partial round is dropped
    so that every rank makes the same number of synchronised steps.
    """
    rank, size = rank_and_size()
    if size == 1:
        yield from batches
        return
    items = list(batches)
    usable = len(items) - len(items) % size
    yield from items[rank:usable:size]


def wrap(model: nn.Module) -> nn.Module:
    """DistributedDataParallel around `model` when running under torchrun, else `model` itself."""
    if rank_and_size()[1] == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def barrier() -> None:
    if rank_and_size()[1] > 1:
        dist.barrier()
