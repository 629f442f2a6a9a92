"""How large a constant-folded ONNX node's output would be, computed before it is folded.

Folding runs onnx's reference evaluator on constant inputs at import time, so a tiny file can ask
for a huge allocation (`ConstantOfShape` of [10^6, 10^6], a `Pad` of 2^31, `Expand`, `Tile`, `Range`,
`Resize`, random generators). Each such operator's output size follows from its (constant) inputs and
attributes; `FOLD_LIMIT` bounds it, and every folded output is checked again afterwards.
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


@SIZES.register("ConstantOfShape")
def _constant_of_shape(inputs: Inputs, attrs: dict[str, Any]) -> float:
    return math.prod(_values(_in(inputs, 0)))


@SIZES.register("Expand")
def _expand(inputs: Inputs, attrs: dict[str, Any]) -> float:
    shape, target = _shape(_in(inputs, 0)), _values(_in(inputs, 1))
    rank = max(len(shape), len(target))
    shape, target = [1] * (rank - len(shape)) + shape, [1.0] * (rank - len(target)) + target
    return math.prod(max(float(a), b) for a, b in zip(shape, target, strict=True))


@SIZES.register("Tile")
def _tile(inputs: Inputs, attrs: dict[str, Any]) -> float:
    return _size(_in(inputs, 0)) * math.prod(_values(_in(inputs, 1)))


@SIZES.register("Pad")
def _pad(inputs: Inputs, attrs: dict[str, Any]) -> float:
    shape = _shape(_in(inputs, 0))
    pads = _values(_in(inputs, 1)) if len(inputs) > 1 else [float(p) for p in attrs.get("pads", [])]
    if len(pads) < 2 * len(shape):  # the `axes` form: bound by padding every axis by the largest pad
        pads = [max(pads, default=0.0)] * (2 * len(shape))
    return math.prod(d + pads[i] + pads[i + len(shape)] for i, d in enumerate(shape))


@SIZES.register("Range")
def _range(inputs: Inputs, attrs: dict[str, Any]) -> float:
    start, limit, delta = (_values(_in(inputs, i)) or [0.0] for i in range(3))
    return math.ceil((limit[0] - start[0]) / delta[0]) if delta[0] else math.inf


def _resize(inputs: Inputs, attrs: dict[str, Any]) -> float:
    shape = _shape(_in(inputs, 0))
    sizes = _values(_in(inputs, 3))
    if sizes:
        return math.prod(sizes)
    scales = _values(_in(inputs, 2)) or _values(_in(inputs, 1)) or [float(s) for s in attrs.get("scales", [])]
    return math.prod(d * s for d, s in zip(shape, scales, strict=False)) if scales else _size(_in(inputs, 0))


SIZES.register("Resize", _resize)
SIZES.register("Upsample", _resize)


def _shape_attr(inputs: Inputs, attrs: dict[str, Any]) -> float:
    return math.prod(float(d) for d in attrs.get("shape", []))


for _op in ("RandomNormal", "RandomUniform"):
    SIZES.register(_op, _shape_attr)


@SIZES.register("OneHot")
def _one_hot(inputs: Inputs, attrs: dict[str, Any]) -> float:
    return _size(_in(inputs, 0)) * max(_values(_in(inputs, 1)) or [1.0])


def check_fold(node: onnx.NodeProto, inputs: Inputs, attrs: dict[str, Any]) -> str | None:
    """Why folding `node` is refused (its output would exceed FOLD_LIMIT), or None."""
    if node.op_type not in SIZES:
        return None
    try:
        size = SIZES.get(node.op_type)(inputs, attrs)
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
