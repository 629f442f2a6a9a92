"""What a quantized layer becomes in ONNX, with *our* scales and zero points.

- static: QuantizeLinear/DequantizeLinear around the input and output, DequantizeLinear on the int8
  weight and on the int32 bias (scale = input scale x weight scale): the QDQ pattern that onnxruntime
  fuses into QLinearConv / QGemm / QLinearMatMul integer kernels;
- dynamic (Linear): DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul (+ bias), which onnxruntime
  fuses into DynamicQuantizeMatMul;
- weight-only (and anything else): DequantizeLinear on int8 weights for 8-bit per-tensor/per-channel
  grids, else the dequantized float weight.
Integer weights, scales and bias are computed eagerly (outside the traced graph) and enter the graph
as constants, so the exporter writes them as initializers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.onnx.ops import symbolic, symbolic_multi_out

if TYPE_CHECKING:
    from torchslim.quant.modules import QuantModule


def export_forward(m: QuantModule, x: torch.Tensor) -> torch.Tensor:
    c = m.export_constants
    if hasattr(m, "smooth"):
        x = x / m.smooth
    if m.activations == "static" and c["per_row"]:
        y = _static(m, x, c)
        return _qdq(y, m.out_scale, m.out_zero)
    if m.activations == "dynamic" and c["per_row"] and m.weight_shape.__len__() == 2:
        return _dynamic(m, x, c)
    weight = _dq(c["w"], c["w_scale"], c["w_zero"], axis=0) if c["per_row"] else c["w_float"]
    return m.op(x, weight)


@torch.no_grad()
def constants(m: QuantModule) -> dict[str, Any]:
    """Integer weight, 1-D scales/zeros (or the float weight when the grid is not per row)."""
    spec = m.spec
    per_row = spec.granularity in ("per_tensor", "per_channel") and spec.bits == 8
    out: dict[str, Any] = {"per_row": per_row}
    if not per_row:
        out["w_float"] = m.weight.detach().clone()
        return out
    dtype = torch.int8 if spec.symmetric else torch.uint8
    out["w"] = m.int_weight().to(dtype).clone()
    rows = m.weight_shape[0]
    scale = m.w_scale.reshape(-1).expand(rows).contiguous().clone()
    out["w_scale"] = scale
    zero = m._zero().reshape(-1).expand(rows).to(dtype).contiguous().clone()
    out["w_zero"] = zero
    if m.bias is not None and m.activations == "static":
        bias_scale = (m.in_scale * scale).contiguous()
        out["b_scale"] = bias_scale
        out["b_int"] = torch.round(m.bias.detach() / bias_scale).to(torch.int32).clone()
    return out


def _q(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, axis: int = 1) -> torch.Tensor:
    return symbolic(
        "QuantizeLinear", (x, scale, zero), {"axis": axis}, dtype=zero.dtype, shape=x.shape, version=13
    )


def _dq(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, axis: int = 1) -> torch.Tensor:
    inputs = (q, scale) if zero is None else (q, scale, zero)
    return symbolic(
        "DequantizeLinear", inputs, {"axis": axis}, dtype=torch.float32, shape=q.shape, version=13
    )


def _qdq(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return _dq(_q(x, scale, zero), scale, zero)


def _static(m: QuantModule, x: torch.Tensor, c: dict[str, Any]) -> torch.Tensor:
    xd = _qdq(x, m.in_scale, m.in_zero)
    wd = _dq(c["w"], c["w_scale"], c["w_zero"], axis=0)
    bd = _dq(c["b_int"], c["b_scale"], None, axis=0) if "b_int" in c else None
    if len(m.weight_shape) > 2:
        return (
            F.conv2d(xd, wd, bd, **m.conv)
            if m.weight_shape.__len__() == 4
            else F.conv1d(xd, wd, bd, **m.conv)
        )
    if x.dim() == 2:
        inputs = (xd, wd) if bd is None else (xd, wd, bd)
        shape = (x.shape[0], m.weight_shape[0])
        return symbolic("Gemm", inputs, {"transB": 1}, dtype=torch.float32, shape=shape, version=13)
    y = torch.matmul(xd, wd.t())
    return y if bd is None else y + bd


def _dynamic(m: QuantModule, x: torch.Tensor, c: dict[str, Any]) -> torch.Tensor:
    xq, xs, xz = symbolic_multi_out(
        "DynamicQuantizeLinear",
        (x,),
        dtypes=(torch.uint8, torch.float32, torch.uint8),
        shapes=(x.shape, (), ()),
        version=11,
    )
    w_t = c["w"].t().contiguous()  # [in, out]: MatMulInteger's B
    inputs = (xq, w_t, xz) if m.spec.symmetric else (xq, w_t, xz, c["w_zero"])
    shape = (*x.shape[:-1], m.weight_shape[0])
    acc = symbolic("MatMulInteger", inputs, {}, dtype=torch.int32, shape=shape, version=10)
    y = acc.to(torch.float32) * (xs * c["w_scale"])
    return y if m.bias is None else y + m.bias


def dequantize_linear(
    q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, axis: int = 1
) -> torch.Tensor:
    """An ONNX DequantizeLinear node on integer constants (recurrent layers' weight-only lowering)."""
    return _dq(q, scale, zero, axis)
