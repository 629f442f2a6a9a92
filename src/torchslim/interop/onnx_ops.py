"""Converters from ONNX operators to torch layers and functions (registered in `ONNX_OPS`).

Each converter reads its node's inputs and attributes from the `Builder` and returns the fx value(s)
of its outputs. Semantics follow the ONNX operator spec for opsets 7 to 21.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from torchslim.interop import onnx_runtime as R
from torchslim.interop.onnx_import import ONNX_OPS, Builder, Value, _array

if TYPE_CHECKING:
    import onnx


def register(*names: str) -> Callable[[Any], Any]:
    def add(fn: Any) -> Any:
        for name in names:
            ONNX_OPS.register(name, fn)
        return fn

    return add


def _param(array: np.ndarray) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(np.array(array, dtype=np.float32)))


def _spatial_pads(
    b: Builder, attrs: dict[str, Any], kernel: list[int], input_name: str
) -> tuple[list[int], list[int] | None]:
    """Symmetric padding per spatial dim, or the explicit F.pad list when begin and end differ."""
    dims = len(kernel)
    auto = _text(attrs.get("auto_pad", "NOTSET"))
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = _same_pads(b, attrs, kernel, input_name, upper=auto == "SAME_UPPER")
    elif auto in ("NOTSET", "VALID"):
        pads = list(attrs.get("pads", [0] * (2 * dims))) if auto == "NOTSET" else [0] * (2 * dims)
        begin, end = pads[:dims], pads[dims:]
    else:
        b.fail(f"auto_pad={auto!r} is not a known value")
    if begin == end:
        return begin, None
    return [0] * dims, [p for pair in zip(reversed(begin), reversed(end), strict=True) for p in pair]


def _same_pads(
    b: Builder, attrs: dict[str, Any], kernel: list[int], input_name: str, *, upper: bool
) -> tuple[list[int], list[int]]:
    """auto_pad SAME_*: output size ceil(input / stride), the odd pixel at the end (UPPER) or start."""
    dims = len(kernel)
    shape = b.shape(input_name)
    spatial = shape[2:] if shape is not None else None
    if spatial is None or len(spatial) != dims or None in spatial:
        b.fail("auto_pad SAME_* needs the input's spatial size, which shape inference did not give")
    strides = list(attrs.get("strides", [1] * dims))
    dilations = list(attrs.get("dilations", [1] * dims))
    begin, end = [], []
    for size, k, stride, dilation in zip(spatial, kernel, strides, dilations, strict=True):
        assert size is not None
        total = max((math.ceil(size / stride) - 1) * stride + (k - 1) * dilation + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if upper else large)
        end.append(large if upper else small)
    return begin, end


def _nd(kind: str, dims: int, b: Builder) -> Any:
    cls = getattr(nn, f"{kind}{dims}d", None)
    if cls is None:
        b.fail(f"{dims}-d {kind} is not supported")
    return cls


# -- weighted layers ------------------------------------------------------------------------------
def _conv_layer(b: Builder, node: onnx.NodeProto, *, transpose: bool) -> tuple[nn.Module, list[int] | None]:
    """The torch convolution of a Conv / ConvTranspose node, and the explicit padding it needs first."""
    return conv_from(b, node.input[0], b.const(node.input[1]), b.optional_const(2), transpose=transpose)


def conv_from(
    b: Builder, x_name: str, weight: np.ndarray, bias: np.ndarray | None, *, transpose: bool = False
) -> tuple[nn.Module, list[int] | None]:
    """A torch convolution with the current node's attributes and these float weights (Conv, QLinearConv)."""
    a = b.attrs()
    dims = weight.ndim - 2
    padding, explicit = _spatial_pads(b, a, list(weight.shape[2:]), x_name)
    groups = int(a.get("group", 1))
    # ONNX weights are (out, in/groups, k...) for Conv and (in, out/groups, k...) for ConvTranspose
    io = (
        (weight.shape[0], weight.shape[1] * groups)
        if transpose
        else (weight.shape[1] * groups, weight.shape[0])
    )
    extra = {"output_padding": tuple(a.get("output_padding", [0] * dims))} if transpose else {}
    layer = _nd("ConvTranspose" if transpose else "Conv", dims, b)(
        *io,
        tuple(weight.shape[2:]),
        stride=tuple(a.get("strides", [1] * dims)),
        padding=tuple(padding),
        dilation=tuple(a.get("dilations", [1] * dims)),
        groups=groups,
        bias=bias is not None,
        **extra,
    )
    layer.weight = _param(weight)
    if bias is not None:
        layer.bias = _param(bias)
    return layer, explicit


