"""Uniform integer quantization: ranges -> (scale, zero point), quantize, dequantize, fake-quant, packing.

Conventions (the same as ONNX QuantizeLinear): `q = clamp(round(x / scale) + zero_point, qmin, qmax)` and
`x ~ (q - zero_point) * scale`. Symmetric grids are signed with zero point 0 and use
`[-(2**(b-1) - 1), 2**(b-1) - 1]` so that +-absmax are both exact; asymmetric grids are unsigned
`[0, 2**b - 1]` with a zero point that represents 0.0 exactly (padding and ReLU zeros stay exact).
Weight scales are per tensor, per output channel (axis 0) or per group of `group_size` inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from torchslim.errors import UserError

EPS = 1e-12


def check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise UserError(f"quantization bits must be an integer in 2..8, got {bits!r}")


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range of a `bits`-wide grid."""
    check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def qparams_from_range(
    lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point that cover `[lo, hi]` (elementwise, so any granularity works)."""
    qmin, qmax = qrange(bits, symmetric)
    lo = torch.minimum(lo.float(), torch.zeros_like(lo, dtype=torch.float32))  # 0 must be representable
    hi = torch.maximum(hi.float(), torch.zeros_like(hi, dtype=torch.float32))
    if symmetric:
        scale = torch.maximum(-lo, hi) / qmax
        zero = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = (hi - lo) / (qmax - qmin)
        zero = (qmin - torch.round(lo / scale.clamp_min(EPS))).clamp(qmin, qmax).to(torch.int32)
    return scale.clamp_min(EPS), zero


def quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Integers (as int32) of `x`; round half to even like ONNX QuantizeLinear."""
    return torch.clamp(torch.round(x / scale) + zero, qmin, qmax).to(torch.int32)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return (q.float() - zero.float()) * scale


class _RoundSTE(torch.autograd.Function):
    """Round in the forward pass, identity gradient in the backward pass (straight-through estimator)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """quantize -> dequantize with a straight-through gradient (clamped values get none, as in LSQ/PACT)."""
    q = torch.clamp(_RoundSTE.apply(x / scale) + zero, qmin, qmax)
    return (q - zero) * scale


# -- weights ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightSpec:
    """How one weight tensor is quantized."""

    bits: int = 8
    granularity: str = "per_channel"
    """per_tensor | per_channel (axis 0) | per_group (groups of `group_size` along the flattened inputs)."""
    group_size: int = 128
    symmetric: bool = True
    reduce_range: bool = False
    """Use half the grid (8-bit weights in [-63, 63]) so that x86 u8s8 integer kernels without VNNI,
    which add pairs of u8*s8 products in int16 (VPMADDUBSW), cannot saturate."""

    @property
    def qmin(self) -> int:
        return self._range()[0]

    @property
    def qmax(self) -> int:
        return self._range()[1]

    @property
    def grid_bits(self) -> int:
        """Bits the grid spans (one less than the storage width under `reduce_range`)."""
        return self.bits - 1 if self.reduce_range else self.bits

    def _range(self) -> tuple[int, int]:
        return qrange(self.grid_bits, self.symmetric)


def grouped(w: torch.Tensor, spec: WeightSpec) -> torch.Tensor:
    """`w` viewed as [rows, groups, cols]: one scale per (row, group)."""
    flat = w.reshape(w.shape[0], -1)
    if spec.granularity == "per_tensor":
        return flat.reshape(1, 1, -1)
    if spec.granularity == "per_channel":
        return flat.unsqueeze(1)
    if flat.shape[1] % spec.group_size:
        raise UserError(
            f"per_group: {flat.shape[1]} inputs are not a multiple of group_size={spec.group_size}"
        )
    return flat.reshape(flat.shape[0], -1, spec.group_size)


def weight_qparams(w: torch.Tensor, spec: WeightSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales and zero points shaped [rows, groups, 1] (min/max of each group)."""
    g = grouped(w.detach(), spec)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    return qparams_from_range(lo, hi, spec.grid_bits, spec.symmetric)


def quantize_weight(
    w: torch.Tensor, spec: WeightSpec, scale: torch.Tensor | None = None, zero: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer weight (shape of `w`), scale and zero point; min/max ranges unless given."""
    if scale is None or zero is None:
        scale, zero = weight_qparams(w, spec)
    q = quantize(grouped(w.detach(), spec), scale, zero, spec.qmin, spec.qmax)
    return q.reshape(w.shape), scale, zero


def dequantize_weight(
    q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: WeightSpec
) -> torch.Tensor:
    return dequantize(grouped(q, spec), scale, zero).reshape(q.shape)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB."""
    noise = (reference.float() - approx.float()).pow(2).sum()
    return float(10 * torch.log10(reference.float().pow(2).sum() / noise.clamp_min(EPS)))


# -- packing ----------------------------------------------------------------------------------------
def per_byte(bits: int) -> int:
    """Values stored per byte: 4 for 2-bit, 2 for 3-4 bits, 1 above."""
    return 4 if bits <= 2 else 2 if bits <= 4 else 1


def pack(q: torch.Tensor, bits: int, qmin: int) -> torch.Tensor:
    """Integers in `[qmin, qmin + 2**bits)` packed little-end-first into a flat uint8 tensor."""
    n = per_byte(bits)
    u = (q.reshape(-1).to(torch.int32) - qmin).to(torch.uint8)
    if n == 1:
        return u
    width = 8 // n
    pad = (-u.numel()) % n
    u = torch.cat([u, u.new_zeros(pad)]).reshape(-1, n).to(torch.int32)
    shifts = torch.arange(n, dtype=torch.int32) * width
    return (u << shifts).sum(-1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, qmin: int, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of `pack`: int32 integers of `shape`."""
    n = per_byte(bits)
    numel = int(torch.Size(shape).numel())
    if n == 1:
        u = packed.to(torch.int32)
    else:
        width = 8 // n
        shifts = torch.arange(n, dtype=torch.int32) * width
        u = ((packed.to(torch.int32).unsqueeze(-1) >> shifts) & (2**width - 1)).reshape(-1)
    return (u[:numel] + qmin).reshape(shape)


def packed_numel(numel: int, bits: int) -> int:
    return -(-numel // per_byte(bits))
