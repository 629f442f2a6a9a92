"""Converters of the Keras layers that move values without computing on them: padding, cropping,
flattening, reshaping, merging (with broadcasting), inputs, and Keras ops such as `x + 3.0` that a
functional model records as nodes. See `keras_base` for what a converter is."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from torchslim.errors import UserError
from torchslim.interop.keras_base import Built, Node, Value, _one, _pad_module, _tuple, layer


# -- padding and cropping ------------------------------------------------------------------------------
def _pairs(node: Node, key: str, nd: int) -> list[tuple[int, int]]:
    """Keras' padding/cropping (int, (a, b) or ((t, b), (l, r))): one (before, after) per spatial dim."""
    raw = node.config[key]
    if nd == 1:
        pair = _tuple(raw, 2)
        return [(pair[0], pair[1])]
    per_dim = raw if isinstance(raw, (list, tuple)) else [raw] * nd
    return [(p[0], p[1]) for p in (_tuple(r, 2) for r in per_dim)]


@layer("ZeroPadding1D", "ZeroPadding2D")
def _zero_padding(node: Node, inputs: list[Value]) -> Built:
    v, nd = _one(node, inputs), int(node.cls[-2])
    pads = _pairs(node, "padding", nd)
    sizes = [n + a + b for n, (a, b) in zip(v.torch_shape[1:], pads, strict=True)]
    return Built(Value.from_torch((v.torch_shape[0], *sizes), v.channels_last), _pad_module(pads))


class Crop(nn.Module):
    """Keep `[start, stop)` of each spatial dim (torch dims 2, 3, ...)."""

    def __init__(self, bounds: list[tuple[int, int]]) -> None:
        super().__init__()
        self.bounds = bounds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = (slice(None), slice(None), *(slice(a, b) for a, b in self.bounds))
        return x[index]


@layer("Cropping1D", "Cropping2D")
def _cropping(node: Node, inputs: list[Value]) -> Built:
    v, nd = _one(node, inputs), int(node.cls[-2])
    if len(v.shape) != nd + 1:
        raise UserError(f"{node.describe()}: expected a {nd + 1}-d input, got shape {v.shape}")
    spatial = v.torch_shape[1:]
    bounds = [(a, n - b) for n, (a, b) in zip(spatial, _pairs(node, "cropping", nd), strict=True)]
    if any(stop <= start for start, stop in bounds):
        raise UserError(f"{node.describe()}: cropping {node.config['cropping']} leaves nothing of {v.shape}")
    out = Value.from_torch((v.torch_shape[0], *(b - a for a, b in bounds)), v.channels_last)
    return Built(out, Crop(bounds))


# -- flatten and reshape -------------------------------------------------------------------------------
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


class Reshape(nn.Module):
    """Reshape (batch kept), between optional permutes from torch's layout to Keras' and back."""

    def __init__(self, shape: tuple[int, ...], before: tuple[int, ...] | None, after: tuple[int, ...] | None):
        super().__init__()
        self.shape, self.before, self.after = shape, before, after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.before is not None:
            x = x.permute(*self.before)
        x = x.reshape(-1, *self.shape)
        return x if self.after is None else x.permute(*self.after)


