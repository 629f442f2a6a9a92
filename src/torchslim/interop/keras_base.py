"""What every Keras layer converter shares: the graph's values and nodes, the registry, small helpers.

One converter per Keras layer class (registered in `keras_layers`, `keras_scale`, `keras_shapes`).
A converter's `build(node, inputs)` gets the layer's Keras config and the `Value`s it consumes (Keras
shapes and layout) and returns the torch modules (an optional explicit padding, the layer, an
optional fused activation) and the `Value` it produces. `weights_in` copies Keras weights (numpy,
in `layer.get_weights()` order) into the built layer; `weights_out` returns them from a (possibly
channel-pruned) torch layer; `export` updates the Keras config to the torch layer's widths.
Everything here is plain numpy/torch: rebuilding a saved model needs no Keras.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from torchslim.errors import UserError
from torchslim.registry import Registry

Arrays = list[np.ndarray]


@dataclass
class Value:
    """A tensor between layers: its Keras shape (no batch dim) and how torch holds it."""

    shape: tuple[int, ...]
    channels_last: bool = False
    """Keras (..., C) held channels-first in torch as (C, ...): true for rank >= 2 in channels_last models."""
    order: np.ndarray | None = field(default=None, compare=False)
    """Flat features after a Flatten: `order[i]` is the Keras feature index of torch feature i."""

    @property
    def torch_shape(self) -> tuple[int, ...]:
        return (self.shape[-1], *self.shape[:-1]) if self.channels_last else self.shape

    @staticmethod
    def from_torch(shape: tuple[int, ...], channels_last: bool) -> Value:
        cl = channels_last and len(shape) >= 2
        return Value((*shape[1:], shape[0]) if cl else tuple(shape), cl)

    def torch_dim(self, keras_axis: int) -> int:
        """The torch dim (batch included) holding Keras axis `keras_axis` (batch included)."""
        rank = len(self.shape) + 1
        axis = keras_axis % rank
        if not self.channels_last or axis == 0:
            return axis
        return 1 if axis == rank - 1 else axis + 1


@dataclass
class Node:
    """One Keras layer of the model graph."""

    name: str
    key: str
    """Its torch module name (the Keras name made a valid, unique attribute name)."""
    cls: str
    config: dict[str, Any]
    inputs: list[str]
    channels_last: bool = False
    """The model's spatial layers are channels_last (so its rank >= 2 values are permuted in torch)."""
    keras_order: bool = False
    """Flatten only: its consumers cannot take a permuted feature order, so it flattens in Keras order."""
    path: tuple[str, ...] = ()
    """Keras layer names from the outer model down to this layer (nested models add a level each)."""
    registry: str = ""
    """Its converter's name in `LAYERS` (see `registry_name`)."""
    operands: list[str | float] = field(default_factory=list)
    """Keras ops only (`x + 3.0`): the call's positional arguments, a layer name or a constant each."""

    def describe(self) -> str:
        return f"Keras layer {self.cls} {self.name!r}"


@dataclass
class Built:
    out: Value
    layer: nn.Module | None = None
    pad: nn.Module | None = None
    act: nn.Module | None = None


def _no_change(config: dict[str, Any], module: nn.Module) -> None:
    pass


@dataclass(frozen=True)
class Converter:
    build: Callable[[Node, list[Value]], Built]
    weights_in: Callable[[nn.Module, Arrays, dict[str, Any], list[Value]], None] | None = None
    weights_out: Callable[[nn.Module, dict[str, Any], list[Value]], Arrays] | None = None
    export: Callable[[dict[str, Any], nn.Module], None] = _no_change
    keeps_order: bool = False
    """Works feature by feature: a permuted flat input stays permuted the same way."""
    absorbs_order: bool = False
    """Takes a permuted flat input by permuting its own weights (Dense)."""


LAYERS: Registry[Converter] = Registry("Keras layer")
"""Keras layer class → converter; Keras ops (`x + 3.0` in a functional model) are `ops.<Class>` and
layers that ship with `keras.applications` are `applications.<Class>` (see `registry_name`)."""
MODULE_PREFIXES = {
    "keras.layers": "",
    "keras.src.ops.numpy": "ops.",
    "keras.src.applications.convnext": "applications.",
    "keras.src.applications.inception_resnet_v2": "applications.",
}


def registry_name(spec: dict[str, Any]) -> str | None:
    """The `LAYERS` name of a serialized Keras layer, None for a module whose classes are unknown here."""
    prefix = MODULE_PREFIXES.get(str(spec.get("module", "keras.layers")))
    return None if prefix is None else prefix + str(spec.get("class_name"))


