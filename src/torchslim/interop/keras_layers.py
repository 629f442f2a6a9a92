"""One converter per Keras layer class: the torch modules it becomes, and its weights both ways.

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
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

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


# -- dense ------------------------------------------------------------------------------------------
def _dense_in(module: Any, w: Arrays, config: dict[str, Any], inputs: list[Value]) -> None:
    order = inputs[0].order
    kernel = w[0] if order is None else w[0][order]
    _set(module, weight=kernel.T, bias=w[1] if len(w) > 1 else None)


def _dense_out(module: Any, config: dict[str, Any], inputs: list[Value]) -> Arrays:
    kernel = _np(module.weight).T
    order = inputs[0].order
    if order is not None:
        kernel = kernel[np.argsort(order)]
    return [kernel, *_bias(module)]


def _dense_export(config: dict[str, Any], module: Any) -> None:
    config["units"] = module.out_features


@layer("Dense", weights_in=_dense_in, weights_out=_dense_out, export=_dense_export, absorbs_order=True)
def _dense(node: Node, inputs: list[Value]) -> Built:
    v, cfg = _one(node, inputs), node.config
    if v.channels_last:
        raise UserError(
            f"{node.describe()}: Dense on a {len(v.shape)}-d channels_last input is not supported"
        )
    if cfg.get("lora_rank") or cfg.get("quantization_config"):
        raise UserError(f"{node.describe()}: LoRA and quantized Dense layers are not supported")
    out = Value((*v.shape[:-1], int(cfg["units"])))
    linear = nn.Linear(v.shape[-1], out.shape[-1], bias=bool(cfg.get("use_bias", True)))
    return Built(out, linear, act=_fused_activation(node, out))


# -- convolutions -----------------------------------------------------------------------------------
def _conv_in(module: Any, w: Arrays, config: dict[str, Any], inputs: list[Value]) -> None:
    nd = w[0].ndim - 2
    _set(module, weight=np.transpose(w[0], (nd + 1, nd, *range(nd))), bias=w[1] if len(w) > 1 else None)


def _conv_out(module: Any, config: dict[str, Any], inputs: list[Value]) -> Arrays:
    weight = _np(module.weight)
    nd = weight.ndim - 2
    return [np.transpose(weight, (*range(2, nd + 2), 1, 0)), *_bias(module)]


def _conv_export(config: dict[str, Any], module: Any) -> None:
    config["filters"], config["groups"] = module.out_channels, module.groups


def _depthwise_in(module: Any, w: Arrays, config: dict[str, Any], inputs: list[Value]) -> None:
    kernel = w[0].reshape(*w[0].shape[:-2], -1)  # (*k, C, m) -> (*k, C*m): channel c*m + j
    weight = np.moveaxis(kernel, -1, 0)[:, None]
    _set(module, weight=weight, bias=w[1] if len(w) > 1 else None)


def _depthwise_out(module: Any, config: dict[str, Any], inputs: list[Value]) -> Arrays:
    weight = _np(module.weight)[:, 0]  # (C*m, *k)
    kernel = np.moveaxis(weight, 0, -1)
    return [kernel.reshape(*kernel.shape[:-1], module.groups, -1), *_bias(module)]


def _depthwise_export(config: dict[str, Any], module: Any) -> None:
    config["depth_multiplier"] = module.out_channels // module.groups


def _conv(node: Node, inputs: list[Value]) -> Built:
    v, cfg = _one(node, inputs), node.config
    nd = int(node.cls[-2])
    if len(v.shape) != nd + 1:
        raise UserError(f"{node.describe()}: expected a {nd + 1}-d input, got shape {v.shape}")
    cin, spatial = v.torch_shape[0], v.torch_shape[1:]
    k, s = _tuple(cfg["kernel_size"], nd), _tuple(cfg["strides"], nd)
    d = _tuple(cfg.get("dilation_rate", 1), nd)
    pads = _padding(node, cfg["padding"], spatial, k, s, d)
    depthwise = node.cls.startswith("Depthwise")
    groups = cin if depthwise else int(cfg.get("groups", 1))
    cout = cin * int(cfg["depth_multiplier"]) if depthwise else int(cfg["filters"])
    symmetric = all(a == b for a, b in pads)
    padding = tuple(a for a, _ in pads) if symmetric else 0
    conv_cls: Any = (nn.Conv1d, nn.Conv2d)[nd - 1]
    conv = conv_cls(cin, cout, k, s, padding, d, groups, bool(cfg.get("use_bias", True)))
    sizes = [_out_size(*args) for args in zip(spatial, pads, k, s, d, strict=True)]
    out = Value.from_torch((cout, *sizes), v.channels_last)
    pad = None if symmetric else _pad_module(pads)
    return Built(out, conv, pad=pad, act=_fused_activation(node, out))


layer("Conv1D", "Conv2D", weights_in=_conv_in, weights_out=_conv_out, export=_conv_export)(_conv)
layer("DepthwiseConv1D", "DepthwiseConv2D", weights_in=_depthwise_in, weights_out=_depthwise_out,
      export=_depthwise_export)(_conv)  # fmt: skip


@layer("ZeroPadding1D", "ZeroPadding2D")
def _zero_padding(node: Node, inputs: list[Value]) -> Built:
    v, nd = _one(node, inputs), int(node.cls[-2])
    raw = node.config["padding"]
    pairs = [_tuple(p, 2) for p in raw] if nd == 2 else [_tuple(raw, 2)]
    pads = [(p[0], p[1]) for p in pairs]
    sizes = [n + a + b for n, (a, b) in zip(v.torch_shape[1:], pads, strict=True)]
    return Built(Value.from_torch((v.torch_shape[0], *sizes), v.channels_last), _pad_module(pads))


# -- normalization ----------------------------------------------------------------------------------
def _bn_in(module: Any, w: Arrays, config: dict[str, Any], inputs: list[Value]) -> None:
    *affine, mean, var = w
    gamma = affine.pop(0) if config.get("scale", True) else None
    beta = affine.pop(0) if config.get("center", True) else None
    _set(module, weight=gamma, bias=beta, running_mean=mean, running_var=var)


def _bn_out(module: Any, config: dict[str, Any], inputs: list[Value]) -> Arrays:
    scale = [_np(module.weight)] if config.get("scale", True) else []
    center = [_np(module.bias)] if config.get("center", True) else []
    return [*scale, *center, _np(module.running_mean), _np(module.running_var)]


def _bn_export(config: dict[str, Any], module: Any) -> None:
    """A scale or offset Keras left out but training has since moved is written out."""
    config["scale"] = config.get("scale", True) or bool((module.weight != 1).any())
    config["center"] = config.get("center", True) or bool((module.bias != 0).any())


@layer("BatchNormalization", weights_in=_bn_in, weights_out=_bn_out, export=_bn_export)
def _batch_norm(node: Node, inputs: list[Value]) -> Built:
    v, cfg = _one(node, inputs), node.config
    axis = cfg.get("axis", -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    if not isinstance(axis, int) or v.torch_dim(axis) != 1 or len(v.shape) > 4:
        raise UserError(f"{node.describe()}: normalizing axis {axis} of shape {v.shape} is not supported")
    cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm1d, 3: nn.BatchNorm2d, 4: nn.BatchNorm3d}[len(v.shape)]
    momentum = round(1 - float(cfg.get("momentum", 0.99)), 8)  # torch weighs the new batch, Keras the old
    bn = cls(v.torch_shape[0], eps=float(cfg.get("epsilon", 1e-3)), momentum=momentum)
    return Built(v, bn)


# -- activations and dropout --------------------------------------------------------------------------
@layer("Activation", keeps_order=True)
def _activation_layer(node: Node, inputs: list[Value]) -> Built:
    v = _one(node, inputs)
    return Built(v, activation(node, node.config.get("activation"), v))


@layer("ReLU", keeps_order=True)
def _relu(node: Node, inputs: list[Value]) -> Built:
    v, cfg = _one(node, inputs), node.config
    top, slope = cfg.get("max_value"), float(cfg.get("negative_slope") or 0.0)
    if float(cfg.get("threshold") or 0.0) != 0.0 or (top is not None and slope):
        raise UserError(
            f"{node.describe()}: a threshold, or a max_value with a negative_slope, is not supported"
        )
    if top is not None:
        return Built(v, nn.ReLU6() if float(top) == 6.0 else nn.Hardtanh(0.0, float(top)))
    return Built(v, nn.LeakyReLU(slope) if slope else nn.ReLU())


@layer("LeakyReLU", keeps_order=True)
def _leaky_relu(node: Node, inputs: list[Value]) -> Built:
    slope = node.config.get("negative_slope", node.config.get("alpha", 0.3))
    return Built(_one(node, inputs), nn.LeakyReLU(float(slope)))


@layer("Softmax", keeps_order=True)
def _softmax(node: Node, inputs: list[Value]) -> Built:
    v, axis = _one(node, inputs), node.config.get("axis", -1)
    if not isinstance(axis, int):
        raise UserError(f"{node.describe()}: softmax over several axes is not supported")
    return Built(v, nn.Softmax(dim=v.torch_dim(axis)))


@layer("Dropout", keeps_order=True)
def _dropout(node: Node, inputs: list[Value]) -> Built:
    return Built(_one(node, inputs), nn.Dropout(float(node.config.get("rate", 0.0))))


# -- pooling --------------------------------------------------------------------------------------
def _pool(node: Node, inputs: list[Value]) -> Built:
    v, cfg, nd = _one(node, inputs), node.config, int(node.cls[-2])
    spatial = v.torch_shape[1:]
    k = _tuple(cfg["pool_size"], nd)
    s = _tuple(cfg.get("strides") or k, nd)
    pads = _padding(node, cfg.get("padding", "valid"), spatial, k, s, (1,) * nd)
    even = all(a == b for a, b in pads)
    padding = tuple(a for a, _ in pads) if even else (0,) * nd
    pad = None
    max_cls: Any = (nn.MaxPool1d, nn.MaxPool2d)[nd - 1]
    avg_cls: Any = (nn.AvgPool1d, nn.AvgPool2d)[nd - 1]
    if node.cls.startswith("Max"):  # padding never wins a max
        pool: nn.Module = max_cls(k, s, padding)
        pad = None if even else _pad_module(pads, -math.inf)
    elif even:  # Keras averages over the real elements only
        pool = avg_cls(k, s, padding, count_include_pad=False)
    else:
        pool = UnevenAvgPool(_torch_pad(pads), k, s, spatial)
    sizes = [_out_size(n, p, kk, ss, 1) for n, p, kk, ss in zip(spatial, pads, k, s, strict=True)]
    return Built(Value.from_torch((v.torch_shape[0], *sizes), v.channels_last), pool, pad=pad)


layer("MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D")(_pool)


class UnevenAvgPool(nn.Module):
    """Average pooling over uneven 'same' padding, averaging the real elements only (as Keras does)."""

    scale: torch.Tensor

    def __init__(self, pad: Ints, kernel: Ints, stride: Ints, size: Ints) -> None:
        super().__init__()
        self.pad, self.kernel, self.stride = pad, kernel, stride
        count = self._pool(torch.ones(1, 1, *size))
        self.register_buffer("scale", 1.0 / count, persistent=False)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        pool: Any = F.avg_pool1d if len(self.kernel) == 1 else F.avg_pool2d
        return pool(F.pad(x, self.pad), self.kernel, self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._pool(x) * self.scale


class GlobalPool(nn.Module):
    """Mean or max over the spatial dims (torch layout)."""

    def __init__(self, op: str, dims: tuple[int, ...], keepdim: bool) -> None:
        super().__init__()
        self.op, self.dims, self.keepdim = op, dims, keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op == "max":
            return x.amax(self.dims, keepdim=self.keepdim)
        return x.mean(self.dims, keepdim=self.keepdim)


@layer("GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D")
def _global_pool(node: Node, inputs: list[Value]) -> Built:
    v, nd = _one(node, inputs), int(node.cls[-2])
    keep = bool(node.config.get("keepdims", False))
    channels = v.torch_shape[0]
    out = Value.from_torch((channels, *(1,) * nd) if keep else (channels,), v.channels_last)
    return Built(out, GlobalPool("max" if "Max" in node.cls else "mean", tuple(range(2, nd + 2)), keep))


# -- reshaping and merging ----------------------------------------------------------------------------
class KerasFlatten(nn.Module):
    """Flatten in Keras' feature order (a permute first): used when no Dense can absorb the order."""

    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims).flatten(1)


