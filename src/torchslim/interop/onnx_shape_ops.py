"""Converters for shape arithmetic, indexing and logic: what transformer exports are made of.

A shape computed from a runtime tensor (`Shape`, then `Gather`/`Concat`/...) stays an int64 tensor in
the torch graph, so the imported model follows the input's batch and sequence length as the ONNX graph
does; a node whose inputs are all constants is folded before it gets here (see `Builder.run`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from torchslim.interop import onnx_runtime as R
from torchslim.interop.onnx_import import Builder, Value, _array
from torchslim.interop.onnx_ops import _param, register

if TYPE_CHECKING:
    import onnx


def ints_arg(b: Builder, name: str) -> list[int] | fx.Node:
    """A list of ints when `name` is a constant (baked into the graph), else its runtime tensor."""
    if b.is_const(name):
        return [int(v) for v in b.const(name).reshape(-1)]
    return b.tensor(name)


def constant_node(b: Builder, array: np.ndarray, hint: str) -> fx.Node:
    """A buffer holding `array` (for values that come from attributes, not graph inputs)."""
    name = b.unique(f"{hint}__value")
    b.values[name] = array
    return b.tensor(name)


@register("Shape")
def shape(b: Builder, node: onnx.NodeProto) -> fx.Node:
    a = b.attrs()
    return b.call(R.shape_of, b.tensor(node.input[0]), int(a.get("start", 0)), a.get("end"))


@register("Size")
def size(b: Builder, node: onnx.NodeProto) -> fx.Node:
    return b.call(R.size_of, b.tensor(node.input[0]))


@register("ConstantOfShape")
def constant_of_shape(b: Builder, node: onnx.NodeProto) -> fx.Node:
    attr = b.attrs().get("value")
    value = _array(attr) if attr is not None else np.zeros(1, np.float32)
    return b.call(R.constant_of_shape, ints_arg(b, node.input[0]), constant_node(b, value, node.output[0]))


@register("Expand")
def expand(b: Builder, node: onnx.NodeProto) -> fx.Node:
    return b.call(R.expand, b.tensor(node.input[0]), ints_arg(b, node.input[1]))


@register("Tile")
def tile(b: Builder, node: onnx.NodeProto) -> fx.Node:
    return b.call(R.tile, b.tensor(node.input[0]), ints_arg(b, node.input[1]))


@register("Range")
def range_(b: Builder, node: onnx.NodeProto) -> fx.Node:
    return b.call(R.arange, *(b.operand(n) for n in node.input[:3]))


@register("Gather")
def gather(b: Builder, node: onnx.NodeProto) -> fx.Node:
    """A constant 2-d float table indexed on axis 0 is an `nn.Embedding` (prunable, quantizable)."""
    axis = int(b.attrs().get("axis", 0))
    data, index = node.input[0], node.input[1]
    if b.is_const(data) and axis == 0 and b.const(data).ndim == 2 and b.const(data).dtype.kind == "f":
        table = b.const(data)
        layer = nn.Embedding(*table.shape)
        layer.weight = _param(table)
        return b.module(layer, b.tensor(index), hint=_stem(data))
    if b.is_const(index) and b.const(index).ndim == 0 and axis >= 0:
        where: tuple[Any, ...] = (slice(None),) * axis + (int(b.const(index)),)
        return b.call(operator.getitem, b.tensor(data), where)
    return b.call(R.gather, b.tensor(data), b.tensor(index), axis)


def _stem(name: str) -> str:
    from torchslim.interop.onnx_import import _identifier

    return _identifier(name.removesuffix(".weight"), "embedding")


@register("GatherElements")
def gather_elements(b: Builder, node: onnx.NodeProto) -> fx.Node:
    axis = int(b.attrs().get("axis", 0))
    return b.call(R.gather_elements, b.tensor(node.input[0]), b.tensor(node.input[1]), axis)


@register("GatherND")
def gather_nd(b: Builder, node: onnx.NodeProto) -> fx.Node:
    batch = int(b.attrs().get("batch_dims", 0))
    return b.call(R.gather_nd, b.tensor(node.input[0]), b.tensor(node.input[1]), batch)


@register("Split")
def split(b: Builder, node: onnx.NodeProto) -> tuple[Value, ...]:
    a = b.attrs()
    axis = int(a.get("axis", 0))
    sizes: list[int] | fx.Node | None = [int(v) for v in a["split"]] if "split" in a else None
    if len(node.input) > 1 and node.input[1]:
        sizes = ints_arg(b, node.input[1])
    count = int(a.get("num_outputs", len(node.output)))
    parts = b.call(R.split, b.tensor(node.input[0]), sizes, axis, count)
    return tuple(b.call(operator.getitem, parts, i) for i in range(len(node.output)))


@register("Einsum")
def einsum(b: Builder, node: onnx.NodeProto) -> fx.Node:
    equation = b.attrs()["equation"]
    equation = equation.decode() if isinstance(equation, bytes) else str(equation)
    return b.call(torch.einsum, equation.replace(" ", ""), *(b.tensor(n) for n in node.input))


@register("CumSum")
def cumsum(b: Builder, node: onnx.NodeProto) -> fx.Node:
    a = b.attrs()
    x, axis = b.tensor(node.input[0]), b.operand(node.input[1])
    return b.call(R.cumsum, x, axis, bool(a.get("exclusive", 0)), bool(a.get("reverse", 0)))


@register("Trilu")
def trilu(b: Builder, node: onnx.NodeProto) -> fx.Node:
    k = b.operand(node.input[1]) if len(node.input) > 1 and node.input[1] else 0
    return b.call(R.trilu, b.tensor(node.input[0]), k, bool(b.attrs().get("upper", 1)))


@register("NonZero")
def nonzero(b: Builder, node: onnx.NodeProto) -> fx.Node:
    return b.call(R.nonzero, b.tensor(node.input[0]))


@register("ArgMax", "ArgMin")
def argmax(b: Builder, node: onnx.NodeProto) -> fx.Node:
    a = b.attrs()
    if a.get("select_last_index", 0):
        b.fail("select_last_index=1 is not supported")
    fn = torch.argmax if node.op_type == "ArgMax" else torch.argmin
    return b.call(fn, b.tensor(node.input[0]), int(a.get("axis", 0)), bool(a.get("keepdims", 1)))


# -- logic and n-ary arithmetic -------------------------------------------------------------------
_LOGIC: dict[str, Callable[..., Any]] = {
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
    "GreaterOrEqual": torch.ge,
    "LessOrEqual": torch.le,
}


@register(*_LOGIC)
def logic(b: Builder, node: onnx.NodeProto) -> fx.Node:
    return b.call(_LOGIC[node.op_type], *(b.tensor(n) for n in node.input))


@register("Not")
def not_(b: Builder, node: onnx.NodeProto) -> fx.Node:
    return b.call(torch.logical_not, b.tensor(node.input[0]))


@register("IsNaN")
def is_nan(b: Builder, node: onnx.NodeProto) -> fx.Node:
    return b.call(torch.isnan, b.tensor(node.input[0]))


@register("IsInf")
def is_inf(b: Builder, node: onnx.NodeProto) -> fx.Node:
    a = b.attrs()
    flags = bool(a.get("detect_negative", 1)), bool(a.get("detect_positive", 1))
    return b.call(R.is_inf, b.tensor(node.input[0]), *flags)


@register("Mod")
def mod(b: Builder, node: onnx.NodeProto) -> fx.Node:
    fmod = bool(b.attrs().get("fmod", 0))
    return b.call(R.mod, b.tensor(node.input[0]), b.operand(node.input[1]), fmod)


_NARY: dict[str, Callable[..., Any]] = {
    "Max": torch.maximum,
    "Min": torch.minimum,
    "Sum": torch.add,
    "Mean": torch.add,
}


@register(*_NARY)
def nary(b: Builder, node: onnx.NodeProto) -> fx.Node:
    """Max, Min, Sum, Mean of any number of broadcasting inputs (two-input Add is `binary`)."""
    fn = _NARY[node.op_type]
    out = b.tensor(node.input[0])
    for name in node.input[1:]:
        out = b.call(fn, out, b.tensor(name))
    if node.op_type == "Mean" and len(node.input) > 1:
        out = b.call(torch.div, out, float(len(node.input)))
    return out