def _layout_perms(v: Value) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(torch -> Keras, Keras -> torch) dim orders of a channels_last value, None if the layouts agree."""
    if not v.channels_last:
        return None
    rank = len(v.shape) + 1
    return (0, *range(2, rank), 1), (0, rank - 1, *range(1, rank - 1))


def _target(node: Node, v: Value) -> tuple[int, ...]:
    target = [int(d) for d in node.config["target_shape"]]
    size, known = math.prod(v.shape), math.prod(d for d in target if d != -1)
    if target.count(-1) == 1 and known and size % known == 0:
        target[target.index(-1)] = size // known
    if math.prod(target) != size or min(target) < 1:
        raise UserError(f"{node.describe()}: cannot reshape {v.shape} to {node.config['target_shape']}")
    return tuple(target)


PROBE_LIMIT = 1 << 24
"""Largest reshape whose element order is checked by running it (a saved architecture is untrusted)."""


@layer("Reshape")
def _reshape(node: Node, inputs: list[Value]) -> Built:
    v = _one(node, inputs)
    out = Value(_target(node, v), node.channels_last and len(node.config["target_shape"]) >= 2)
    before, after = _layout_perms(v), _layout_perms(out)
    exact = Reshape(out.shape, None if before is None else before[0], None if after is None else after[1])
    if math.prod(v.shape) > PROBE_LIMIT:  # exact either way; a plain view only matters for pruning
        return Built(out, exact)
    probe = torch.arange(math.prod(v.shape)).reshape(1, *v.torch_shape)
    plain = Reshape(out.torch_shape, None, None)  # the same elements in the same order: no permutes
    return Built(out, plain if torch.equal(plain(probe), exact(probe)) else exact)


# -- merging -------------------------------------------------------------------------------------------
def broadcast(node: Node, values: list[Value]) -> tuple[Value, list[tuple[int, ...] | None]]:
    """The merged value of `values` under Keras' broadcasting, and the torch shape to view each input as
    first (None: as it is). Keras pads a shorter shape with 1s after the batch dim, then broadcasts."""
    rank = max(len(v.shape) for v in values)
    padded = [(1,) * (rank - len(v.shape)) + v.shape for v in values]
    shape = []
    for sizes in zip(*padded, strict=True):
        big = {n for n in sizes if n != 1}
        if len(big) > 1:
            raise UserError(f"{node.describe()}: cannot broadcast shapes {[v.shape for v in values]}")
        shape.append(big.pop() if big else 1)
    out = Value(tuple(shape), node.channels_last and rank >= 2)
    views: list[tuple[int, ...] | None] = []
    for v, dims in zip(values, padded, strict=True):
        view = Value(dims, out.channels_last)
        if len(v.shape) == rank and view.channels_last == v.channels_last:
            views.append(None)
            continue
        if [n for n in view.torch_shape if n != 1] != [n for n in v.torch_shape if n != 1]:
            raise UserError(f"{node.describe()}: cannot broadcast {v.shape} in torch's layout")
        views.append(view.torch_shape)
    return out, views


def _combine(op: str, a: Any, b: Any) -> Any:
    if op in ("add", "average"):
        return a + b
    if op == "subtract":
        return a - b
    if op == "multiply":
        return a * b
    if op in ("divide", "true_divide"):
        return a / b
    if isinstance(a, float):  # a constant operand (Keras ops): maximum and minimum commute
        a, b = b, a
    if isinstance(b, float):
        return a.clamp(min=b) if op == "maximum" else a.clamp(max=b)
    return torch.maximum(a, b) if op == "maximum" else torch.minimum(a, b)


class Merge(nn.Module):
    """Elementwise merge of broadcastable inputs (Keras Add, Multiply, Average, ...), each first viewed as
    `views[i]` (a torch shape without batch, None: as is) so that torch broadcasts as Keras does."""

    def __init__(self, op: str, views: list[tuple[int, ...] | None] | None = None) -> None:
        super().__init__()
        self.op, self.views = op, views

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.views is not None:
            xs = tuple(x if v is None else x.reshape(-1, *v) for x, v in zip(xs, self.views, strict=True))
        out = xs[0]
        for x in xs[1:]:
            out = _combine(self.op, out, x)
        return out / len(xs) if self.op == "average" else out


@layer("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
def _merge(node: Node, inputs: list[Value]) -> Built:
    if len(inputs) < 2 or (node.cls == "Subtract" and len(inputs) != 2):
        raise UserError(
            f"{node.describe()}: needs {'two' if node.cls == 'Subtract' else 'two or more'} inputs"
        )
    out, views = broadcast(node, inputs)
    return Built(out, Merge(node.cls.lower(), views if any(v is not None for v in views) else None))


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


# -- inputs --------------------------------------------------------------------------------------------
@layer("InputLayer")
def _input(node: Node, inputs: list[Value]) -> Built:
    """A model input; the input layer of a nested model passes the outer value through."""
    shape = node.config.get("batch_shape") or node.config.get("batch_input_shape") or [None, None]
    if inputs:
        v = _one(node, inputs)
        if len(shape) != len(v.shape) + 1:
            raise UserError(
                f"{node.describe()}: a nested model's input {shape} gets a value of shape {v.shape}"
            )
        return Built(v, nn.Identity())
    if any(not isinstance(n, int) for n in shape[1:]):
        raise UserError(f"{node.describe()}: every dimension but the batch must be fixed, got {shape}")
    return Built(Value(tuple(shape[1:]), node.channels_last and len(shape) >= 3))


# -- Keras ops -----------------------------------------------------------------------------------------
class BinaryOp(nn.Module):
    """A Keras op of two operands, tensors or constants (`x + 3.0`, `3.0 - x`, `x * y`)."""

    def __init__(self, op: str, constants: dict[int, float], views: list[tuple[int, ...] | None]) -> None:
        super().__init__()
        self.op, self.constants, self.views = op, constants, views

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        tensors = iter(x if v is None else x.reshape(-1, *v) for x, v in zip(xs, self.views, strict=True))
        a, b = (self.constants[i] if i in self.constants else next(tensors) for i in range(2))
        return _combine(self.op, a, b)


OPS = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply", "Divide": "divide",
       "TrueDivide": "true_divide", "Maximum": "maximum", "Minimum": "minimum"}  # fmt: skip


def _binary_op(node: Node, inputs: list[Value]) -> Built:
    if len(node.operands) != 2 or not inputs:
        raise UserError(f"{node.describe()}: expected two operands, got {node.operands}")
    if len({len(v.shape) for v in inputs}) > 1:  # numpy broadcasting would align the batch dim too
        raise UserError(f"{node.describe()}: operands of different ranks {[v.shape for v in inputs]}")
    constants = {i: float(c) for i, c in enumerate(node.operands) if isinstance(c, float)}
    out, views = broadcast(node, inputs)
    return Built(out, BinaryOp(OPS[node.cls], constants, views))


for _name in OPS:
    layer(f"ops.{_name}")(_binary_op)
