"""Lowering to torchao: our quantized Linear layers become Linear layers with a torchao `Int8Tensor` weight.

The tensor subclass carries *our* int8 weights and per-row scales (nothing is re-quantized from float)
and, for `activations="dynamic"`, quantizes activations the way our eager layer does: one asymmetric
8-bit grid per tensor per call (torchao's int8 grid is our uint8 grid shifted by 128, so the integers
and scales are the same). Under `torch.compile` the matmul runs on integer kernels (`torch._int_mm`).
Weight-only 8-bit layers become torchao's int8 weight-only path. What torchao cannot take stays as it
is, with the reason: convolutions, embeddings, asymmetric or grouped weight grids, static activations
(onnxruntime's QDQ path serves those). torchao is optional (`pip install 'torchslim[quant]'`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from torchslim.errors import UserError
from torchslim.quant.modules import QuantLinear, QuantModule

MISSING = "the torchao lowering needs torchao: pip install 'torchslim[quant]'"


@dataclass
class Lowering:
    """The lowered model, the layers now on torchao, and the quantized layers kept as they were (why)."""

    model: nn.Module
    lowered: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)


def available() -> bool:
    try:
        import torchao.quantization  # noqa: F401
    except ImportError:
        return False
    return True


def why_not(mod: QuantModule) -> str | None:
    """Why torchao cannot take this quantized layer, or None when it can."""
    if not isinstance(mod, QuantLinear):
        return f"{type(mod).__name__}: torchao's int8 tensors cover Linear layers only"
    if mod.compute == "float":
        return "computed in float (weights dequantized at load)"
    spec = mod.spec
    if not spec.symmetric:
        return "asymmetric weight grid (torchao's int8 matmul takes no weight zero point)"
    if spec.granularity not in ("per_tensor", "per_channel"):
        return f"{spec.granularity} weights (torchao's int8 matmul takes one scale per output row)"
    if mod.activations == "static":
        return "static activations (use runtime onnxruntime: QLinearMatMul with our scales)"
    if mod.activations is None and spec.bits != 8:
        return f"{spec.bits}-bit weight-only (torchao's int8 weight-only path takes 8-bit grids)"
    return None


def plan(model: nn.Module) -> tuple[list[str], dict[str, str]]:
    """Names of the quantized layers `lower` replaces, and of those it keeps with the reason."""
    lowered: list[str] = []
    kept: dict[str, str] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, QuantModule):
            reason = why_not(mod)
            if reason is None:
                lowered.append(name)
            else:
                kept[name] = reason
    return lowered, kept


def lower(model: nn.Module, *, inplace: bool = False, per_token: bool = False) -> Lowering:
    """Replace our quantized Linear layers by torchao int8 ones (on a copy unless `inplace`).

    The copy keeps the original saveable with `ts.save`; the lowered model is for running (compile it,
    for inference: `torch.compile(lower(model).model, options={"freezing": True})`). `per_token`: dynamic
    activations get one symmetric grid per token (torchao's default) instead of our one asymmetric grid
    per tensor: faster under torch.compile and closer to fp32 on minilm, but no longer the numbers of
    our eager and ONNX layers. Raises `UserError` when torchao is not installed.
    """
    if not available():
        raise UserError(MISSING)
    names, kept = plan(model)
    target = model if inplace else copy.deepcopy(model)
    for name in names:
        parent, _, leaf = name.rpartition(".")
        owner = target.get_submodule(parent) if parent else target
        setattr(owner, leaf, to_torchao(target.get_submodule(name), per_token=per_token))
    return Lowering(target, names, kept)


@torch.no_grad()
def to_torchao(mod: nn.Module, *, per_token: bool = False) -> nn.Linear:
    """An `nn.Linear` whose weight is a torchao `Int8Tensor` with `mod`'s integers and scales."""
    from torchao.quantization import Int8Tensor, MappingType, PerRow, PerTensor
    from torchao.quantization.quantize_.workflows.int8.int8_tensor import QuantizeTensorToInt8Kwargs

    if not isinstance(mod, QuantLinear) or why_not(mod) is not None:
        raise ValueError(
            f"torchao cannot take this layer: {why_not(mod) if isinstance(mod, QuantModule) else mod}"
        )
    rows, cols = mod.weight_shape
    qdata = mod.int_weight().to(torch.int8).contiguous()  # symmetric grids: within [-127, 127]
    scale = mod.w_scale.reshape(-1, 1).expand(rows, 1).contiguous()
    act: Any = None
    if mod.activations == "dynamic" and per_token:
        act = QuantizeTensorToInt8Kwargs(granularity=PerRow(), mapping_type=MappingType.SYMMETRIC)
    elif mod.activations == "dynamic":
        act = QuantizeTensorToInt8Kwargs(granularity=PerTensor(), mapping_type=MappingType.ASYMMETRIC)
    pre_scale = (1.0 / mod.smooth).contiguous() if hasattr(mod, "smooth") else None
    weight = Int8Tensor(qdata, scale, [1, cols], torch.float32, act_quant_kwargs=act, act_pre_scale=pre_scale)
    linear = nn.Linear(cols, rows, bias=mod.bias is not None, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if mod.bias is not None:
        linear.bias = nn.Parameter(mod.bias.detach().clone(), requires_grad=False)
    return linear
