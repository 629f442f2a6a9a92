"""How large a constant-folded ONNX node's output would be, computed before it is folded.

Folding runs onnx's reference evaluator on constant inputs at import time, so a tiny file can ask
for a huge allocation: a `Pad` of 2^31, an `Add` or `Where` broadcasting [N, 1] against [1, M], a
`MatMul` outer product. Each operator's output size follows from its constant inputs and attributes
(`SIZES`, with elementwise broadcasting as the default); `FOLD_LIMIT` bounds it, and every folded output
is checked again afterwards. Operators without a converter never get here (refused before building).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from torchslim.registry import Registry

if TYPE_CHECKING:
    import onnx

FOLD_LIMIT = 1 << 26
"""Elements a folded constant may hold (256 MiB of float32)."""

Inputs = list[np.ndarray | None]
SIZES: Registry[Callable[[Inputs, dict[str, Any]], float]] = Registry("folded ONNX operator size")


def _values(a: np.ndarray | None) -> list[float]:
    return [] if a is None else [float(v) for v in np.asarray(a).reshape(-1)]


def _in(inputs: Inputs, i: int) -> np.ndarray | None:
    return inputs[i] if i < len(inputs) else None


def _shape(a: np.ndarray | None) -> list[int]:
    return [] if a is None else list(a.shape)


def _size(a: np.ndarray | None) -> float:
    return 0.0 if a is None else float(a.size)


@SIZES.register("Pad")
def _pad(inputs: Inputs, attrs: dict[str, Any]) -> float:
    shape = _shape(_in(inputs, 0))
    pads = _values(_in(inputs, 1)) if len(inputs) > 1 else [float(p) for p in attrs.get("pads", [])]
    if len(pads) < 2 * len(shape):  # the `axes` form: bound by padding every axis by the largest pad
        pads = [max(pads, default=0.0)] * (2 * len(shape))
    return math.prod(d + pads[i] + pads[i + len(shape)] for i, d in enumerate(shape))


@SIZES.register("MatMul")
def _matmul(inputs: Inputs, attrs: dict[str, Any]) -> float:
    a, b = _shape(_in(inputs, 0)), _shape(_in(inputs, 1))
    if len(a) < 2 or len(b) < 2:
        return _broadcast(inputs, attrs)
    batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    return math.prod(batch) * a[-2] * b[-1]


@SIZES.register("Gemm")
def _gemm(inputs: Inputs, attrs: dict[str, Any]) -> float:
    a, b = _shape(_in(inputs, 0)), _shape(_in(inputs, 1))
    rows = a[1] if attrs.get("transA") else a[0]
    cols = b[0] if attrs.get("transB") else b[1]
    return float(rows * cols)


@SIZES.register("ConstantOfShape")
def _constant_of_shape(inputs: Inputs, attrs: dict[str, Any]) -> float:
    return math.prod(_values(_in(inputs, 0)))


@SIZES.register("Expand")
def _expand(inputs: Inputs, attrs: dict[str, Any]) -> float:
    target = tuple(int(v) for v in _values(_in(inputs, 1)))
    return float(math.prod(np.broadcast_shapes(tuple(_shape(_in(inputs, 0))), target)))


@SIZES.register("Tile")
def _tile(inputs: Inputs, attrs: dict[str, Any]) -> float:
    return _size(_in(inputs, 0)) * math.prod(_values(_in(inputs, 1)))


@SIZES.register("Range")
def _range(inputs: Inputs, attrs: dict[str, Any]) -> float:
    start, limit, delta = (_values(_in(inputs, i))[0] for i in range(3))
    return max(math.ceil((limit - start) / delta), 0)


@SIZES.register("Gather")
def _gather(inputs: Inputs, attrs: dict[str, Any]) -> float:
    data = _shape(_in(inputs, 0))
    axis = int(attrs.get("axis", 0)) % max(len(data), 1)
    return math.prod(data[:axis]) * _size(_in(inputs, 1)) * math.prod(data[axis + 1 :])


@SIZES.register("GatherND")
def _gather_nd(inputs: Inputs, attrs: dict[str, Any]) -> float:
    data, index = _shape(_in(inputs, 0)), _shape(_in(inputs, 1))
    batch = int(attrs.get("batch_dims", 0))
    return math.prod(index[:-1]) * math.prod(data[batch + index[-1] :])


@SIZES.register("Einsum")
def _einsum(inputs: Inputs, attrs: dict[str, Any]) -> float:
    """The product of every subscript's size: a bound on the output (and on the work) of any equation."""
    equation = attrs["equation"].decode() if isinstance(attrs["equation"], bytes) else attrs["equation"]
    sizes: dict[str, int] = {}
    for term, a in zip(equation.split("->")[0].split(","), inputs, strict=False):
        letters = term.strip().replace("...", "")
        shape = _shape(a)
        for letter, dim in zip(letters, shape[len(shape) - len(letters) :], strict=False):
            sizes[letter] = max(sizes.get(letter, 1), dim)
    ellipsis = max((_size(a) for a in inputs), default=0.0)  # what "..." can broadcast to, at most
    return math.prod(sizes.values()) * (ellipsis if "..." in equation else 1)


def _sizes_of(*names: str) -> Callable[[Any], Any]:
    def add(fn: Any) -> Any:
        for name in names:
            SIZES.register(name, fn)
        return fn

    return add


def _pads(attrs: dict[str, Any], dims: int) -> list[float]:
    return [float(p) for p in attrs.get("pads", [])] or [0.0] * (2 * dims)


