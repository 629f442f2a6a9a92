"""Weight rounding methods: `nearest` (round to nearest) and `gptq` (error-compensating, Linear only).

GPTQ (Frantar et al. 2022) quantizes a Linear weight one input column at a time and spreads each
column's rounding error over the columns not yet quantized, weighted by the inverse Hessian
`H = sum x^T x` of the layer's calibration inputs: the layer's *output* error is minimised, not the
weight error. Scales are fixed before the columns are rounded ("static groups"), so storage is
unchanged; each group's range is the min/max one shrunk by the factor (of `CLIP_CHOICES`) whose
rounding error, weighted by the Hessian diagonal, is smallest. With `act_order` the columns are
rounded in order of decreasing Hessian diagonal (the inputs that carry most energy first, while many
columns remain to absorb their error), as AutoGPTQ's `desc_act`; static groups keep that free at run time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from torchslim.quant.modules import QuantModule
from torchslim.quant.primitives import WeightSpec, grouped, qparams_from_range, quantize_weight
from torchslim.registry import Registry

Rounder = Callable[[QuantModule, torch.Tensor, "torch.Tensor | None"], None]
"""`round(qmodule, float_weight, hessian_or_None)`: fill the module's integer storage."""
ROUNDING: Registry[Rounder] = Registry("rounding method")
CLIP_CHOICES = (1.0, 0.95, 0.9, 0.85, 0.8)
"""Range shrink factors GPTQ's scales are chosen from (1.0: plain min/max)."""


@ROUNDING.register("nearest")
def nearest(qmod: QuantModule, w: torch.Tensor, hessian: torch.Tensor | None) -> None:
    qmod.set_weight(w)


@ROUNDING.register("gptq")
def gptq(
    qmod: QuantModule,
    w: torch.Tensor,
    hessian: torch.Tensor | None,
    damp: float = 0.01,
    block: int = 128,
    act_order: bool = True,
    clip: tuple[float, ...] = CLIP_CHOICES,
) -> None:
    if hessian is None or w.dim() != 2:
        return nearest(qmod, w, None)  # no inputs seen (or not a Linear): plain rounding
    spec = qmod.spec
    scale, zero = clipped_qparams(w.detach().float(), spec, torch.diag(hessian).float(), clip)
    rows, cols = w.shape
    shape = grouped(w, spec).shape  # every weight's own scale/zero, laid out like w
    s = scale.expand(shape).reshape(rows, cols)
    z = zero.float().expand(shape).reshape(rows, cols)
    perm = torch.argsort(torch.diag(hessian), descending=True) if act_order else torch.arange(cols)
    h = hessian[perm][:, perm]
    q = torch.empty(rows, cols, dtype=torch.int32)
    q[:, perm] = _round_columns(w.detach().float()[:, perm], s[:, perm], z[:, perm], h, spec, damp, block)
    qmod.set_integers(q, scale, zero)


def _round_columns(
    work: torch.Tensor,
    s: torch.Tensor,
    z: torch.Tensor,
    hessian: torch.Tensor,
    spec: WeightSpec,
    damp: float,
    block: int,
) -> torch.Tensor:
    """GPTQ's column loop over `work` (modified in place), in the order its columns are given."""
    rows, cols = work.shape
    hinv = _inverse_hessian_factor(hessian.double(), damp).float()
    q = torch.empty(rows, cols, dtype=torch.int32)
    for start in range(0, cols, block):  # lazy batch updates: errors reach later blocks in one matmul
        end = min(start + block, cols)
        errs = torch.empty(rows, end - start)
        for i in range(start, end):
            col = work[:, i]
            qi = torch.clamp(torch.round(col / s[:, i]) + z[:, i], spec.qmin, spec.qmax)
            q[:, i] = qi.to(torch.int32)
            err = (col - (qi - z[:, i]) * s[:, i]) / hinv[i, i]
            work[:, i + 1 : end] -= err.unsqueeze(1) * hinv[i, i + 1 : end].unsqueeze(0)
            errs[:, i - start] = err
        work[:, end:] -= errs @ hinv[start:end, end:]
    return q


def clipped_qparams(
    w: torch.Tensor, spec: WeightSpec, importance: torch.Tensor, clip: tuple[float, ...] = CLIP_CHOICES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group, the scale and zero point of the min/max range shrunk by the factor of `clip` whose
    rounding error `sum importance * (w - dequant(quant(w)))^2` is smallest (importance per input)."""
    g = grouped(w, spec)
    imp = grouped(importance.reshape(1, -1).expand_as(w), spec)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    best_err = torch.full(lo.shape, float("inf"))
    best_scale, best_zero = qparams_from_range(lo, hi, spec.grid_bits, spec.symmetric)
    for factor in clip:
        scale, zero = qparams_from_range(lo * factor, hi * factor, spec.grid_bits, spec.symmetric)
        q, _, _ = quantize_weight(w, spec, scale, zero)
        deq = (grouped(q, spec).float() - zero.float()) * scale
        err = (imp * (g - deq).pow(2)).sum(-1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


def _inverse_hessian_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of H^-1 after dampening (dead inputs get a unit diagonal)."""
    h = h.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype)
    inv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inv, upper=True)
