"""Converters of the Keras layers that shift and scale features: LayerNormalization, Normalization,
Rescaling, and the scale layers that ship with `keras.applications` (ConvNeXt's LayerScale,
Inception-ResNet's CustomScaleLayer). Constants from the Keras config become buffers in torch layout."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from torchslim.errors import UserError
from torchslim.interop.keras_base import Arrays, Built, Node, Value, _np, _one, _set, layer

KERAS_EPSILON = 1e-7
"""`keras.config.epsilon()`: Normalization divides by max(sqrt(variance), this)."""


def _axes(node: Node, v: Value, default: Any = -1) -> list[int]:
    """The layer's `axis` setting as Keras axes counted with the batch, non-negative and sorted."""
    axis = node.config.get("axis", default)
    axes = _listed(axis)
    rank = len(v.shape) + 1
    if not all(isinstance(a, int) and -rank <= a < rank and a % rank for a in axes):
        raise UserError(f"{node.describe()}: axis {axis} is not a feature axis of shape {v.shape}")
    return sorted(a % rank for a in axes)


def _listed(axis: Any) -> list[Any]:
    return [] if axis is None else list(axis) if isinstance(axis, (list, tuple)) else [axis]


def _to_torch(array: np.ndarray, v: Value) -> np.ndarray:
    """A Keras array broadcastable to `v` (batch dim included) in torch's layout."""
    return np.moveaxis(array, -1, 1) if v.channels_last else array


def _to_keras(array: np.ndarray, v: Value) -> np.ndarray:
    return np.moveaxis(array, 1, -1) if v.channels_last else array


def _buffer(array: Any) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


