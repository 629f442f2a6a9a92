"""Converters for recurrent layers (LSTM, GRU as `nn.LSTM` / `nn.GRU`), Resize / Upsample and
InstanceNormalization (what torch writes for GroupNorm, between two reshapes)."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from torchslim.interop import onnx_runtime as R
from torchslim.interop.onnx_import import Builder
from torchslim.interop.onnx_ops import _param, _text, register

if TYPE_CHECKING:
    import onnx

# ONNX stacks LSTM gates as i, o, f, c and GRU gates as z, r, h; torch as i, f, g, o and r, z, n
_GATES = {"LSTM": (4, [0, 2, 3, 1]), "GRU": (3, [1, 0, 2])}
_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}


def _reorder(w: np.ndarray, op: str) -> np.ndarray:
    count, order = _GATES[op]
    return np.concatenate([np.split(w, count, axis=0)[i] for i in order], axis=0)


def _check_recurrent(b: Builder, node: onnx.NodeProto, a: dict[str, Any]) -> None:
    op = node.op_type
    acts = [_text(v) for v in a.get("activations", [])]
    if acts and acts != _DEFAULT_ACTIVATIONS[op] * (len(acts) // len(_DEFAULT_ACTIVATIONS[op])):
        b.fail(f"activations {acts} are not supported (torch uses {_DEFAULT_ACTIVATIONS[op]})")
    if "clip" in a or a.get("input_forget", 0) or a.get("layout", 0):
        b.fail("clip, input_forget and layout=1 are not supported")
    if op == "GRU" and not a.get("linear_before_reset", 0):
        b.fail("linear_before_reset=0 is not supported (torch's GRU applies the reset gate after the linear)")
    if len(node.input) > 4 and node.input[4]:
        b.fail("sequence_lens is not supported (every sequence must be full length)")
    if op == "LSTM" and len(node.input) > 7 and node.input[7] and b.const(node.input[7]).any():
        b.fail("peephole weights are not supported")


@register("LSTM", "GRU")
def recurrent(b: Builder, node: onnx.NodeProto) -> tuple[fx.Node, ...]:
    a = b.attrs()
    _check_recurrent(b, node, a)
    op = node.op_type
    w, r = b.const(node.input[1]), b.const(node.input[2])
    bias = b.optional_const(3)
    dirs, hidden = w.shape[0], int(a["hidden_size"]) if "hidden_size" in a else r.shape[-1]
    if _text(a.get("direction", "forward")) == "reverse":
        b.fail("direction=reverse is not supported (forward or bidirectional)")
    layer: nn.LSTM | nn.GRU = getattr(nn, op)(w.shape[2], hidden, bidirectional=dirs == 2)
    gates = _GATES[op][0] * hidden
    for d in range(dirs):
        suffix = "_reverse" if d else ""
        setattr(layer, f"weight_ih_l0{suffix}", _param(_reorder(w[d], op)))
        setattr(layer, f"weight_hh_l0{suffix}", _param(_reorder(r[d], op)))
        b_d = bias[d] if bias is not None else np.zeros(2 * gates, np.float32)
        setattr(layer, f"bias_ih_l0{suffix}", _param(_reorder(b_d[:gates], op)))
        setattr(layer, f"bias_hh_l0{suffix}", _param(_reorder(b_d[gates:], op)))
    layer.flatten_parameters()
    return _call(b, layer, node, dirs)


def _call(b: Builder, layer: nn.Module, node: onnx.NodeProto, dirs: int) -> tuple[fx.Node, ...]:
    """Run the layer; its (out, h) or (out, (h, c)) become ONNX's Y, Y_h (and Y_c)."""
    x = b.tensor(node.input[0])
    h0 = b.tensor(node.input[5]) if len(node.input) > 5 and node.input[5] else None
    c0 = b.tensor(node.input[6]) if len(node.input) > 6 and node.input[6] else None
    if node.op_type == "LSTM" and (h0 is not None or c0 is not None):
        given = h0 if h0 is not None else c0
        h0 = h0 if h0 is not None else b.call(torch.zeros_like, given)
        c0 = c0 if c0 is not None else b.call(torch.zeros_like, given)
        out = b.module(layer, x, (h0, c0))
    elif h0 is not None:
        out = b.module(layer, x, h0)
    else:
        out = b.module(layer, x)
    y = b.call(R.rnn_sequence, b.call(operator.getitem, out, 0), dirs)
    last = b.call(operator.getitem, out, 1)
    if node.op_type == "GRU":
        return y, last
    return y, b.call(operator.getitem, last, 0), b.call(operator.getitem, last, 1)