def layer(*names: str, **options: Any) -> Callable[[Callable[[Node, list[Value]], Built]], Any]:
    def add(build: Callable[[Node, list[Value]], Built]) -> Callable[[Node, list[Value]], Built]:
        for name in names:
            LAYERS.register(name, Converter(build, **options))
        return build

    return add


# -- helpers ----------------------------------------------------------------------------------------
def _one(node: Node, inputs: list[Value]) -> Value:
    if len(inputs) != 1:
        raise UserError(f"{node.describe()}: expected one input, got {len(inputs)}")
    return inputs[0]


def _tuple(value: Any, n: int) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),) * n


def _set(module: nn.Module, **arrays: np.ndarray | None) -> None:
    with torch.no_grad():
        for name, array in arrays.items():
            target = getattr(module, name)
            if array is None or target is None:
                continue
            value = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
            if value.shape != target.shape:
                raise UserError(f"weight {name!r}: Keras shape {tuple(value.shape)} != {tuple(target.shape)}")
            target.copy_(value)


def _np(tensor: torch.Tensor | None) -> np.ndarray:
    assert tensor is not None
    return tensor.detach().cpu().float().numpy().copy()


def _bias(module: nn.Module) -> Arrays:
    bias = getattr(module, "bias", None)
    return [_np(bias)] if bias is not None else []


def _same_padding(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


Ints = tuple[int, ...]


def _padding(node: Node, mode: str, spatial: Ints, k: Ints, s: Ints, d: Ints) -> list[tuple[int, int]]:
    if mode == "valid":
        return [(0, 0)] * len(spatial)
    if mode == "same":
        return [_same_padding(*args) for args in zip(spatial, k, s, d, strict=True)]
    if mode == "causal" and len(spatial) == 1:
        return [((k[0] - 1) * d[0], 0)]
    raise UserError(f"{node.describe()}: padding {mode!r} is not supported")


def _out_size(size: int, pad: tuple[int, int], k: int, s: int, d: int) -> int:
    return (size + pad[0] + pad[1] - d * (k - 1) - 1) // s + 1


def _torch_pad(pads: list[tuple[int, int]]) -> tuple[int, ...]:
    return tuple(p for pair in reversed(pads) for p in pair)  # torch lists the last dim first


def _pad_module(pads: list[tuple[int, int]], value: float = 0.0) -> nn.Module:
    cls: Any = (nn.ConstantPad1d, nn.ConstantPad2d)[len(pads) - 1]
    return cls(_torch_pad(pads), value)


# -- activations --------------------------------------------------------------------------------------
ACTIVATIONS: Registry[Callable[[int], nn.Module]] = Registry("Keras activation")
for _name, _factory in {
    "linear": lambda dim: nn.Identity(),
    "relu": lambda dim: nn.ReLU(),
    "relu6": lambda dim: nn.ReLU6(),
    "sigmoid": lambda dim: nn.Sigmoid(),
    "hard_sigmoid": lambda dim: nn.Hardsigmoid(),
    "tanh": lambda dim: nn.Tanh(),
    "softmax": lambda dim: nn.Softmax(dim=dim),
    "log_softmax": lambda dim: nn.LogSoftmax(dim=dim),
    "gelu": lambda dim: nn.GELU(),
    "silu": lambda dim: nn.SiLU(),
    "swish": lambda dim: nn.SiLU(),
    "hard_silu": lambda dim: nn.Hardswish(),
    "hard_swish": lambda dim: nn.Hardswish(),
    "elu": lambda dim: nn.ELU(),
    "selu": lambda dim: nn.SELU(),
    "softplus": lambda dim: nn.Softplus(),
    "softsign": lambda dim: nn.Softsign(),
    "mish": lambda dim: nn.Mish(),
    "leaky_relu": lambda dim: nn.LeakyReLU(0.2),
}.items():
    ACTIVATIONS.register(_name, _factory)


def activation(node: Node, name: Any, out: Value) -> nn.Module:
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise UserError(
            f"{node.describe()}: activation {name!r} is not supported (supported: {', '.join(ACTIVATIONS)})"
        )
    return ACTIVATIONS.get(name)(out.torch_dim(-1))


def _fused_activation(node: Node, out: Value) -> nn.Module | None:
    name = node.config.get("activation", "linear")
    return None if name in (None, "linear") else activation(node, name, out)