# -- LayerNormalization --------------------------------------------------------------------------------
class ChannelLayerNorm(nn.Module):
    """Layer norm over dim 1 of a channels-first tensor (Keras' axis -1 of a channels_last map)."""

    def __init__(self, norm: nn.LayerNorm, rank: int) -> None:
        super().__init__()
        self.norm = norm
        self.to_last = (0, *range(2, rank), 1)
        self.to_first = (0, rank - 1, *range(1, rank - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(*self.to_last)).permute(*self.to_first)


def _norm_of(module: nn.Module) -> nn.LayerNorm:
    return module.norm if isinstance(module, ChannelLayerNorm) else module  # type: ignore[return-value]


def _ln_in(module: Any, w: Arrays, config: dict[str, Any], inputs: list[Value]) -> None:
    arrays = list(w)
    gamma = arrays.pop(0) if config.get("scale", True) else None
    beta = arrays.pop(0) if config.get("center", True) else None
    _set(_norm_of(module), weight=gamma, bias=beta)


def _ln_out(module: Any, config: dict[str, Any], inputs: list[Value]) -> Arrays:
    norm = _norm_of(module)
    return [_np(p) for p in (norm.weight, norm.bias) if p is not None]


@layer("LayerNormalization", weights_in=_ln_in, weights_out=_ln_out, keeps_order=False)
def _layer_norm(node: Node, inputs: list[Value]) -> Built:
    v, cfg = _one(node, inputs), node.config
    scale, center = bool(cfg.get("scale", True)), bool(cfg.get("center", True))
    if _axes(node, v) != [len(v.shape)] or cfg.get("rms_scaling") or (center and not scale):
        raise UserError(
            f"{node.describe()}: only the last axis, without rms_scaling and with scale if centered, "
            "is supported"
        )
    norm = nn.LayerNorm(
        v.shape[-1], eps=float(cfg.get("epsilon", 1e-3)), elementwise_affine=scale, bias=center
    )
    return Built(v, ChannelLayerNorm(norm, len(v.shape) + 1) if v.channels_last else norm)


# -- Normalization and Rescaling -----------------------------------------------------------------------
class Standardize(nn.Module):
    """Keras Normalization: (x - mean) / sqrt(variance), or its inverse, with Keras' floor on the std."""

    mean: torch.Tensor
    variance: torch.Tensor

    def __init__(self, mean: np.ndarray, variance: np.ndarray, invert: bool) -> None:
        super().__init__()
        self.invert = invert
        self.register_buffer("mean", _buffer(mean))
        self.register_buffer("variance", _buffer(variance))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        std = self.variance.sqrt().clamp_min(KERAS_EPSILON)
        return x * std + self.mean if self.invert else (x - self.mean) / std


def _keras_broadcast(config: dict[str, Any], v: Value) -> list[int]:
    """Keras' broadcast shape of the statistics (batch dim included): the kept axes' sizes, 1 elsewhere."""
    axis = config.get("axis", -1)
    rank = len(v.shape) + 1
    keep = {a % rank for a in _listed(axis)}
    return [1, *(d if i + 1 in keep else 1 for i, d in enumerate(v.shape))]


def _kept(config: dict[str, Any], v: Value) -> list[int]:
    """The shape of Keras' statistics weights: the sizes of the kept axes."""
    axis = config.get("axis", -1)
    rank = len(v.shape) + 1
    return [v.shape[a - 1] for a in sorted({a % rank for a in _listed(axis)})]


def _normalization_in(module: Any, w: Arrays, config: dict[str, Any], inputs: list[Value]) -> None:
    if config.get("mean") is None:  # adapted statistics are weights: mean, variance, count
        v, shape = inputs[0], _keras_broadcast(config, inputs[0])
        _set(module, mean=_to_torch(w[0].reshape(shape), v), variance=_to_torch(w[1].reshape(shape), v))


def _normalization_out(module: Any, config: dict[str, Any], inputs: list[Value]) -> Arrays:
    if config.get("mean") is not None:
        return []
    v = inputs[0]
    mean, variance = (_to_keras(_np(b), v).reshape(_kept(config, v)) for b in (module.mean, module.variance))
    return [mean, variance, np.array(0, dtype=np.int64)]


@layer("Normalization", weights_in=_normalization_in, weights_out=_normalization_out)
def _normalization(node: Node, inputs: list[Value]) -> Built:
    v, cfg = _one(node, inputs), node.config
    _axes(node, v)
    shape = _keras_broadcast(cfg, v)
    stats = []
    for key in ("mean", "variance"):
        given = cfg.get(key)
        array = np.zeros(shape) if key == "mean" else np.ones(shape)
        if given is not None:
            raw = np.asarray(given, dtype=np.float64)
            kept = _kept(cfg, v)
            fits = raw.size == math.prod(kept)
            array = np.broadcast_to(raw.reshape(kept) if fits else raw, kept).reshape(shape)
        stats.append(_to_torch(array, v))
    return Built(v, Standardize(stats[0], stats[1], bool(cfg.get("invert", False))))


class Affine(nn.Module):
    """x * scale + offset with constant (config) scale and offset: Keras Rescaling."""

    scale: torch.Tensor
    offset: torch.Tensor

    def __init__(self, scale: np.ndarray, offset: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("scale", _buffer(scale), persistent=False)
        self.register_buffer("offset", _buffer(offset), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset


@layer("Rescaling", keeps_order=False)
def _rescaling(node: Node, inputs: list[Value]) -> Built:
    v = _one(node, inputs)
    arrays = []
    for key, default in (("scale", 1.0), ("offset", 0.0)):
        raw = node.config.get(key, default)
        if not isinstance(raw, (int, float, list)):
            raise UserError(f"{node.describe()}: {key} {raw!r} is not a number or a list of numbers")
        array = np.asarray(raw, dtype=np.float64)
        if array.ndim > 1 or (array.ndim == 1 and array.shape[0] not in (1, v.shape[-1])):
            raise UserError(f"{node.describe()}: {key} of shape {array.shape} for inputs {v.shape}")
        full = np.broadcast_to(array, (1,) * len(v.shape) + array.shape[-1:]) if array.ndim else array
        arrays.append(_to_torch(np.asarray(full), v) if array.ndim else array)
    return Built(v, Affine(arrays[0], arrays[1]))


# -- keras.applications' own layers --------------------------------------------------------------------
class ChannelScale(nn.Module):
    """x * gamma with a learned gamma per channel: ConvNeXt's LayerScale."""

    def __init__(self, channels: int, rank: int, channels_first: bool) -> None:
        super().__init__()
        shape = (channels, *(1,) * (rank - 2)) if channels_first else (channels,)
        self.gamma = nn.Parameter(torch.ones(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def _scale_in(module: Any, w: Arrays, config: dict[str, Any], inputs: list[Value]) -> None:
    _set(module, gamma=w[0].reshape(module.gamma.shape))


def _scale_export(config: dict[str, Any], module: Any) -> None:
    config["projection_dim"] = int(module.gamma.shape[0])


@layer("applications.LayerScale", weights_in=_scale_in, export=_scale_export, keeps_order=True,
       weights_out=lambda module, config, inputs: [_np(module.gamma).reshape(-1)])  # fmt: skip
def _layer_scale(node: Node, inputs: list[Value]) -> Built:
    v = _one(node, inputs)
    if int(node.config["projection_dim"]) != v.shape[-1]:
        raise UserError(f"{node.describe()}: projection_dim {node.config['projection_dim']} != {v.shape[-1]}")
    return Built(v, ChannelScale(v.shape[-1], len(v.shape) + 1, v.channels_last))


class ScaledAdd(nn.Module):
    """a + b * scale: Inception-ResNet's CustomScaleLayer (residual scaling)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b * self.scale


@layer("applications.CustomScaleLayer")
def _custom_scale(node: Node, inputs: list[Value]) -> Built:
    if len(inputs) != 2 or inputs[0] != inputs[1]:
        raise UserError(f"{node.describe()}: needs two inputs of one shape, got {[v.shape for v in inputs]}")
    return Built(Value(inputs[0].shape, inputs[0].channels_last), ScaledAdd(float(node.config["scale"])))
