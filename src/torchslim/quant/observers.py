"""Activation range observers for static quantization, registered by name (`QuantConfig.calibration`).

An observer sees the tensors flowing into (or out of) a layer during calibration and then proposes a
clipping range `(lo, hi)`. `minmax` and `moving_average` track extremes; `percentile`, `mse` and
`entropy` work on a bounded random sample of the values seen (enough for a stable histogram, and
memory stays flat however many batches are given).
"""

from __future__ import annotations

import math

import torch

from torchslim.errors import UserError
from torchslim.quant.primitives import fake_quantize, qparams_from_range, qrange
from torchslim.registry import Registry

SAMPLE = 1 << 18


class Observer:
    """Tracks min/max and a random sample; subclasses choose the range."""

    def __init__(self) -> None:
        self.lo = math.inf
        self.hi = -math.inf
        self.sample: list[torch.Tensor] = []
        self._gen = torch.Generator().manual_seed(0)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1)
        if not torch.isfinite(x).all():
            raise UserError("calibration produced NaN or infinite activations; check the calibration data")
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        keep = SAMPLE // 8
        if x.numel() > keep:
            x = x[torch.randint(x.numel(), (keep,), generator=self._gen)]
        self.sample.append(x)
        if sum(s.numel() for s in self.sample) > SAMPLE:
            self.sample = [torch.cat(self.sample)[-SAMPLE:]]

    def values(self) -> torch.Tensor:
        if not self.sample:
            raise UserError("an observer saw no data: the calibration loader yielded no batches")
        return torch.cat(self.sample)

    def range(self, bits: int, symmetric: bool) -> tuple[float, float]:
        self.values()
        return self.lo, self.hi


OBSERVERS: Registry[type[Observer]] = Registry("calibration method")
OBSERVERS.register("minmax", Observer)


@OBSERVERS.register("moving_average")
class MovingAverage(Observer):
    """Exponential moving average of per-batch extremes: robust to one outlier batch."""

    momentum = 0.1

    def __init__(self) -> None:
        super().__init__()
        self.avg: tuple[float, float] | None = None

    def update(self, x: torch.Tensor) -> None:
        super().update(x)
        lo, hi = float(x.min()), float(x.max())
        a = self.avg
        self.avg = (
            (lo, hi)
            if a is None
            else (a[0] + self.momentum * (lo - a[0]), a[1] + self.momentum * (hi - a[1]))
        )

    def range(self, bits: int, symmetric: bool) -> tuple[float, float]:
        self.values()
        assert self.avg is not None
        return self.avg


@OBSERVERS.register("percentile")
class Percentile(Observer):
    """Clip the rarest `tail` fraction at each end."""

    tail = 1e-4

    def range(self, bits: int, symmetric: bool) -> tuple[float, float]:
        v = self.values()
        q = torch.quantile(v, torch.tensor([self.tail, 1 - self.tail]))
        return float(q[0]), float(q[1])


@OBSERVERS.register("mse")
class MSE(Observer):
    """The clipping range (a shrunken min/max) that minimises the squared quantization error."""

    def range(self, bits: int, symmetric: bool) -> tuple[float, float]:
        v = self.values()
        qmin, qmax = qrange(bits, symmetric)
        best, best_err = (self.lo, self.hi), math.inf
        for alpha in torch.linspace(0.2, 1.0, 41).tolist():
            lo, hi = self.lo * alpha, self.hi * alpha
            scale, zero = qparams_from_range(torch.tensor(lo), torch.tensor(hi), bits, symmetric)
            err = float((fake_quantize(v, scale, zero, qmin, qmax) - v).pow(2).mean())
            if err < best_err:
                best, best_err = (lo, hi), err
        return best


@OBSERVERS.register("entropy")
class Entropy(Observer):
    """TensorRT's KL calibration: the |x| threshold whose quantized histogram diverges least."""

    bins = 2048

    def range(self, bits: int, symmetric: bool) -> tuple[float, float]:
        v = self.values().abs()
        top = float(v.max())
        if top == 0.0:
            return 0.0, 0.0
        hist = torch.histc(v, self.bins, 0.0, top).double()
        levels = 2 ** (bits - 1) if symmetric or self.lo < 0 else 2**bits
        best_i, best_kl = self.bins, math.inf
        for i in range(max(levels, 128), self.bins + 1, 16):
            kl = _kl_after_quantizing(hist, i, levels)
            if kl < best_kl:
                best_i, best_kl = i, kl
        threshold = top * best_i / self.bins
        return max(self.lo, -threshold), min(self.hi, threshold)


def _kl_after_quantizing(hist: torch.Tensor, i: int, levels: int) -> float:
    """KL(P || Q): P is the histogram clipped at bin i (outliers folded in), Q it merged into `levels`."""
    p = hist[:i].clone()
    p[-1] += hist[i:].sum()
    level = torch.arange(i) * levels // i  # which merged bin each fine bin falls in
    nonzero = (hist[:i] > 0).double()
    sums = torch.zeros(levels, dtype=p.dtype).scatter_add_(0, level, hist[:i])
    counts = torch.zeros(levels, dtype=p.dtype).scatter_add_(0, level, nonzero)
    q = nonzero * (sums / counts.clamp_min(1))[level]
    p, q = p / p.sum(), q / q.sum().clamp_min(1e-12)
    mask = p > 0
    return float((p[mask] * torch.log(p[mask] / q[mask].clamp_min(1e-12))).sum())


def make_observer(name: str) -> Observer:
    return OBSERVERS.get(name)()
