"""Parameter counts and size on disk."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from torchslim.io import saved_size

__all__ = ["effective_weights", "nonzero_params", "param_count", "saved_size"]


def effective_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Each weight tensor as the forward pass sees it.

    A module may expose `effective_weights()` (masked or quantized layers do) to report the values it
    really computes with; otherwise its own parameters are used. `*_orig` parameters of a
    reparametrised weight are read through the attribute they back (`weight_orig` -> `weight`), and so
    are tensors under `torch.nn.utils.parametrize` (`parametrizations.weight.original` -> `weight`).
    """
    for prefix, module in model.named_modules():
        custom = getattr(module, "effective_weights", None)
        if callable(custom) and module is not model:
            for name, tensor in custom():
                yield _join(prefix, name), tensor
            continue
        if _inside_custom(model, prefix) or _inside_parametrizations(model, prefix):
            continue
        if parametrize.is_parametrized(module):  # torch.nn.utils.parametrize: read through the attribute
            for name in module.parametrizations:
                yield _join(prefix, name), getattr(module, name)
        for name, param in module.named_parameters(recurse=False):
            base = name.removesuffix("_orig")
            value = getattr(module, base, param) if base != name else param
            yield _join(prefix, base), value


def _inside_custom(model: nn.Module, prefix: str) -> bool:
    parts = prefix.split(".") if prefix else []
    for i in range(1, len(parts)):
        parent = model.get_submodule(".".join(parts[:i]))
        if callable(getattr(parent, "effective_weights", None)):
            return True
    return False


def _inside_parametrizations(model: nn.Module, prefix: str) -> bool:
    """Modules under `<layer>.parametrizations` hold a parametrized tensor's originals: read via the layer."""
    parts = prefix.split(".") if prefix else []
    return any(
        part == "parametrizations" and parametrize.is_parametrized(model.get_submodule(".".join(parts[:i])))
        for i, part in enumerate(parts)
    )


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def param_count(model: nn.Module) -> int:
    return sum(t.numel() for _, t in effective_weights(model))


def nonzero_params(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(t.detach())) for _, t in effective_weights(model))
