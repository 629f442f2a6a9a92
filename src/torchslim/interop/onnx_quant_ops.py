"""Quantized ONNX graphs in: QDQ (QuantizeLinear/DequantizeLinear) and QLinear* models become torchslim
quantized layers (`QuantConv`, `QuantLinear`) holding the file's integer weights and scales.

- A weight that is `DequantizeLinear` of a constant int8/uint8 tensor is folded like any constant, but
  its integers, scales and zero points are remembered (`record_folded`); the Conv/Gemm/MatMul that
  uses it becomes a quantized layer with those integers (`quantized_layer`).
- When that layer's input is `DequantizeLinear(QuantizeLinear(x))` and its output goes only through
  one `QuantizeLinear` -> `DequantizeLinear` pair (uint8, one scale each: the pattern torchslim's static
  int8 export writes), the layer is static: the pairs become its input and output grids, and the layer
  computes what the graph does, in the same order. Otherwise the layer is weight-only and the
  remaining Q/DQ nodes run as functions (the same numbers).
- QLinearConv / QLinearMatMul are such a static layer between a dequantize and a quantize.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from torchslim.interop.onnx_import import Builder, _identifier
from torchslim.interop.onnx_ops import _param, conv_from, register

if TYPE_CHECKING:
    import onnx

    from torchslim.quant.modules import QuantModule

_INT_WEIGHTS = (np.int8, np.uint8)


@dataclass
class QuantWeight:
    """Integers of a folded DequantizeLinear and their grid; `axis` None for one scale."""

    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    axis: int | None


def record_folded(b: Builder, node: onnx.NodeProto) -> None:
    """Keep the integers of a folded weight DequantizeLinear (and of its 2-d Transpose)."""
    if node.op_type == "DequantizeLinear":
        q = b.const(node.input[0])
        if q.dtype not in _INT_WEIGHTS or q.ndim < 2:
            return
        scale = b.const(node.input[1]).reshape(-1)
        zero = b.optional_const(2)
        zero = np.zeros(scale.shape, q.dtype) if zero is None else zero.reshape(-1)
        axis = None if scale.size == 1 else int(b.attrs().get("axis", 1)) % q.ndim
        b.quantized[node.output[0]] = QuantWeight(q, scale, zero, axis)
    elif node.op_type == "Transpose" and node.input[0] in b.quantized:
        info = b.quantized[node.input[0]]
        perm = list(b.attrs().get("perm", reversed(range(info.q.ndim))))
        axis = None if info.axis is None else perm.index(info.axis)
        b.quantized[node.output[0]] = QuantWeight(info.q.transpose(perm), info.scale, info.zero, axis)


def fold_dequantize(b: Builder, node: onnx.NodeProto) -> np.ndarray:
    q, scale = b.const(node.input[0]), b.const(node.input[1]).astype(np.float32)
    zero = b.optional_const(2)
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[int(b.attrs().get("axis", 1)) % q.ndim] = -1
    z = np.zeros(()) if zero is None else zero.astype(np.float32).reshape(shape if zero.size > 1 else ())
    return ((q.astype(np.float32) - z) * scale.reshape(shape if scale.size > 1 else ())).astype(np.float32)


def layer_weight(b: Builder, name: str, *, transposed: bool = False) -> QuantWeight | None:
    """The integers of weight `name` laid out as the torch layer's weight (rows = outputs)."""
    info = b.quantized.get(name)
    if info is None:
        return None
    if transposed:
        axis = None if info.axis is None else 1 - info.axis
        info = QuantWeight(info.q.T, info.scale, info.zero, axis)
    return info if info.axis in (None, 0) else None  # a grid along the inputs has no torchslim layer


# -- grids around a layer --------------------------------------------------------------------------
Grid = tuple[float, int]


def _grid(b: Builder, node: onnx.NodeProto) -> Grid | None:
    """The (scale, zero point) of a per-tensor uint8 Q or DQ node with constant parameters."""
    if len(node.input) < 3 or not (b.is_const(node.input[1]) and b.is_const(node.input[2])):
        return None
    scale, zero = b.const(node.input[1]), b.const(node.input[2])
    if scale.size != 1 or zero.dtype != np.uint8:
        return None
    return float(scale.reshape(())), int(zero.reshape(()))


def input_grid(b: Builder, x: str) -> tuple[Grid, str] | None:
    """`x` = DequantizeLinear(QuantizeLinear(source)) on one grid: that grid and the source's name."""
    dq = b.producers.get(x)
    if dq is None or dq.op_type != "DequantizeLinear" or b.is_const(dq.input[0]):
        return None
    q = b.producers.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear":
        return None
    grid = _grid(b, q)
    return (grid, q.input[0]) if grid is not None and grid == _grid(b, dq) else None