def flatten_dims(v: Value, data_format: str) -> tuple[int, ...]:
    """The torch dim order (batch first) whose flattening is Keras' Flatten of `v`."""
    rank = len(v.shape)
    axes = [*range(1, rank), 0] if data_format == "channels_first" else list(range(rank))
    return (0, *(Value(v.shape, v.channels_last).torch_dim(a + 1) for a in axes))


@layer("Flatten", keeps_order=True)
def _flatten(node: Node, inputs: list[Value]) -> Built:
    v = _one(node, inputs)
    if len(v.shape) <= 1:
        return Built(v, nn.Flatten())
    flat = (math.prod(v.shape),)
    dims = flatten_dims(v, node.config.get("data_format", "channels_last"))
    if list(dims) == sorted(dims):
        return Built(Value(flat), nn.Flatten())
    if node.keras_order:
        return Built(Value(flat), KerasFlatten(dims))
    keras_pos = np.arange(flat[0]).reshape(v.torch_shape).transpose([d - 1 for d in dims[1:]]).ravel()
    return Built(Value(flat, order=np.argsort(keras_pos)), nn.Flatten())


class Merge(nn.Module):
    """Elementwise merge of several same-shaped inputs (Keras Add, Multiply, Average, ...)."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            if self.op in ("add", "average"):
                out = out + x
            elif self.op == "subtract":
                out = out - x
            elif self.op == "multiply":
                out = out * x
            else:
                out = torch.maximum(out, x) if self.op == "maximum" else torch.minimum(out, x)
        return out / len(xs) if self.op == "average" else out


@layer("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
def _merge(node: Node, inputs: list[Value]) -> Built:
    if len({(v.shape, v.channels_last) for v in inputs}) != 1:
        raise UserError(f"{node.describe()}: inputs of different shapes {[v.shape for v in inputs]}")
    return Built(replace(inputs[0], order=None), Merge(node.cls.lower()))


class Concat(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.dim)


@layer("Concatenate")
def _concatenate(node: Node, inputs: list[Value]) -> Built:
    first, axis = inputs[0], int(node.config.get("axis", -1))
    keras_axis = axis % (len(first.shape) + 1)
    if keras_axis == 0 or any(len(v.shape) != len(first.shape) for v in inputs):
        raise UserError(
            f"{node.describe()}: cannot concatenate shapes {[v.shape for v in inputs]} on axis {axis}"
        )
    shape = list(first.shape)
    shape[keras_axis - 1] = sum(v.shape[keras_axis - 1] for v in inputs)
    return Built(Value(tuple(shape), first.channels_last), Concat(first.torch_dim(axis)))


@layer("InputLayer")
def _input(node: Node, inputs: list[Value]) -> Built:
    shape = node.config.get("batch_shape") or node.config.get("batch_input_shape") or [None, None]
    if any(not isinstance(n, int) for n in shape[1:]):
        raise UserError(f"{node.describe()}: every dimension but the batch must be fixed, got {shape}")
    return Built(Value(tuple(shape[1:]), node.channels_last and len(shape) >= 3))
