"""AWQ (Lin et al. 2023): activation-aware per-input-channel weight scales, searched per layer.

Input channels that carry large activations matter most to a layer's output; scaling their weight
columns up by `s_j` before rounding (and the inputs down by the same `s_j`, so `x / s @ (W s)^T ==
x @ W^T`) gives them finer effective steps. The scales are `s = act^a / w^(1 - a)` (llm-compressor's
"duo scaling": `act` the RMS of each input channel over the calibration tokens, `w` the mean of each
column's magnitude relative to its row's largest), normalised to a geometric mean of 1; `a` is chosen
from `GRID` for the least output error of round-to-nearest on the scaled weights,
`sum_rows dW H dW^T` with `H = X^T X` the layer's input Hessian, summed over every layer that reads
the same input (their scales must agree to be folded into what produces it). No scaling (`s = 1`) is
a candidate too, so AWQ never does worse than RTN on the calibration inputs.

The scales are applied by the caller: kept as the quantized layer's input scale (`QuantModule.smooth`)
or folded into the preceding norm or Linear (`torchslim.llm.fold`), and the scaled weight is then
rounded by RTN or GPTQ (with `H / (s s^T)`, the Hessian of the scaled inputs).
"""

from __future__ import annotations

import torch

from torchslim.quant.primitives import WeightSpec, dequantize_weight, quantize_weight

GRID = tuple(i / 20 for i in range(21))
"""Alphas searched (AWQ's grid of 20 steps, both ends included)."""


def output_error(w: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> float:
    """`||X w^T - X approx^T||^2` from the Hessian `X^T X`: `sum((dW @ H) * dW)`."""
    d = (approx - w).float()
    return float(((d @ hessian) * d).sum())


def rtn_scaled(w: torch.Tensor, s: torch.Tensor, spec: WeightSpec) -> torch.Tensor:
    """The weight as the layer computes it after RTN of `w * s` (inputs divided by `s`)."""
    scaled = w * s[None, :]
    q, scale, zero = quantize_weight(scaled, spec)
    return dequantize_weight(q, scale, zero, spec) / s[None, :]


def column_magnitude(weights: list[torch.Tensor]) -> torch.Tensor:
    """Per input column, the mean over rows of |w| relative to its row's largest |w|."""
    rel = [w.abs() / w.abs().amax(1, keepdim=True).clamp_min(1e-12) for w in weights]
    return torch.cat(rel, 0).mean(0)


def candidate(act: torch.Tensor, wmag: torch.Tensor, alpha: float) -> torch.Tensor:
    s = (act.pow(alpha) / (wmag.pow(1 - alpha) + 1e-4)).clamp_min(1e-4)
    return s / (s.max() * s.min()).sqrt()


def search_scales(
    weights: list[torch.Tensor], hessian: torch.Tensor, spec: WeightSpec, grid: tuple[float, ...] = GRID
) -> tuple[torch.Tensor, float | None, dict[str, float]]:
    """Scales for layers reading one input (weights `[out, in]` each, their common input Hessian):
    (scales, the alpha chosen or None for no scaling, relative output error per candidate)."""
    h = hessian.float()
    ws = [w.detach().float() for w in weights]
    act = h.diagonal().clamp_min(0).sqrt()
    wmag = column_magnitude(ws)
    base = sum(output_error(w, torch.zeros_like(w), h) for w in ws)
    ones = torch.ones_like(act)
    best_s, best_alpha = ones, None
    best = sum(output_error(w, rtn_scaled(w, ones, spec), h) for w in ws)
    errors = {"none": best / max(base, 1e-30)}
    for alpha in grid:
        s = candidate(act, wmag, alpha)
        err = sum(output_error(w, rtn_scaled(w, s, spec), h) for w in ws)
        errors[str(alpha)] = err / max(base, 1e-30)
        if err < best:
            best, best_s, best_alpha = err, s, alpha
    return best_s, best_alpha, errors


def scaled_hessian(hessian: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The Hessian of the inputs divided by `s`: `H / (s s^T)`."""
    return hessian / s[:, None] / s[None, :]
