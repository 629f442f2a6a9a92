"""The float op of a weighted layer, applied with any weight: what fake-quant and codebook layers compute.

`Geometry` keeps the layer type and its options (conv stride/padding/..., embedding padding index) so a
module can run the float op on a weight it builds itself (fake-quantized, or looked up in a codebook)
without keeping the float layer's own weight around.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.registry import Registry

Op = Callable[..., torch.Tensor]
"""`op(x, weight, bias, **options)`."""
OPS: Registry[Op] = Registry("layer op")
OPS.register("Linear", lambda x, w, b: F.linear(x, w, b))
OPS.register("Conv1d", lambda x, w, b, **o: F.conv1d(x, w, b, **o))
OPS.register("Conv2d", lambda x, w, b, **o: F.conv2d(x, w, b, **o))
OPS.register("Embedding", lambda x, w, b, padding_idx=None: F.embedding(x, w, padding_idx))

_OPTIONS: dict[str, tuple[str, ...]] = {
    "Conv1d": ("stride", "padding", "dilation", "groups"),
    "Conv2d": ("stride", "padding", "dilation", "groups"),
    "Embedding": ("padding_idx",),
}


@dataclass(frozen=True)
class Geometry:
    kind: str
    """Registered float layer type: Linear, Conv1d, Conv2d, Embedding."""
    options: dict[str, Any] = field(default_factory=dict)

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return OPS.get(self.kind)(x, weight, bias, **self.options)


def kind_of(mod: nn.Module) -> str | None:
    """The registered type `mod` is an instance of (pruning's parametrize makes `ParametrizedLinear`)."""
    return next((c.__name__ for c in type(mod).__mro__ if c.__name__ in OPS), None)


SIZES = (
    "in_features",
    "out_features",
    "in_channels",
    "out_channels",
    "kernel_size",
    "num_embeddings",
    "embedding_dim",
)
"""The float layer's size attributes a replacement keeps, so code that reads them (transformers' block
code, `prune.heads` sizing a quantized block) works on the quantized layer as on the float one."""


def copy_sizes(src: nn.Module, dst: nn.Module) -> None:
    for name in SIZES:
        if hasattr(src, name):
            setattr(dst, name, getattr(src, name))


def geometry_of(mod: nn.Module) -> Geometry:
    kind = kind_of(mod)
    if kind is None:
        raise TypeError(f"{type(mod).__name__} has no registered float op")
    return Geometry(kind, {k: getattr(mod, k) for k in _OPTIONS.get(kind, ())})