@register("Conv")
def conv(b: Builder, node: onnx.NodeProto) -> fx.Node:
    from torchslim.interop.onnx_quant_ops import layer_weight, quantized_layer

    layer, explicit = _conv_layer(b, node, transpose=False)
    fused = quantized_layer(b, layer, layer_weight(b, node.input[1]), node.input[0], explicit)
    if fused is not None:
        return fused
    x = b.tensor(node.input[0])
    if explicit is not None:
        x = b.call(F.pad, x, explicit)
    return b.module(layer, x)


@register("ConvTranspose")
def conv_transpose(b: Builder, node: onnx.NodeProto) -> fx.Node:
    a = b.attrs()
    if "output_shape" in a or _text(a.get("auto_pad", "NOTSET")) != "NOTSET":
        b.fail("auto_pad or output_shape are not supported")
    layer, explicit = _conv_layer(b, node, transpose=True)
    if explicit is not None:
        b.fail("asymmetric pads are not supported")
    return b.module(layer, b.tensor(node.input[0]))


def _linear(weight_out_in: np.ndarray, bias: np.ndarray | None) -> nn.Linear:
    layer = nn.Linear(weight_out_in.shape[1], weight_out_in.shape[0], bias=bias is not None)
    layer.weight = _param(weight_out_in)
    if bias is not None:
        layer.bias = _param(np.broadcast_to(bias, (weight_out_in.shape[0],)))
    return layer


@register("Gemm")
def gemm(b: Builder, node: onnx.NodeProto) -> fx.Node:
    a = b.attrs()
    if a.get("transA", 0) or not b.is_const(node.input[1]):
        return _gemm_general(b, node, a)
    weight = b.const(node.input[1]) * float(a.get("alpha", 1.0))
    weight = weight if a.get("transB", 0) else weight.T
    bias = b.optional_const(2)
    if bias is not None:
        bias = (bias * float(a.get("beta", 1.0))).reshape(-1)
        if bias.size not in (1, weight.shape[0]):
            b.fail(f"bias of shape {bias.shape} does not broadcast over {weight.shape[0]} outputs")
    from torchslim.interop.onnx_quant_ops import layer_weight, quantized_layer

    layer = _linear(weight, bias)
    info = layer_weight(b, node.input[1], transposed=not a.get("transB", 0))
    fused = quantized_layer(b, layer, info, node.input[0]) if a.get("alpha", 1.0) == 1.0 else None
    return fused if fused is not None else b.module(layer, b.tensor(node.input[0]))


def _gemm_general(b: Builder, node: onnx.NodeProto, a: dict[str, Any]) -> fx.Node:
    x, w = b.tensor(node.input[0]), b.tensor(node.input[1])
    x = b.method("t", x) if a.get("transA", 0) else x
    w = b.method("t", w) if a.get("transB", 0) else w
    out = b.call(torch.matmul, x, w)
    if a.get("alpha", 1.0) != 1.0:
        out = b.call(torch.mul, out, float(a["alpha"]))
    if len(node.input) > 2 and node.input[2]:
        c = b.operand(node.input[2])
        out = b.call(torch.add, out, c, alpha=float(a.get("beta", 1.0)))
    return out


@register("MatMul")
def matmul(b: Builder, node: onnx.NodeProto) -> fx.Node:
    if b.is_const(node.input[1]) and b.const(node.input[1]).ndim == 2:
        from torchslim.interop.onnx_quant_ops import layer_weight, quantized_layer

        layer = _linear(b.const(node.input[1]).T, None)
        fused = quantized_layer(b, layer, layer_weight(b, node.input[1], transposed=True), node.input[0])
        if fused is not None:
            return fused
        b.offer_bias(node.output[0], layer)
        return b.module(layer, b.tensor(node.input[0]))
    return b.call(torch.matmul, b.tensor(node.input[0]), b.tensor(node.input[1]))