@_sizes_of("Conv", "MaxPool", "AveragePool")
def _window(inputs: Inputs, attrs: dict[str, Any]) -> float:
    """At most the padded input per output channel: pads are attributes, a tiny file can ask for a lot."""
    x, w = _shape(_in(inputs, 0)), _shape(_in(inputs, 1))
    spatial = x[2:]
    pads = _pads(attrs, len(spatial))
    channels = w[0] if w else x[1]
    return x[0] * channels * math.prod(s + pads[i] + pads[i + len(spatial)] for i, s in enumerate(spatial))


@SIZES.register("ConvTranspose")
def _conv_transpose(inputs: Inputs, attrs: dict[str, Any]) -> float:
    x, w = _shape(_in(inputs, 0)), _shape(_in(inputs, 1))
    dims = len(x) - 2
    strides = list(attrs.get("strides", [1] * dims))
    dilations = list(attrs.get("dilations", [1] * dims))
    extra = list(attrs.get("output_padding", [0] * dims))
    spatial = (x[2 + i] * strides[i] + w[2 + i] * dilations[i] + extra[i] for i in range(dims))
    return x[0] * w[1] * int(attrs.get("group", 1)) * math.prod(spatial)


@_sizes_of("Resize", "Upsample")
def _resize(inputs: Inputs, attrs: dict[str, Any]) -> float:
    sizes = _values(_in(inputs, 3))
    if sizes:
        return math.prod(sizes)
    scales = _values(_in(inputs, 2) if len(inputs) > 2 else _in(inputs, 1)) or list(attrs.get("scales", []))
    return _size(_in(inputs, 0)) * math.prod(scales)


@_sizes_of("LSTM", "GRU", "RNN")
def _recurrent(inputs: Inputs, attrs: dict[str, Any]) -> float:
    """Y is [seq, directions, batch, hidden]: the sequence and batch come from X, hidden from W."""
    x, w = _shape(_in(inputs, 0)), _shape(_in(inputs, 1))
    return float(x[0] * x[1] * w[0] * w[1])


@SIZES.register("Concat")
def _concat(inputs: Inputs, attrs: dict[str, Any]) -> float:
    return sum(_size(a) for a in inputs)


@SIZES.register("NonZero")
def _nonzero(inputs: Inputs, attrs: dict[str, Any]) -> float:
    return _size(_in(inputs, 0)) * max(len(_shape(_in(inputs, 0))), 1)


SIZES.register("MatMulInteger", _matmul)
SIZES.register("QLinearMatMul", lambda inputs, attrs: _matmul([_in(inputs, 0), _in(inputs, 3)], attrs))
SIZES.register("QLinearConv", lambda inputs, attrs: _window([_in(inputs, 0), _in(inputs, 3)], attrs))

BOUNDED_BY_INPUTS = frozenset(
    [
        "Abs",
        "Add",
        "And",
        "ArgMax",
        "ArgMin",
        "BatchNormalization",
        "Cast",
        "Ceil",
        "Celu",
        "Clip",
        "Constant",
        "Cos",
        "CumSum",
        "DequantizeLinear",
        "Div",
        "Dropout",
        "DynamicQuantizeLinear",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Flatten",
        "Floor",
        "GatherElements",
        "Gelu",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Greater",
        "GreaterOrEqual",
        "HardSigmoid",
        "HardSwish",
        "Identity",
        "InstanceNormalization",
        "IsInf",
        "IsNaN",
        "LayerNormalization",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "LogSoftmax",
        "Max",
        "Mean",
        "Min",
        "Mish",
        "Mod",
        "Mul",
        "Neg",
        "Not",
        "Or",
        "PRelu",
        "Pow",
        "QuantizeLinear",
        "Reciprocal",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceSum",
        "Relu",
        "Reshape",
        "Selu",
        "Shape",
        "Sigmoid",
        "Sign",
        "Sin",
        "Size",
        "Slice",
        "Softmax",
        "Softplus",
        "Softsign",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Sum",
        "Tanh",
        "Transpose",
        "Trilu",
        "Unsqueeze",
        "Where",
        "Xor",
    ]
)
"""Operators whose output is at most as large as their inputs broadcast together (the default bound):
elementwise, reductions, reshapes and slices. Every other converted operator has its own `SIZES` entry;
a test holds the two lists to the converters."""


def _broadcast(inputs: Inputs, attrs: dict[str, Any]) -> float:
    """Elementwise operators (Add, Mul, Where, ...) broadcast their inputs: [N, 1] + [1, M] is N x M."""
    shapes = [tuple(_shape(a)) for a in inputs if a is not None]
    try:
        return float(math.prod(np.broadcast_shapes(*shapes))) if shapes else 0.0
    except ValueError:  # not broadcastable: the operator concatenates or reshapes, output ~ inputs
        return sum(_size(a) for a in inputs)


def check_fold(node: onnx.NodeProto, inputs: Inputs, attrs: dict[str, Any]) -> str | None:
    """Why folding `node` is refused (its output would exceed FOLD_LIMIT), or None."""
    size_of = SIZES.get(node.op_type) if node.op_type in SIZES else _broadcast
    try:
        size = size_of(inputs, attrs)
    except (TypeError, ValueError, IndexError, OverflowError, ZeroDivisionError):
        return "its output size cannot be computed from its inputs"
    if not size <= FOLD_LIMIT:  # also catches NaN
        return f"its output would hold {size:.3g} elements, more than the {FOLD_LIMIT} allowed"
    return None


def check_outputs(outputs: tuple[np.ndarray, ...]) -> str | None:
    big = max((o.size for o in outputs), default=0)
    return (
        None if big <= FOLD_LIMIT else f"its output holds {big} elements, more than the {FOLD_LIMIT} allowed"
    )
