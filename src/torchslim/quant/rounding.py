"""Weight rounding methods: `nearest` (round to nearest) and `gptq` (error-compensating, Linear only).

GPTQ (Frantar et al. 2022) quantizes a Linear weight one input column at a time and spreads each
column's rounding error over the columns not yet quantized, weighted by the inverse Hessian
`H = sum x^T x` of the layer's calibration inputs: the layer's *output* error is minimised, not the
weight error. Scales stay the min/max ones of each group ("static groups"), so storage is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from torchslim.quant.modules import QuantModule
from torchslim.quant.primitives import grouped, quantize_weight
from torchslim.registry import Registry

Rounder = Callable[[QuantModule, torch.Tensor, "torch.Tensor | None"], None]
"""`round(qmodule, float_weight, hessian_or_None)`: fill the module's integer storage."""
ROUNDING: Registry[Rounder] = Registry("rounding method")


@ROUNDING.register("nearest")
def nearest(qmod: QuantModule, w: torch.Tensor, hessian: torch.Tensor | None) -> None:
    qmod.set_weight(w)


@ROUNDING.register("gptq")
def gptq(
    qmod: QuantModule, w: torch.Tensor, hessian: torch.Tensor | None, damp: float = 0.01, block: int = 128
) -> None:
    if hessian is None or w.dim() != 2:
        return nearest(qmod, w, None)  # no inputs seen (or not a Linear): plain rounding
    spec = qmod.spec
    _, scale, zero = quantize_weight(w, spec)
    rows, cols = w.shape
    shape = grouped(w, spec).shape  # every weight's own scale/zero, laid out like w
    s = scale.expand(shape).reshape(rows, cols)
    z = zero.float().expand(shape).reshape(rows, cols)
    hinv = _inverse_hessian_factor(hessian.double(), damp).float()
    work = w.detach().float().clone()
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
    qmod.set_integers(q, scale, zero)


def _inverse_hessian_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of H^-1 after dampening (dead inputs get a unit diagonal)."""
    h = h.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype)
    inv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inv, upper=True)
