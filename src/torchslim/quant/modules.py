"""Quantized layers: packed integer weights plus scales as buffers, so `ts.save` writes them as they are.

Each layer keeps `qweight` (integers packed into uint8: two 4-bit values a byte), `w_scale`
(`[rows, groups, 1]`) and, for asymmetric grids, `w_zero`; static activation quantization adds
`in_scale/in_zero` and `out_scale/out_zero`. In PyTorch the forward pass dequantizes (the numbers an
integer kernel computes, on float kernels); during ONNX export it emits QuantizeLinear /
DequantizeLinear / MatMulInteger with these very scales, so onnxruntime runs integer kernels.
`HANDLERS` maps a float layer type to its quantized class: a layer type with no handler is skipped.

`compute="float"` (see `torchslim.quant.dequantized`) keeps the integers as storage but dequantizes them
once (at load) and runs the float op without quantizing activations: where no runtime has integer
kernels that pay, the deployed layer then costs what the float layer cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.quant.geometry import copy_sizes
from torchslim.quant.primitives import (
    WeightSpec,
    dequantize_weight,
    fake_quantize,
    grouped,
    pack,
    packed_numel,
    per_byte,
    qparams_from_range,
    quantize_weight,
    unpack,
)
from torchslim.registry import Registry

ACT_BITS = 8  # activations are always uint8 asymmetric: what integer CPU kernels (u8s8) expect
ACT_QMIN, ACT_QMAX = 0, 2**ACT_BITS - 1
COMPUTES = ("int", "float")


@dataclass(frozen=True)
class QuantizedValues:
    """A quantized layer's weight as stored: `weight[r, c] ~ (values[r, c] - zero[r, g]) * scale[r, g]`
    with `g = c // group_size` (per_tensor: one row of scales, broadcast), divided by `input_scale[c]`
    when the layer has one (SmoothQuant/AWQ scales not folded elsewhere: inputs are divided by it)."""

    values: torch.Tensor
    """int32 `[rows, cols]` (a Linear's `[out, in]`; convolutions flattened), in `[qmin, qmax]`."""
    scale: torch.Tensor
    """float32 `[rows or 1, groups]`."""
    zero: torch.Tensor | None
    """int32 like `scale` (asymmetric grids, unsigned values), None for symmetric (signed) grids."""
    group_size: int
    """Columns per scale (`cols` when per channel or per tensor)."""
    bits: int
    qmin: int
    qmax: int
    input_scale: torch.Tensor | None


class QuantModule(nn.Module):
    """Shared storage and weight (de)quantization; subclasses supply the float op."""

    bias: nn.Parameter | None
    # buffers (declared for the type checker; which exist depends on the grid and activation mode)
    qweight: torch.Tensor
    w_scale: torch.Tensor
    w_zero: torch.Tensor
    in_scale: torch.Tensor
    in_zero: torch.Tensor
    out_scale: torch.Tensor
    out_zero: torch.Tensor
    smooth: torch.Tensor
    conv: dict[str, Any]

    def __init__(
        self, weight_shape: tuple[int, ...], spec: WeightSpec, activations: str | None, smooth: bool = False
    ) -> None:
        super().__init__()
        self.spec, self.activations, self.weight_shape = spec, activations, torch.Size(weight_shape)
        self.bits = spec.bits
        rows, groups = _scale_shape(self.weight_shape, spec)
        numel = self.weight_shape.numel()
        self.register_buffer("qweight", torch.zeros(packed_numel(numel, spec.bits), dtype=torch.uint8))
        self.register_buffer("w_scale", torch.ones(rows, groups, 1))
        if not spec.symmetric:
            self.register_buffer("w_zero", torch.zeros(rows, groups, 1, dtype=torch.uint8))
        if activations == "static":
            for name in ("in", "out"):
                self.register_buffer(f"{name}_scale", torch.ones(()))
                self.register_buffer(f"{name}_zero", torch.zeros((), dtype=torch.uint8))
        if smooth:  # SmoothQuant: inputs divided per channel, weights multiplied (stored that way)
            self.register_buffer("smooth", torch.ones(self.weight_shape[1]))
        self._export_constants: dict[str, Any] | None = None
        self.compute = "int"
        self.float_weight: torch.Tensor | None = None
        """`compute="float"`: the dequantized weight (smoothing folded back in), kept as a plain tensor."""
        self.register_load_state_dict_post_hook(lambda mod, keys: mod.refresh())

    def refresh(self) -> None:
        """After the grid changed: the float-compute weight again, and the ONNX constants dropped."""
        self.float_weight = self._float_weight().detach().clone() if self.compute == "float" else None
        self._export_constants = None

    @property
    def export_constants(self) -> dict[str, Any]:
        """The ONNX constants (plain tensors, not state), made on first use and kept until the grid
        changes. `export_onnx` makes them before tracing (the exporter must not trace their making);
        they are not made eagerly because a float copy of every 4-bit layer would stay resident (and
        outlive a block offloaded to the meta device by the layer-by-layer engine)."""
        if self._export_constants is None:
            from torchslim.quant.backends.onnx_ops import constants

            self._export_constants = constants(self)
        return self._export_constants

    def set_compute(self, compute: str) -> None:
        """`int`: the integer grids as quantized; `float`: float op on the weights dequantized once."""
        if compute not in COMPUTES:
            raise ValueError(f"compute must be one of {COMPUTES}, got {compute!r}")
        self.compute = compute
        self.refresh()

    def _float_weight(self) -> torch.Tensor:
        w = self.weight
        return w / self.smooth if hasattr(self, "smooth") else w  # x / s @ (w * s)^T == x @ w^T

    # -- weights --------------------------------------------------------------------------------
    def set_weight(self, w: torch.Tensor, scale: torch.Tensor | None = None) -> None:
        """Quantize the float weight `w` (with the given scales, or min/max ones) into storage."""
        zero = None if scale is None or self.spec.symmetric else self._zero()
        q, scale, zero = quantize_weight(w, self.spec, scale, zero)
        self.set_integers(q, scale, zero)

    def set_integers(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> None:
        self.qweight = pack(q, self.spec.bits, self.spec.qmin)
        self.w_scale = scale.float().contiguous()
        if not self.spec.symmetric:
            self.w_zero = zero.to(torch.uint8)
        self.refresh()

    def _zero(self) -> torch.Tensor:
        return self.w_zero.to(torch.int32) if not self.spec.symmetric else torch.zeros_like(self.w_scale)

    def int_weight(self) -> torch.Tensor:
        return unpack(self.qweight, self.spec.bits, self.spec.qmin, self.weight_shape)

    def quantized_values(self) -> QuantizedValues:
        """The stored grid, unpacked, for writers of other formats (compressed-tensors, GGUF)."""
        rows = self.weight_shape[0]
        cols = self.weight_shape[1:].numel()
        scale = self.w_scale.reshape(self.w_scale.shape[0], -1)
        zero = self.w_zero.reshape(scale.shape).to(torch.int32) if not self.spec.symmetric else None
        whole = {"per_tensor": cols, "per_channel": cols}  # one scale per row (or one in all)
        group = whole.get(self.spec.granularity, self.spec.group_size)
        return QuantizedValues(
            values=self.int_weight().reshape(rows, cols),
            scale=scale,
            zero=zero,
            group_size=min(group, cols),
            bits=self.spec.bits,
            qmin=self.spec.qmin,
            qmax=self.spec.qmax,
            input_scale=self.smooth if hasattr(self, "smooth") else None,
        )

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight, an attribute like the float layer's: code written for that layer
        (transformers reads `projection.weight.dtype`, `.shape`, `.device`) keeps working."""
        return dequantize_weight(self.int_weight(), self.w_scale, self._zero(), self.spec)

    def effective_weights(self) -> list[tuple[str, torch.Tensor]]:
        """The weights acting on the layer's own input (smoothing folded back), for float writers."""
        out = [("weight", self._float_weight())]
        return out + ([("bias", self.bias)] if self.bias is not None else [])

    # -- activations ----------------------------------------------------------------------------
    def set_activation_range(self, which: str, lo: float, hi: float) -> None:
        scale, zero = qparams_from_range(torch.tensor(lo), torch.tensor(hi), ACT_BITS, symmetric=False)
        setattr(self, f"{which}_scale", scale.reshape(()))
        setattr(self, f"{which}_zero", zero.reshape(()).to(torch.uint8))
        self.refresh()

    def _fq(self, x: torch.Tensor, which: str) -> torch.Tensor:
        if self.activations == "dynamic" and which == "in":
            lo, hi = x.detach().amin(), x.detach().amax()
            scale, zero = qparams_from_range(lo, hi, ACT_BITS, symmetric=False)
        elif self.activations == "static":
            scale, zero = getattr(self, f"{which}_scale"), getattr(self, f"{which}_zero").to(torch.int32)
        else:
            return x
        return fake_quantize(x, scale, zero, ACT_QMIN, ACT_QMAX)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.float_weight is not None:  # compute="float" (also in ONNX export: a float initializer)
            return self.op(x, self.float_weight)
        if torch.onnx.is_in_onnx_export():
            from torchslim.quant.backends.onnx_ops import export_forward

            return export_forward(self, x)
        if hasattr(self, "smooth"):
            x = x / self.smooth
        return self._fq(self.op(self._fq(x, "in"), self.weight), "out")

    def op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        s = self.spec
        return f"{tuple(self.weight_shape)}, bits={s.bits}, {s.granularity}, activations={self.activations}"


def _scale_shape(shape: torch.Size, spec: WeightSpec) -> tuple[int, int]:
    g = grouped(torch.empty(shape, device="meta"), spec)
    return g.shape[0], g.shape[1]


class QuantLinear(QuantModule):
    def __init__(
        self, float_mod: nn.Linear, spec: WeightSpec, activations: str | None, smooth: bool = False
    ) -> None:
        super().__init__(tuple(float_mod.weight.shape), spec, activations, smooth)
        copy_sizes(float_mod, self)
        self.bias = _copy_bias(float_mod)

    def op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, self.bias)


class QuantConv(QuantModule):
    """Conv1d/Conv2d with the float module's geometry (stride, padding, dilation, groups)."""

    def __init__(self, float_mod: nn.Conv1d | nn.Conv2d, spec: WeightSpec, activations: str | None) -> None:
        super().__init__(tuple(float_mod.weight.shape), spec, activations)
        self.dims = float_mod.weight.dim() - 2
        self.conv: dict[str, Any] = {
            k: getattr(float_mod, k) for k in ("stride", "padding", "dilation", "groups")
        }
        if float_mod.padding_mode != "zeros" or isinstance(self.conv["padding"], str):
            raise TypeError("only zero padding with explicit sizes is supported")
        copy_sizes(float_mod, self)
        self.bias = _copy_bias(float_mod)

    def op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        fn = F.conv1d if self.dims == 1 else F.conv2d
        return fn(x, weight, self.bias, **self.conv)


class QuantEmbedding(QuantModule):
    """A lookup table stored as integers (one scale per row or group): weight-only by nature."""

    def __init__(self, float_mod: nn.Embedding, spec: WeightSpec, activations: str | None) -> None:
        super().__init__(tuple(float_mod.weight.shape), spec, None)
        self.padding_idx = float_mod.padding_idx
        copy_sizes(float_mod, self)
        self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.float_weight is not None:
            return F.embedding(x, self.float_weight, self.padding_idx)
        rows, dim = self.weight_shape
        per = per_byte(self.spec.bits)
        if dim % per or torch.onnx.is_in_onnx_export():
            return F.embedding(x, self.weight, self.padding_idx)
        # gather the packed rows first: dequantizing the whole table per call would dominate latency
        packed = self.qweight.reshape(rows, dim // per)[x.reshape(-1)]
        q = unpack(packed, self.spec.bits, self.spec.qmin, (packed.shape[0], dim))
        idx = x.reshape(-1) if self.w_scale.shape[0] > 1 else torch.zeros(1, dtype=torch.long)
        scale, zero = self.w_scale[idx], self._zero()[idx]
        w = dequantize_weight(q, scale, zero, self.spec)
        return w.reshape(*x.shape, dim)


def _copy_bias(float_mod: nn.Module) -> nn.Parameter | None:
    bias = getattr(float_mod, "bias", None)
    return nn.Parameter(bias.detach().clone()) if bias is not None else None


HANDLERS: Registry[type[QuantModule]] = Registry("quantizable layer type")
HANDLERS.register("Linear", QuantLinear)
HANDLERS.register("Conv1d", QuantConv)
HANDLERS.register("Conv2d", QuantConv)
HANDLERS.register("Embedding", QuantEmbedding)

WEIGHTED = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.Embedding,
    nn.LSTM,
    nn.GRU,
    nn.LSTMCell,
    nn.GRUCell,
)
"""Float layer types with weights: those without a handler are reported as skipped, never ignored."""