@register("BatchNormalization")
def batch_norm(b: Builder, node: onnx.NodeProto) -> fx.Node:
    a = b.attrs()
    scale, shift, mean, var = (b.const(n) for n in node.input[1:5])
    rank = b.rank(node.input[0]) or 4
    layer = _nd("BatchNorm", max(1, rank - 2), b)(scale.shape[0], eps=float(a.get("epsilon", 1e-5)))
    layer.weight, layer.bias = _param(scale), _param(shift)
    layer.running_mean.copy_(torch.from_numpy(mean.astype(np.float32)))
    layer.running_var.copy_(torch.from_numpy(var.astype(np.float32)))
    return b.module(layer, b.tensor(node.input[0]))


@register("LayerNormalization")
def layer_norm(b: Builder, node: onnx.NodeProto) -> fx.Node:
    a = b.attrs()
    scale = b.const(node.input[1])
    bias = b.optional_const(2)
    rank = b.rank(node.input[0])
    axis = int(a.get("axis", -1))
    trailing = (rank - axis if axis >= 0 else -axis) if rank is not None else (-axis if axis < 0 else None)
    if trailing is None or trailing != scale.ndim:
        b.fail(f"scale of shape {scale.shape} must cover the normalised dims from axis {axis}")
    layer = nn.LayerNorm(scale.shape, eps=float(a.get("epsilon", 1e-5)), bias=bias is not None)
    layer.weight = _param(scale)
    if bias is not None:
        layer.bias = _param(np.broadcast_to(bias, scale.shape))
    return b.module(layer, b.tensor(node.input[0]))


@register("PRelu")
def prelu(b: Builder, node: onnx.NodeProto) -> fx.Node:
    slope = b.const(node.input[1]).reshape(-1)
    layer = nn.PReLU(slope.size)
    layer.weight = _param(slope)
    return b.module(layer, b.tensor(node.input[0]))


# -- activations ----------------------------------------------------------------------------------
_MODULES: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "Relu": lambda a: nn.ReLU(),
    "Sigmoid": lambda a: nn.Sigmoid(),
    "Tanh": lambda a: nn.Tanh(),
    "Softplus": lambda a: nn.Softplus(),
    "Softsign": lambda a: nn.Softsign(),
    "HardSwish": lambda a: nn.Hardswish(),
    "Mish": lambda a: nn.Mish(),
    "LeakyRelu": lambda a: nn.LeakyReLU(float(a.get("alpha", 0.01))),
    "Elu": lambda a: nn.ELU(float(a.get("alpha", 1.0))),
    "Celu": lambda a: nn.CELU(float(a.get("alpha", 1.0))),
    "Selu": lambda a: nn.SELU(),
    "Gelu": lambda a: nn.GELU(approximate=_text(a.get("approximate", "none"))),
}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@register(*_MODULES)
def activation(b: Builder, node: onnx.NodeProto) -> fx.Node:
    a = b.attrs()
    if node.op_type == "Selu" and (a.get("alpha"), a.get("gamma")) != (None, None):
        x = b.tensor(node.input[0])
        alpha, gamma = (
            float(a.get("alpha", 1.67326319217681884765625)),
            float(a.get("gamma", 1.05070102214813232421875)),
        )
        return b.call(torch.mul, b.call(F.elu, x, alpha), gamma)
    return b.module(_MODULES[node.op_type](a), b.tensor(node.input[0]))


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "Abs": torch.abs,
    "Neg": torch.neg,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal,
    "Erf": torch.erf,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Sign": torch.sign,
}


@register(*_FUNCTIONS)
def unary(b: Builder, node: onnx.NodeProto) -> fx.Node:
    return b.call(_FUNCTIONS[node.op_type], b.tensor(node.input[0]))


@register("HardSigmoid")
def hard_sigmoid(b: Builder, node: onnx.NodeProto) -> fx.Node:
    a = b.attrs()
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    x = b.tensor(node.input[0])
    if math.isclose(alpha, 1 / 6, rel_tol=1e-6) and beta == 0.5:
        return b.module(nn.Hardsigmoid(), x)
    return b.call(torch.clamp, b.call(torch.add, b.call(torch.mul, x, alpha), beta), 0.0, 1.0)