def output_grid(b: Builder, y: str) -> tuple[Grid, list[str]] | None:
    """`y` read only by one QuantizeLinear whose readers are all DequantizeLinear on its grid: that
    grid and the outputs the layer then stands for."""
    q = b.only_consumer(y)
    if q is None or q.op_type != "QuantizeLinear" or (grid := _grid(b, q)) is None:
        return None
    readers = b.consumers.get(q.output[0], [])
    if not readers or b._consumers.get(q.output[0]) != len(readers):  # the integers leave the graph
        return None
    if any(r.op_type != "DequantizeLinear" or _grid(b, r) != grid for r in readers):
        return None
    return grid, [q.output[0], *(r.output[0] for r in readers)]


# -- building the layer ----------------------------------------------------------------------------
def make_module(layer: nn.Module, info: QuantWeight, grids: tuple[Grid, Grid] | None) -> QuantModule:
    """`layer` (float, with its geometry and bias) as a torchslim quantized layer with `info`'s integers."""
    from torchslim.quant.modules import HANDLERS
    from torchslim.quant.primitives import WeightSpec

    q, zero = info.q.astype(np.int32), info.zero.astype(np.int32)
    symmetric = info.q.dtype == np.int8 and not zero.any() and int(q.min(initial=0)) >= -127
    if info.q.dtype == np.int8 and not symmetric:  # the same grid, stored as uint8
        q, zero = q + 128, zero + 128
    reduce = symmetric and int(np.abs(q).max(initial=0)) <= 63
    granularity = "per_tensor" if info.axis is None else "per_channel"
    spec = WeightSpec(bits=8, granularity=granularity, symmetric=symmetric, reduce_range=reduce)
    handler: Any = HANDLERS.get(type(layer).__name__)  # each subclass takes (float layer, spec, activations)
    module: QuantModule = handler(layer, spec, "static" if grids else None)
    rows = 1 if info.axis is None else q.shape[0]
    scale = torch.from_numpy(np.broadcast_to(info.scale.astype(np.float32), (rows,)).copy()).reshape(
        rows, 1, 1
    )
    zeros = torch.from_numpy(np.broadcast_to(zero, (rows,)).copy()).reshape(rows, 1, 1)
    module.set_integers(torch.from_numpy(q), scale, zeros)
    if grids is not None:
        for which, (s, z) in zip(("in", "out"), grids, strict=True):
            setattr(module, f"{which}_scale", torch.tensor(s, dtype=torch.float32))
            setattr(module, f"{which}_zero", torch.tensor(z, dtype=torch.uint8))
        module.refresh()
    return module


def quantized_layer(
    b: Builder, layer: nn.Module, info: QuantWeight | None, x: str, pad: list[int] | None = None
) -> fx.Node | None:
    """The output of `layer` as a quantized layer when its weight came from DequantizeLinear (static
    when the grids around it are found), else None (the float layer stands)."""
    from torchslim.quant.modules import HANDLERS

    if info is None or type(layer).__name__ not in HANDLERS:
        return None
    assert b.node is not None
    found_in, found_out = input_grid(b, x), output_grid(b, b.node.output[0])
    static = found_in is not None and found_out is not None
    grids = (found_in[0], found_out[0]) if found_in is not None and found_out is not None else None
    module = make_module(layer, info, grids)
    source = b.tensor(found_in[1] if static and found_in is not None else x)
    if pad is not None:
        source = b.call(torch.nn.functional.pad, source, pad)
    weight = b.producers.get(b.node.input[1])
    hint = (
        _identifier(re.sub(r"[._](weight|lifted_tensor_\d+)$", "", weight.input[0]), "qlayer")
        if weight
        else None
    )
    out = b.module(module, source, hint=hint)
    if static and found_out is not None:
        for name in found_out[1]:
            b.absorbed[name] = out
    return out


# -- Q/DQ and integer operators that run as functions ----------------------------------------------
def _along(v: torch.Tensor, axis: int, rank: int) -> torch.Tensor:
    """A 1-d per-axis parameter shaped to broadcast over a tensor of `rank` dims."""
    if v.dim() == 0 or v.numel() == 1:
        return v.reshape(())
    shape = [1] * rank
    shape[axis % rank] = -1
    return v.reshape(shape)


_RANGES = {torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int32: (-(2**31), 2**31 - 1)}


def quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, axis: int) -> torch.Tensor:
    dtype = zero.dtype if zero is not None else torch.uint8
    lo, hi = _RANGES[dtype]
    s = _along(scale, axis, x.dim())
    z = _along(zero, axis, x.dim()).to(torch.float32) if zero is not None else 0.0
    return torch.clamp(torch.round(x / s) + z, lo, hi).to(dtype)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, axis: int) -> torch.Tensor:
    s = _along(scale, axis, q.dim())
    z = _along(zero, axis, q.dim()).to(torch.float32) if zero is not None else 0.0
    return (q.to(torch.float32) - z) * s


