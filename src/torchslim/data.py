"""Batches and forward calls in one convention: a batch is `(inputs, target)`.

`inputs` is a tensor, a tuple of tensors (passed positionally) or a dict (passed as keywords).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn as nn

Inputs = torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]


def call(model: nn.Module, inputs: Any) -> Any:
    """Run `model` on inputs in any of the three batch forms."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


MAIN_OUTPUTS = ("logits", "last_hidden_state")
"""Fields of a transformers `ModelOutput` that hold what a model computes, in order of preference."""


def main_output(output: Any) -> Any:
    """The tensor a training loss sees: a tensor as it is; of a transformers `ModelOutput` (or any
    object with these fields) its `logits`, else its `last_hidden_state`; anything else unchanged."""
    if isinstance(output, torch.Tensor):
        return output
    for field in MAIN_OUTPUTS:
        value = getattr(output, field, None)
        if isinstance(value, torch.Tensor):
            return value
    return output


def forward(model: nn.Module, inputs: Any) -> Any:
    """`call`, then `main_output`: what training and distillation compare."""
    return main_output(call(model, inputs))


def as_tuple(inputs: Any) -> tuple[Any, ...]:
    """Positional form of inputs (dict values keep their order)."""
    if isinstance(inputs, dict):
        return tuple(inputs.values())
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs)
    return (inputs,)


def batch_size(inputs: Any) -> int:
    return int(as_tuple(inputs)[0].shape[0])


def take(inputs: Any, n: int) -> Any:
    """The first `n` examples of a batch, in the same form."""
    if isinstance(inputs, dict):
        return {k: v[:n] for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(v[:n] for v in inputs)
    return inputs[:n]


def split(batch: Any) -> tuple[Any, Any]:
    """`(inputs, target)` from a batch; a bare tensor batch has no target."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    return batch, None


def limit(loader: Iterable[Any], batches: int | None) -> Iterator[Any]:
    for i, batch in enumerate(loader):
        if batches is not None and i >= batches:
            return
        yield batch
