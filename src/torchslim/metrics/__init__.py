"""Measurement: params, nonzero params, MACs, size on disk, latency and the task metric."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch.nn as nn

from torchslim.metrics.accuracy import top1_accuracy
from torchslim.metrics.latency import measure_latency
from torchslim.metrics.layers import layer_table
from torchslim.metrics.macs import count_macs
from torchslim.metrics.runtimes import RUNTIMES, latency, paired_latency
from torchslim.metrics.size import nonzero_params, param_count, saved_size

if TYPE_CHECKING:
    from torchslim.tasks.protocol import Task


@dataclass(frozen=True)
class Measurement:
    params: int
    nonzero_params: int
    macs: int
    """Multiply-accumulates for one example."""
    size_bytes: int
    """Bytes on disk of what `ts.save` writes."""
    latency_ms: float
    """Median ms of one forward pass on the whole example batch, one thread."""
    runtime: str
    accuracy: float | None
    """The task metric (accuracy for classifiers), or None when no data was given."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(
    model: nn.Module,
    example_inputs: Any,
    data: Iterable[Any] | None = None,
    *,
    task: Task | None = None,
    repeats: int = 20,
    size_bytes: int | None = None,
    runtime: str = "torch",
) -> Measurement:
    """Measure `model`. The metric is `task.evaluate` when a task is given, else top-1 accuracy on `data`.

    `size_bytes` skips writing the model again when the caller already knows its saved size.
    `runtime` names where latency is measured (see `torchslim.metrics.runtimes.RUNTIMES`).
    """
    RUNTIMES.get(runtime)  # an unknown runtime fails before any work
    if task is not None:
        metric: float | None = task.evaluate(model)
    elif data is not None:
        metric = top1_accuracy(model, data)
    else:
        metric = None
    return Measurement(
        params=param_count(model),
        nonzero_params=nonzero_params(model),
        macs=count_macs(model, example_inputs),
        size_bytes=saved_size(model) if size_bytes is None else size_bytes,
        latency_ms=round(latency(model, example_inputs, runtime, repeats=repeats), 4),
        runtime=runtime,
        accuracy=metric,
    )


__all__ = [
    "RUNTIMES",
    "Measurement",
    "count_macs",
    "latency",
    "layer_table",
    "measure",
    "measure_latency",
    "paired_latency",
    "saved_size",
]
