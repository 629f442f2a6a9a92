"""ONNX export of transformers models: no cache, one output tensor, dynamic batch and sequence axes.

A causal LM called plainly returns a `DynamicCache` among its outputs, which the exporter cannot
write; an encoder returns a `ModelOutput`. `adapt` wraps the model so it is called with keyword
inputs and `use_cache=False` and returns its main tensor (`logits`, else `last_hidden_state`), names
the graph's inputs after the forward's arguments and its output after that field, and marks axis 0 of
every input dynamic (`batch`) and axis 1 of integer token inputs (`input_ids`, `attention_mask`, ...)
dynamic as well (`sequence`, up to the model's position limit), so one file serves any batch and length.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from torchslim.data import MAIN_OUTPUTS, as_tuple, call, main_output


class MainOutput(nn.Module):
    """`model(**dict(zip(names, args)), **extra)`, reduced to its main tensor."""

    def __init__(self, model: nn.Module, names: list[str], extra: dict[str, Any]) -> None:
        super().__init__()
        self.model, self.names, self.extra = model, names, extra

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out = main_output(self.model(**dict(zip(self.names, args, strict=True)), **self.extra))
        assert isinstance(out, torch.Tensor)
        return out


@dataclass
class Adapted:
    module: nn.Module
    args: tuple[torch.Tensor, ...]
    dynamic_shapes: tuple[tuple[dict[int, Any], ...]]
    """One entry, for the wrapper's `*args`: a dict of dynamic axes per input."""
    input_names: list[str]
    output_names: list[str]


def adapt(model: nn.Module, example_inputs: Any) -> Adapted | None:
    """The export plan for a transformers model (None for any other model)."""
    from torchslim.interop.hf import is_transformers

    if not is_transformers(model):
        return None
    params = inspect.signature(model.forward).parameters
    if isinstance(example_inputs, dict):
        names, args = list(example_inputs), tuple(example_inputs.values())
    else:
        args = as_tuple(example_inputs)
        names = [p for p in params if p not in ("self",)][: len(args)]
    extra = {"use_cache": False} if "use_cache" in params else {}
    wrapper = MainOutput(model, names, extra).eval()
    with torch.no_grad():
        out = call(model, dict(zip(names, args, strict=True)) | extra)
    field = next((f for f in MAIN_OUTPUTS if isinstance(getattr(out, f, None), torch.Tensor)), "output")
    limit = _positions(model)
    batch = torch.export.Dim("batch", min=1)
    sequence = (
        torch.export.Dim("sequence", min=2, max=limit) if limit else torch.export.Dim("sequence", min=2)
    )
    dynamic = tuple({0: batch, 1: sequence} if _is_tokens(a) else {0: batch} for a in args)
    return Adapted(wrapper, args, (dynamic,), names, [field])


def _is_tokens(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() >= 2 and not x.is_floating_point()


def _positions(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for field in ("max_position_embeddings", "n_positions"):
        value = getattr(config, field, None)
        if isinstance(value, int) and value > 2:
            return value
    return None