def dynamic_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ONNX DynamicQuantizeLinear: uint8 over [min(x, 0), max(x, 0)]."""
    lo, hi = torch.clamp(x.min(), max=0.0), torch.clamp(x.max(), min=0.0)
    scale = (hi - lo) / 255
    zero = torch.clamp(torch.round(-lo / scale), 0, 255) if bool(scale > 0) else torch.zeros(())
    q = torch.clamp(torch.round(x / scale) + zero, 0, 255) if bool(scale > 0) else torch.zeros_like(x) + zero
    return q.to(torch.uint8), scale.to(torch.float32), zero.to(torch.uint8)


def matmul_integer(a: torch.Tensor, b: torch.Tensor, az: Any = None, bz: Any = None) -> torch.Tensor:
    """int32 products, computed in float64 (exact for 8-bit inputs up to 2**37 terms)."""
    left = a.to(torch.float64) - (0.0 if az is None else _along(az.to(torch.float64), -1, 1))
    right = b.to(torch.float64) - (0.0 if bz is None else bz.to(torch.float64))
    return torch.matmul(left, right).round().to(torch.int32)


@register("QuantizeLinear", "DequantizeLinear")
def qdq(b: Builder, node: onnx.NodeProto) -> fx.Node:
    axis = int(b.attrs().get("axis", 1))
    fn = quantize if node.op_type == "QuantizeLinear" else dequantize
    zero = b.tensor(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return b.call(fn, b.tensor(node.input[0]), b.tensor(node.input[1]), zero, axis)


@register("DynamicQuantizeLinear")
def dynamic_quantize_linear(b: Builder, node: onnx.NodeProto) -> tuple[fx.Node, ...]:
    out = b.call(dynamic_quantize, b.tensor(node.input[0]))
    return tuple(b.call(_item, out, i) for i in range(3))


def _item(values: tuple[torch.Tensor, ...], i: int) -> torch.Tensor:
    return values[i]


@register("MatMulInteger")
def matmul_int(b: Builder, node: onnx.NodeProto) -> fx.Node:
    zeros = [b.tensor(n) if n else None for n in [*node.input[2:], "", ""][:2]]
    return b.call(matmul_integer, b.tensor(node.input[0]), b.tensor(node.input[1]), *zeros)


def _qlinear_weight(b: Builder, q: str, scale: str, zero: str, axis: int) -> QuantWeight:
    ints, s, z = b.const(q), b.const(scale).reshape(-1), b.const(zero).reshape(-1)
    return QuantWeight(ints, s, z, None if s.size == 1 else axis)


def _around(b: Builder, node: onnx.NodeProto, layer: nn.Module, info: QuantWeight, x: fx.Node) -> fx.Node:
    """dequantize(x) -> static quantized layer -> quantize to the output's integers."""
    x_grid, y_grid = (
        _qlinear_grid(b, node, 1),
        _qlinear_grid(b, node, 6),
    )
    module = make_module(layer, info, (x_grid, y_grid))
    xs, xz = b.tensor(node.input[1]), b.tensor(node.input[2])
    out = b.module(module, b.call(dequantize, x, xs, xz, 1))
    return b.call(quantize, out, b.tensor(node.input[6]), b.tensor(node.input[7]), 1)


def _qlinear_grid(b: Builder, node: onnx.NodeProto, at: int) -> Grid:
    scale, zero = b.const(node.input[at]), b.const(node.input[at + 1])
    if scale.size != 1 or zero.dtype != np.uint8:
        b.fail("only uint8 activations with one scale are supported")
    return float(scale.reshape(())), int(zero.reshape(()))


@register("QLinearConv")
def qlinear_conv(b: Builder, node: onnx.NodeProto) -> fx.Node:
    info = _qlinear_weight(b, node.input[3], node.input[4], node.input[5], 0)
    weight = (info.q.astype(np.float32) - _bcast(info.zero, info.q)) * _bcast(info.scale, info.q)
    bias = b.optional_const(8)
    if bias is not None:  # int32 on the scale x_scale * w_scale
        bias = bias.astype(np.float64) * float(b.const(node.input[1])) * info.scale
    layer, explicit = conv_from(b, node.input[0], weight, bias)
    if explicit is not None:
        b.fail("asymmetric pads are not supported")
    return _around(b, node, layer, info, b.tensor(node.input[0]))


@register("QLinearMatMul")
def qlinear_matmul(b: Builder, node: onnx.NodeProto) -> fx.Node:
    if not b.is_const(node.input[3]) or b.const(node.input[3]).ndim != 2:
        b.fail("only a constant 2-d second input (a Linear weight) is supported")
    info = _qlinear_weight(b, node.input[3], node.input[4], node.input[5], 1)
    info = QuantWeight(info.q.T, info.scale, info.zero, None if info.axis is None else 0)
    weight = (info.q.astype(np.float32) - _bcast(info.zero, info.q)) * _bcast(info.scale, info.q)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight = _param(weight)
    return _around(b, node, layer, info, b.tensor(node.input[0]))


def _bcast(v: np.ndarray, q: np.ndarray) -> np.ndarray:
    return v.astype(np.float32).reshape([-1] + [1] * (q.ndim - 1)) if v.size > 1 else v.astype(np.float32)
