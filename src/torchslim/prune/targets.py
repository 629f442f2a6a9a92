"""Which tensors unstructured pruning may touch: a registry of layer kinds and the selected targets.

A `LayerKind` names the module types it covers, which of their weight tensors are prunable, and
(optionally) how to read the input features each weight acts on, which activation-aware criteria
such as `entropy` need. Register a kind for a custom layer with `LAYER_KINDS.register(name, LayerKind(...))`.
Biases are never pruned: they are few and pruning them saves nothing worth the accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from torchslim.errors import UserError
from torchslim.prune.mha import PrunedMultiheadAttention
from torchslim.registry import Registry
from torchslim.targeting import is_selected, matches

InputsFn = Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], dict[str, torch.Tensor]]
"""`inputs(module, args, kwargs)` -> per prunable param, its input features as `[samples, features]`."""
SpreadFn = Callable[[nn.Module, str, torch.Tensor], torch.Tensor]
"""`spread(module, param, per_feature)` -> the per-input-feature values broadcast to the weight's shape."""


@dataclass(frozen=True)
class LayerKind:
    types: tuple[type[nn.Module], ...]
    params: Callable[[nn.Module], list[str]]
    inputs: InputsFn | None = None
    spread: SpreadFn | None = None


LAYER_KINDS: Registry[LayerKind] = Registry("prunable layer kind")


def _weight(module: nn.Module) -> list[str]:
    return ["weight"]


def _features_last(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """[..., C at channel_dim, ...] -> [samples, C]."""
    return x.detach().movedim(channel_dim, -1).reshape(-1, x.shape[channel_dim]).float()


def _along(axis: int, ndim: int, values: torch.Tensor) -> torch.Tensor:
    shape = [1] * ndim
    shape[axis] = -1
    return values.view(shape)


def _linear_inputs(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, torch.Tensor]:
    x = args[0] if args else kwargs["input"]
    return {"weight": _features_last(x, -1)}


def _linear_spread(module: nn.Module, param: str, values: torch.Tensor) -> torch.Tensor:
    return values.view(1, -1)


def _conv_inputs(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    x = args[0] if args else kwargs["input"]
    weight: torch.Tensor = module.weight  # type: ignore[assignment]
    return {"weight": _features_last(x, 1 if x.dim() == weight.dim() else 0)}


def _conv_spread(module: nn.Module, param: str, values: torch.Tensor) -> torch.Tensor:
    # weight is [out, in/groups, *k]: output channel o of group g reads input channels g*in_g .. (g+1)*in_g-1
    w = getattr(module, param)
    groups = int(getattr(module, "groups", 1))
    per_group = values.view(groups, 1, -1).expand(groups, w.shape[0] // groups, -1).reshape(w.shape[0], -1)
    return per_group.view(*per_group.shape, *([1] * (w.dim() - 2)))


def _conv_transpose_spread(module: nn.Module, param: str, values: torch.Tensor) -> torch.Tensor:
    return _along(0, getattr(module, param).dim(), values)  # weight is [in, out/groups, *k]


def _rnn_params(module: nn.Module) -> list[str]:
    return [n for n in module._flat_weights_names if n.startswith("weight")]  # type: ignore[union-attr]


def _mha_params(module: nn.Module) -> list[str]:
    names = ["in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"]
    return [n for n in names if getattr(module, n, None) is not None]


def _mha_inputs(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """in_proj_weight reads the query for all of q, k, v rows: exact for self-attention, the common case."""
    q, k, v = (args[i] if len(args) > i else kwargs[n] for i, n in enumerate(("query", "key", "value")))
    feats = {"query": _features_last(q, -1), "key": _features_last(k, -1), "value": _features_last(v, -1)}
    out = {"in_proj_weight": feats["query"]}
    out.update({f"{p}_proj_weight": feats[n] for p, n in (("q", "query"), ("k", "key"), ("v", "value"))})
    return {p: x for p, x in out.items() if p in _mha_params(module)}


_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
LAYER_KINDS.register("linear", LayerKind((nn.Linear,), _weight, _linear_inputs, _linear_spread))
LAYER_KINDS.register("conv", LayerKind(_CONV, _weight, _conv_inputs, _conv_spread))
LAYER_KINDS.register("conv_transpose", LayerKind(_CONV_T, _weight, _conv_inputs, _conv_transpose_spread))
LAYER_KINDS.register("embedding", LayerKind((nn.Embedding,), _weight))
LAYER_KINDS.register("rnn", LayerKind((nn.RNNBase,), _rnn_params))
# the head-pruned replacement keeps nn.MultiheadAttention's tensor names, so the same functions apply
_ATTENTION = (nn.MultiheadAttention, PrunedMultiheadAttention)
LAYER_KINDS.register("attention", LayerKind(_ATTENTION, _mha_params, _mha_inputs, _linear_spread))


def kind_of(module: nn.Module) -> LayerKind | None:
    """The registered kind whose type is nearest in the module's class hierarchy (subclasses inherit)."""
    best: tuple[int, LayerKind] | None = None
    mro = type(module).__mro__
    for name in LAYER_KINDS:
        kind = LAYER_KINDS.get(name)
        for t in kind.types:
            if t in mro and (best is None or mro.index(t) < best[0]):
                best = (mro.index(t), kind)
    return best[1] if best else None


@dataclass
class Target:
    """One prunable weight tensor of one module."""

    name: str
    """`module` for a layer's `weight`, `module.param` otherwise (an LSTM's `weight_hh_l0`)."""
    module_name: str
    module: nn.Module
    param: str
    kind: LayerKind

    @property
    def key(self) -> str:
        """`module.param`, unambiguous (used in saved transforms)."""
        return f"{self.module_name}.{self.param}" if self.module_name else self.param

    def weight(self) -> torch.Tensor:
        """The tensor the forward pass computes with (masked when a mask is attached)."""
        weight: torch.Tensor = getattr(self.module, self.param)
        return weight

    def leaf(self) -> torch.Tensor:
        """The trainable tensor behind the weight (`original` of a parametrization)."""
        if parametrize.is_parametrized(self.module, self.param):
            leaf: torch.Tensor = self.module.parametrizations[self.param].original  # type: ignore[index,union-attr]
            return leaf
        return self.weight()

    def numel(self) -> int:
        return self.weight().numel()


def find_targets(model: nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[Target]:
    """Prunable tensors of the modules the globs select, in model order; an include matching nothing fails."""
    found: list[Target] = []
    names = []
    for module_name, module in model.named_modules():
        kind = kind_of(module)
        if kind is None or ".parametrizations." in f".{module_name}.":
            continue
        names.append(module_name)
        if not is_selected(module_name, include, exclude):
            continue
        for param in kind.params(module):
            name = module_name if param == "weight" else f"{module_name}.{param}".lstrip(".")
            found.append(Target(name or param, module_name, module, param, kind))
    for pattern in include:
        if not any(matches(n, pattern) for n in names):
            raise UserError(
                f"include pattern {pattern!r} matches no prunable layer (prunable: {', '.join(names)})"
            )
    if not found:
        raise UserError(f"no prunable layer selected (include={list(include)}, exclude={list(exclude)})")
    return found