@register("Clip")
def clip(b: Builder, node: onnx.NodeProto) -> fx.Node:
    a = b.attrs()
    low_array, high_array = b.optional_const(1), b.optional_const(2)
    low = float(low_array) if low_array is not None else a.get("min")
    high = float(high_array) if high_array is not None else a.get("max")
    x = b.tensor(node.input[0])
    if (low, high) == (0.0, 6.0):
        return b.module(nn.ReLU6(), x)
    if low == 0.0 and high is None:
        return b.module(nn.ReLU(), x)
    return b.call(torch.clamp, x, low, high)


@register("Softmax", "LogSoftmax")
def softmax(b: Builder, node: onnx.NodeProto) -> fx.Node:
    """Before opset 13 the input is flattened to 2-d at `axis` (default 1); from 13 it is one axis (-1)."""
    a = b.attrs()
    cls = nn.Softmax if node.op_type == "Softmax" else nn.LogSoftmax
    axis = int(a.get("axis", -1 if b.opset >= 13 else 1))
    x = b.tensor(node.input[0])
    rank = b.rank(node.input[0])
    if b.opset >= 13 or axis == -1 or (rank is not None and axis % rank == rank - 1):
        return b.module(cls(dim=axis), x)
    flat = b.call(torch.flatten, x, axis)
    out = b.module(cls(dim=-1), flat)
    return b.method("view_as", out, x)


# -- pooling --------------------------------------------------------------------------------------
@register("MaxPool", "AveragePool")
def pool(b: Builder, node: onnx.NodeProto) -> fx.Node:
    a = b.attrs()
    kernel = list(a["kernel_shape"])
    dims = len(kernel)
    padding, explicit = _spatial_pads(b, a, kernel, node.input[0])
    x = b.tensor(node.input[0])
    common = {"stride": tuple(a.get("strides", [1] * dims)), "ceil_mode": bool(a.get("ceil_mode", 0))}
    if node.op_type == "MaxPool":
        if len(node.output) > 1 and node.output[1]:
            b.fail("the Indices output is not supported")
        if explicit is not None:
            x = b.call(F.pad, x, explicit, value=-math.inf)
        layer = _nd("MaxPool", dims, b)(
            tuple(kernel), padding=tuple(padding), dilation=tuple(a.get("dilations", [1] * dims)), **common
        )
    else:
        include = bool(a.get("count_include_pad", 0))
        if explicit is not None:
            if not include:
                b.fail("asymmetric pads with count_include_pad=0 are not supported")
            x = b.call(F.pad, x, explicit)
        layer = _nd("AvgPool", dims, b)(
            tuple(kernel), padding=tuple(padding), count_include_pad=include, **common
        )
    return b.module(layer, x)


@register("GlobalAveragePool", "GlobalMaxPool")
def global_pool(b: Builder, node: onnx.NodeProto) -> fx.Node:
    rank = b.rank(node.input[0]) or 4
    kind = "AdaptiveAvgPool" if node.op_type == "GlobalAveragePool" else "AdaptiveMaxPool"
    return b.module(_nd(kind, rank - 2, b)(1), b.tensor(node.input[0]))


# -- elementwise and shape ------------------------------------------------------------------------
_BINARY: dict[str, Callable[..., Any]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": torch.div,
    "Pow": torch.pow,
    "Equal": torch.eq,
    "Greater": torch.gt,
    "Less": torch.lt,
}


@register(*_BINARY)
def binary(b: Builder, node: onnx.NodeProto) -> fx.Node:
    if len(node.input) != 2:
        b.fail(f"{len(node.input)} inputs; only two are supported")
    left, right = node.input
    if node.op_type == "Add" and b.is_const(right) and (fused := _fuse_bias(b, left, right)) is not None:
        return fused
    fn = _BINARY[node.op_type]
    if node.op_type == "Div" and not (b.is_float(left) and b.is_float(right)):
        fn = R.div  # integer division truncates in ONNX
    return b.call(fn, b.operand(left), b.operand(right))


def _fuse_bias(b: Builder, left: str, right: str) -> fx.Node | None:
    """MatMul by a constant then Add of a constant vector: the bias of the Linear made for the MatMul."""
    bias = b.const(right)
    linear = b.take_fusable(left)
    if linear is None or bias.ndim != 1 or bias.shape[0] != linear.out_features:
        return None
    linear.bias = _param(bias)
    node = b.values[left]
    assert isinstance(node, fx.Node)
    return node


