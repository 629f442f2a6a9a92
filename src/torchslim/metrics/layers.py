"""Per-layer table: shape, params, sparsity, MACs and bit width of every layer that holds weights."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from torchslim.metrics.macs import macs_by_module
from torchslim.metrics.size import effective_weights


def layer_table(model: nn.Module, example_inputs: Any | None = None) -> list[dict[str, Any]]:
    """One row per module owning weights, in model order. `effective_macs` counts only the multiplies
    by nonzero weights: what a sparse kernel would do under unstructured sparsity."""
    macs = macs_by_module(model, example_inputs) if example_inputs is not None else {}
    groups: dict[str, list[torch.Tensor]] = {}
    for name, tensor in effective_weights(model):
        owner = name.rpartition(".")[0]
        groups.setdefault(owner, []).append(tensor.detach())
    rows = []
    for owner, tensors in groups.items():
        module = model.get_submodule(owner) if owner else model
        params = sum(t.numel() for t in tensors)
        nonzero = sum(int(torch.count_nonzero(t)) for t in tensors)
        weight = tensors[0]  # the weight comes first; its density scales the multiplies it does
        density = int(torch.count_nonzero(weight)) / weight.numel() if weight.numel() else 1.0
        rows.append(
            {
                "name": owner or "(root)",
                "type": type(module).__name__,
                "shape": list(tensors[0].shape),
                "params": params,
                "nonzero": nonzero,
                "sparsity": round(1.0 - nonzero / params, 6) if params else 0.0,
                "macs": macs.get(owner, 0),
                "effective_macs": round(macs.get(owner, 0) * density),
                "bits": int(getattr(module, "bits", None) or tensors[0].element_size() * 8),
            }
        )
    return rows
