"""Where a transformer's repeated layers are: the list the layer-by-layer engine walks.

Any stack of identical blocks qualifies: a decoder's `model.layers` (Llama, Mistral, Qwen), GPT-2's
`transformer.h`, an encoder's `encoder.layer` (BERT, MiniLM), `nn.TransformerEncoder.layers`. The
list chosen is the `nn.ModuleList` holding the most parameters whose children all have one class,
so a model with a small auxiliary list (e.g. a classifier stack) still finds its main one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from torchslim.errors import UserError


@dataclass(frozen=True)
class LayerStack:
    path: str
    """Dotted name of the `nn.ModuleList` in the model (`model.layers`)."""
    layers: nn.ModuleList

    def name(self, index: int) -> str:
        return f"{self.path}.{index}" if self.path else str(index)


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def find_layers(model: nn.Module) -> LayerStack:
    """The model's main list of repeated blocks (see the module docstring); UserError when it has none."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = _numel(module)
        if best is None or size > best[0]:
            best = (size, name, module)
    if best is None:
        raise UserError(
            f"{type(model).__name__} has no list of repeated layers (an nn.ModuleList of one block type); "
            "layer-by-layer methods (wanda, sparsegpt) need a transformer stack"
        )
    return LayerStack(best[1], best[2])


def linears(block: nn.Module) -> dict[str, nn.Module]:
    """The Linear-like layers inside one block, by name relative to it (transformers' Conv1D included)."""
    out = {}
    for name, module in block.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Linear) or (type(module).__name__ == "Conv1D" and weight is not None):
            out[name] = module
    return out