@register("Where")
def where(b: Builder, node: onnx.NodeProto) -> fx.Node:
    return b.call(torch.where, *(b.tensor(n) for n in node.input))


@register("Identity", "Dropout")
def identity(b: Builder, node: onnx.NodeProto) -> Value:
    return b.values[node.input[0]]


@register("Cast")
def cast(b: Builder, node: onnx.NodeProto) -> fx.Node:
    from onnx import helper

    dtype = helper.tensor_dtype_to_np_dtype(int(b.attrs()["to"]))
    return b.method("to", b.tensor(node.input[0]), torch.from_numpy(np.zeros(0, dtype=dtype)).dtype)


@register("Concat")
def concat(b: Builder, node: onnx.NodeProto) -> fx.Node:
    return b.call(torch.cat, [b.tensor(n) for n in node.input], int(b.attrs()["axis"]))


@register("Flatten")
def flatten(b: Builder, node: onnx.NodeProto) -> fx.Node:
    axis = int(b.attrs().get("axis", 1))
    x = b.tensor(node.input[0])
    rank = b.rank(node.input[0])
    if axis == 1:
        return b.module(nn.Flatten(), x)
    if axis == 0:
        return b.method("reshape", x, 1, -1)
    if rank is not None and axis < 0:
        axis += rank
    return b.call(torch.flatten, b.call(torch.flatten, x, axis), 0, axis - 1)


@register("Reshape")
def reshape(b: Builder, node: onnx.NodeProto) -> fx.Node:
    """A reshape that only merges trailing dims becomes a flatten (it stays right when channels go)."""
    if not b.is_const(node.input[1]):  # a shape computed at run time
        allowzero = bool(b.attrs().get("allowzero", 0))
        return b.call(R.reshape, b.tensor(node.input[0]), b.tensor(node.input[1]), allowzero)
    target = [int(v) for v in b.const(node.input[1])]
    copy = not b.attrs().get("allowzero", 0)  # then a 0 copies the input's dim
    source = b.shape(node.input[0])
    x = b.tensor(node.input[0])
    expected = b.shape(node.output[0]) or [None if v == 0 and copy else v for v in target]
    start = _flatten_start(source, expected)
    if start is not None:
        return b.module(nn.Flatten(), x) if start == 1 else b.call(torch.flatten, x, start)
    dims: list[int | fx.Node] = [
        b.method("size", x, i) if v == 0 and copy else v for i, v in enumerate(target)
    ]
    if source and len(target) > 1 and target[0] == source[0] and -1 not in target:
        dims[0] = -1  # the batch dim follows the input's, so other batch sizes work
    return b.method("reshape", x, *dims)


def _flatten_start(source: list[int | None] | None, out: list[int | None]) -> int | None:
    """`k` when `out` is `source[:k] + [prod(source[k:])]` (k ≥ 1, leading dims unchanged or -1)."""
    if not source or not out or len(out) >= len(source) or None in source[1:]:
        return None
    k = len(out) - 1
    leading_ok = all(o in (s, -1, None) for o, s in zip(out[:k], source[:k], strict=True))
    merged = math.prod(int(s) for s in source[k:] if s is not None)
    if k >= 1 and leading_ok and out[k] in (merged, -1) and out.count(-1) <= 1:
        return k
    return None


@register("Transpose")
def transpose(b: Builder, node: onnx.NodeProto) -> fx.Node:
    perm = b.attrs().get("perm")
    x = b.tensor(node.input[0])
    if perm is None:
        rank = b.rank(node.input[0])
        if rank is None:
            b.fail("perm is needed when the input rank is unknown")
        perm = list(reversed(range(rank)))
    return b.method("permute", x, *[int(p) for p in perm])


def _axes(b: Builder, node: onnx.NodeProto) -> list[int] | None:
    """Axes from the attribute (older opsets) or the second input (newer ones); None when absent."""
    if "axes" in b.attrs():
        return [int(v) for v in b.attrs()["axes"]]
    axes = b.optional_const(1)
    return None if axes is None else [int(v) for v in axes.reshape(-1)]


@register("Squeeze")
def squeeze(b: Builder, node: onnx.NodeProto) -> fx.Node:
    axes = _axes(b, node)
    x = b.tensor(node.input[0])
    return b.call(torch.squeeze, x) if axes is None else b.call(torch.squeeze, x, tuple(axes))