# -- Resize / Upsample ----------------------------------------------------------------------------
def _torch_mode(b: Builder, a: dict[str, Any]) -> tuple[str, bool | None]:
    """The F.interpolate mode that computes what this node's attributes ask, or a clear failure."""
    mode = _text(a.get("mode", "nearest"))
    default = "half_pixel" if b.opset >= 11 else "asymmetric"
    coords = _text(a.get("coordinate_transformation_mode", default))
    nearest = _text(a.get("nearest_mode", "round_prefer_floor" if b.opset >= 11 else "floor"))
    if a.get("antialias", 0) or a.get("exclude_outside", 0) or "axes" in a:
        b.fail("antialias, exclude_outside and axes are not supported")
    if mode == "nearest" and coords == "asymmetric" and nearest == "floor":
        return "nearest", None
    if (
        mode == "nearest"
        and coords in ("half_pixel", "pytorch_half_pixel")
        and nearest == "round_prefer_ceil"
    ):
        return "nearest-exact", None
    if mode in ("linear", "cubic") and coords in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        if mode == "cubic" and not np.isclose(float(a.get("cubic_coeff_a", -0.75)), -0.75):
            b.fail("cubic_coeff_a other than -0.75 (torch's bicubic) is not supported")
        return mode, coords == "align_corners"
    b.fail(
        f"mode={mode!r} with coordinate_transformation_mode={coords!r}, nearest_mode={nearest!r} "
        "has no torch equivalent"
    )


@register("Resize", "Upsample")
def resize(b: Builder, node: onnx.NodeProto) -> fx.Node:
    a = b.attrs()
    mode, align = _torch_mode(b, a)
    if node.op_type == "Upsample" or b.opset < 11:
        scales_name, sizes_name = (node.input[1] if len(node.input) > 1 else ""), ""
    else:
        scales_name = node.input[2] if len(node.input) > 2 else ""
        sizes_name = node.input[3] if len(node.input) > 3 else ""
    scales: Any = list(a["scales"]) if "scales" in a else None
    if scales_name:
        scales = (
            [float(v) for v in b.const(scales_name).reshape(-1)]
            if b.is_const(scales_name)
            else b.tensor(scales_name)
        )
    sizes: Any = None
    if sizes_name:
        sizes = (
            [int(v) for v in b.const(sizes_name).reshape(-1)]
            if b.is_const(sizes_name)
            else b.tensor(sizes_name)
        )
    if isinstance(scales, list) and scales and scales[:2] != [1.0, 1.0]:
        b.fail("only the spatial dims may be scaled (batch and channel scales must be 1)")
    if (sizes is None or sizes == []) and (scales is None or scales == []):
        b.fail("neither scales nor sizes are given")
    return b.call(R.resize, b.tensor(node.input[0]), sizes or None, scales, mode, align)


@register("InstanceNormalization")
def instance_norm(b: Builder, node: onnx.NodeProto) -> fx.Node:
    eps = float(b.attrs().get("epsilon", 1e-5))
    scale, bias = (b.tensor(n) for n in node.input[1:3])
    x = b.tensor(node.input[0])
    return b.call(torch.nn.functional.instance_norm, x, None, None, scale, bias, True, 0.0, eps)
