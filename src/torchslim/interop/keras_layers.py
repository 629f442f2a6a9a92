"""Converters of the Keras layers that compute: dense, convolutions, normalization, activations, pooling.

Shape-only layers (padding, reshaping, merging, inputs, Keras ops) are in `keras_shapes`, registered
when this module is imported. See `keras_base` for what a converter is.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.errors import UserError
from torchslim.interop.keras_base import (
    LAYERS,
    Arrays,
    Built,
    Ints,
    Node,
    Value,
    _bias,
    _fused_activation,
    _np,
    _one,
    _out_size,
    _pad_module,
    _padding,
    _set,
    _torch_pad,
    _tuple,
    activation,
    layer,
)


# -- dense ------------------------------------------------------------------------------------------
def _dense_in(module: Any, w: Arrays, config: dict[str, Any], inputs: list[Value]) -> None:
    order = inputs[0].order
    kernel = w[0] if order is None else w[0][order]
    weight = kernel.T if isinstance(module, nn.Linear) else kernel.T.reshape(module.weight.shape)
    _set(module, weight=weight, bias=w[1] if len(w) > 1 else None)


def _dense_out(module: Any, config: dict[str, Any], inputs: list[Value]) -> Arrays:
    weight = _np(module.weight)
    kernel = weight.reshape(weight.shape[:2]).T
    order = inputs[0].order
    if order is not None:
        kernel = kernel[np.argsort(order)]
    return [kernel, *_bias(module)]


def _dense_export(config: dict[str, Any], module: Any) -> None:
    config["units"] = module.out_features if isinstance(module, nn.Linear) else module.out_channels


@layer("Dense", weights_in=_dense_in, weights_out=_dense_out, export=_dense_export, absorbs_order=True)
def _dense(node: Node, inputs: list[Value]) -> Built:
    v, cfg = _one(node, inputs), node.config
    if cfg.get("lora_rank") or cfg.get("quantization_config"):
        raise UserError(f"{node.describe()}: LoRA and quantized Dense layers are not supported")
    units, bias = int(cfg["units"]), bool(cfg.get("use_bias", True))
    if v.channels_last:  # Dense on the channel axis of a map: a 1x1 convolution in torch's layout
        if len(v.shape) not in (2, 3):
            raise UserError(f"{node.describe()}: Dense on a {len(v.shape)}-d input is not supported")
        conv_cls: Any = (nn.Conv1d, nn.Conv2d)[len(v.shape) - 2]
        out = Value.from_torch((units, *v.torch_shape[1:]), True)
        return Built(out, conv_cls(v.torch_shape[0], units, 1, bias=bias), act=_fused_activation(node, out))
    out = Value((*v.shape[:-1], units))
    return Built(out, nn.Linear(v.shape[-1], units, bias=bias), act=_fused_activation(node, out))


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


class SeparableConv(nn.Module):
    """Keras SeparableConv: a depthwise convolution, then a 1x1 convolution (which holds the bias)."""

    def __init__(self, depthwise: nn.Module, pointwise: nn.Module) -> None:
        super().__init__()
        self.depthwise, self.pointwise = depthwise, pointwise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def _separable_in(module: Any, w: Arrays, config: dict[str, Any], inputs: list[Value]) -> None:
    _depthwise_in(module.depthwise, w[:1], config, inputs)
    _conv_in(module.pointwise, w[1:], config, inputs)


def _separable_out(module: Any, config: dict[str, Any], inputs: list[Value]) -> Arrays:
    depthwise = _depthwise_out(module.depthwise, config, inputs)
    return [*depthwise, *_conv_out(module.pointwise, config, inputs)]


def _separable_export(config: dict[str, Any], module: Any) -> None:
    _depthwise_export(config, module.depthwise)
    config["filters"] = module.pointwise.out_channels


def _conv(node: Node, inputs: list[Value]) -> Built:
    v, cfg = _one(node, inputs), node.config
    nd = int(node.cls[-2])
    if len(v.shape) != nd + 1:
        raise UserError(f"{node.describe()}: expected a {nd + 1}-d input, got shape {v.shape}")
    cin, spatial = v.torch_shape[0], v.torch_shape[1:]
    k, s = _tuple(cfg["kernel_size"], nd), _tuple(cfg["strides"], nd)
    d = _tuple(cfg.get("dilation_rate", 1), nd)
    pads = _padding(node, cfg["padding"], spatial, k, s, d)
    kind, bias = node.cls[: -len("2D")], bool(cfg.get("use_bias", True))
    groups = int(cfg.get("groups", 1)) if kind == "Conv" else cin
    cout = int(cfg["filters"]) if kind == "Conv" else cin * int(cfg["depth_multiplier"])
    symmetric = all(a == b for a, b in pads)
    padding = tuple(a for a, _ in pads) if symmetric else 0
    conv_cls: Any = (nn.Conv1d, nn.Conv2d)[nd - 1]
    conv: nn.Module = conv_cls(cin, cout, k, s, padding, d, groups, bias and kind != "SeparableConv")
    if kind == "SeparableConv":
        conv = SeparableConv(conv, conv_cls(cout, int(cfg["filters"]), 1, bias=bias))
        cout = int(cfg["filters"])
    sizes = [_out_size(*args) for args in zip(spatial, pads, k, s, d, strict=True)]
    out = Value.from_torch((cout, *sizes), v.channels_last)
    pad = None if symmetric else _pad_module(pads)
    return Built(out, conv, pad=pad, act=_fused_activation(node, out))


layer("Conv1D", "Conv2D", weights_in=_conv_in, weights_out=_conv_out, export=_conv_export)(_conv)
layer("DepthwiseConv1D", "DepthwiseConv2D", weights_in=_depthwise_in, weights_out=_depthwise_out,
      export=_depthwise_export)(_conv)  # fmt: skip
layer("SeparableConv1D", "SeparableConv2D", weights_in=_separable_in, weights_out=_separable_out,
      export=_separable_export)(_conv)  # fmt: skip


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


from torchslim.interop import keras_scale, keras_shapes  # noqa: E402, F401  (they register their layers)

__all__ = ["LAYERS", "Built", "Node", "Value"]