@register("Unsqueeze")
def unsqueeze(b: Builder, node: onnx.NodeProto) -> fx.Node:
    axes = _axes(b, node) or b.fail("axes are required")
    x = b.tensor(node.input[0])
    rank = (b.rank(node.input[0]) or 0) + len(axes)
    for axis in sorted(a % rank if rank else a for a in axes):
        x = b.call(torch.unsqueeze, x, axis)
    return x


_REDUCE: dict[str, Callable[..., Any]] = {
    "ReduceMean": torch.mean,
    "ReduceSum": torch.sum,
    "ReduceMax": torch.amax,
    "ReduceMin": torch.amin,
}


@register(*_REDUCE)
def reduce(b: Builder, node: onnx.NodeProto) -> Value:
    a = b.attrs()
    axes = _axes(b, node)
    x = b.tensor(node.input[0])
    keep = bool(a.get("keepdims", 1))
    if axes is None or not axes:
        if a.get("noop_with_empty_axes", 0):
            return b.values[node.input[0]]
        rank = b.rank(node.input[0]) or b.fail("the input rank is needed to reduce over all axes")
        axes = list(range(rank))
    return b.call(_REDUCE[node.op_type], x, tuple(axes), keepdim=keep)


@register("Pad")
def pad(b: Builder, node: onnx.NodeProto) -> fx.Node:
    a = b.attrs()
    pads = [int(v) for v in (a["pads"] if "pads" in a else b.const(node.input[1]))]
    if len(node.input) > 3 and node.input[3]:
        b.fail("the axes input is not supported")
    value = b.optional_const(2) if "pads" not in a else None
    fill = float(value) if value is not None and value.size else float(a.get("value", 0.0))
    half = len(pads) // 2
    torch_pads = [p for i in reversed(range(half)) for p in (pads[i], pads[i + half])]
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]  # torch pads only the trailing dims it is given
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(
        _text(a.get("mode", "constant"))
    )
    if mode is None:
        b.fail(f"mode {_text(a.get('mode'))!r} is not supported")
    kwargs = {"value": fill} if mode == "constant" else {}
    return b.call(F.pad, b.tensor(node.input[0]), torch_pads, mode, **kwargs)


@register("Slice")
def slice_(b: Builder, node: onnx.NodeProto) -> fx.Node:
    a = b.attrs()
    if "starts" not in a and not all(b.is_const(n) for n in node.input[1:] if n):
        return _slice_dynamic(b, node)
    if "starts" in a:  # opset < 10
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = b.const(node.input[1]).tolist(), b.const(node.input[2]).tolist()
        axes_array, steps_array = b.optional_const(3), b.optional_const(4)
        axes = None if axes_array is None else axes_array.tolist()
        steps = None if steps_array is None else steps_array.tolist()
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if any(s < 0 for s in steps) or any(ax < 0 for ax in axes):
        return _slice_dynamic(b, node)
    index: list[Any] = [slice(None)] * (max(axes) + 1)
    big = 2**62
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        index[axis] = slice(int(start), None if end >= big else int(end), int(step))
    return b.call(operator.getitem, b.tensor(node.input[0]), tuple(index))


def _slice_dynamic(b: Builder, node: onnx.NodeProto) -> fx.Node:
    """Slice with bounds computed at run time, negative steps or axes (ONNX clamping rules)."""
    a = b.attrs()
    if "starts" in a:
        args: list[Any] = [list(a["starts"]), list(a["ends"]), a.get("axes"), None]
    else:
        args = [b.tensor(n) if n else None for n in [*node.input[1:], "", ""][:4]]
    return b.call(R.slice_, b.tensor(node.input[0]), *args)


@register("Constant")
def constant(b: Builder, node: onnx.NodeProto) -> np.ndarray:
    from onnx import numpy_helper

    attr = node.attribute[0]
    if attr.name == "value":
        return _array(attr.t)
    if attr.name in ("value_float", "value_int"):
        return np.asarray(attr.f if attr.name == "value_float" else attr.i)
    if attr.name in ("value_floats", "value_ints"):
        return np.asarray(list(attr.floats if attr.name == "value_floats" else attr.ints))
    return np.asarray(numpy_helper.to_array(attr.t))
