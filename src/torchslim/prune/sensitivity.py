"""Sensitivity analysis and automatic per-layer sparsity (`allocation="auto"`).

`scan` prunes one layer at a time to each sparsity of a grid (by the criterion's own ranking, all
other layers as they are) and measures the loss on held batches: one curve per layer, cheap because
it needs forward passes only. `allocate` then picks per-layer sparsities that meet a global budget
with the least predicted loss increase, treating layers as independent (the sum of their curves):
a Lagrangian relaxation, min sum_l dL_l(s_l) - lam * sum_l c_l s_l, solved per layer on a fine grid,
with lam found by bisection and the two allocations bracketing the budget blended to meet it exactly.
The cost c_l is a layer's parameter count (a sparsity budget) or its bytes (a size budget).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from torchslim.data import call, split
from torchslim.prune.importance import LossFn
from torchslim.prune.masks import get_mask
from torchslim.prune.select import by_counts
from torchslim.prune.targets import Target

GRID = (0.25, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
Curve = list[tuple[float, float]]


def max_layer_sparsity(target: float) -> float:
    """No layer is pruned beyond this: leaves each layer a fifth of the budget's density."""
    return 1.0 - (1.0 - target) / 5


def grid_for(target: float) -> list[float]:
    cap = max_layer_sparsity(target)
    return sorted({g for g in GRID if g < cap} | {round(target, 6), round(cap, 6)})


def held_loss(model: nn.Module, data: Sequence[Any], loss: LossFn) -> float:
    """Mean loss over `data` in eval mode, batch-norm statistics re-estimated on `data` first.

    Pruning shifts every activation's statistics; judging a pruned network with the dense network's
    running statistics measures the stale statistics more than the pruning (adaptive BN, Li et al. 2020).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), recalibrated_norms(model, data):
            values = [float(loss(call(model, split(b)[0]), split(b)[1])) for b in data]
    finally:
        model.train(was_training)
    return sum(values) / max(len(values), 1)


@contextmanager
def recalibrated_norms(model: nn.Module, data: Sequence[Any]) -> Iterator[None]:
    """Batch-norm running statistics re-estimated on `data` (cumulative average), restored on exit."""
    norms: list[_BatchNorm] = [
        m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats
    ]
    saved = [(m.momentum, {k: v.clone() for k, v in m.state_dict().items()}) for m in norms]
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        if norms:
            for batch in data:
                call(model, split(batch)[0])
        for m in norms:
            m.eval()
        yield
    finally:
        for m, (momentum, state) in zip(norms, saved, strict=True):
            m.momentum = momentum
            m.load_state_dict(state)


@contextmanager
def masked(target: Target, keep: torch.Tensor) -> Iterator[None]:
    """Run with `target` pruned to `keep`, then restore it exactly."""
    mask = get_mask(target.module, target.param)
    if mask is not None:
        saved = mask.mask.clone()
        mask.mask.copy_(keep & saved if not mask.soft else keep)
        try:
            yield
        finally:
            mask.mask.copy_(saved)
        return
    leaf = target.leaf()
    saved = leaf.detach().clone()
    with torch.no_grad():
        leaf.mul_(keep)
    try:
        yield
    finally:
        with torch.no_grad():
            leaf.copy_(saved)


def scan(
    model: nn.Module,
    targets: Sequence[Target],
    scores: Mapping[str, torch.Tensor],
    data: Sequence[Any],
    loss: LossFn,
    grid: Sequence[float],
    background: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Curve]:
    """`{layer: [(sparsity, held loss), ...]}`, from sparsity 0 of that layer.

    With `background` (keep-masks), every other layer is pruned to its background mask while one
    layer is scanned: the curves then describe each layer at the operating point, interactions included.
    """
    curves: dict[str, Curve] = {}
    for t in targets:
        with ExitStack() as stack:
            for other in targets:
                if background is not None and other is not t:
                    stack.enter_context(masked(other, background[other.name]))
            curve = [(0.0, held_loss(model, data, loss))]
            for s in grid:
                keep = by_counts({t.name: scores[t.name]}, {t.name: round(s * t.numel())})[t.name]
                with masked(t, keep):
                    curve.append((float(s), held_loss(model, data, loss)))
        curves[t.name] = curve
    return curves


def joint_loss(
    model: nn.Module,
    targets: Sequence[Target],
    keep: Mapping[str, torch.Tensor],
    data: Sequence[Any],
    loss: LossFn,
) -> float:
    """Held loss with every target pruned to its `keep` mask at once (restored after)."""
    with ExitStack() as stack:
        for t in targets:
            stack.enter_context(masked(t, keep[t.name]))
        return held_loss(model, data, loss)


def _increase(curve: Curve, fine: np.ndarray) -> np.ndarray:
    """Loss increase over the curve's start, interpolated, non-decreasing (noise never rewards pruning)."""
    xs, ys = zip(*sorted(curve), strict=True)
    rise = np.interp(fine, xs, np.asarray(ys) - ys[0])
    return np.maximum.accumulate(np.maximum(rise, 0.0))


def _choose(rises: np.ndarray, costs: np.ndarray, fine: np.ndarray, lam: float) -> np.ndarray:
    return fine[np.argmin(rises - lam * costs[:, None] * fine[None, :], axis=1)]


def allocate(curves: Mapping[str, Curve], costs: Mapping[str, float], target: float) -> dict[str, float]:
    """Per-layer sparsity meeting `sum(c_l s_l) = target * sum(c_l)` with the least summed loss increase."""
    names = list(curves)
    cap = min(max(s for s, _ in curves[n]) for n in names)
    fine = np.linspace(0.0, cap, 401)
    rises = np.stack([_increase(curves[n], fine) for n in names])
    c = np.array([costs[n] for n in names], dtype=np.float64)
    c = c / c.sum()

    def total(lam: float) -> tuple[np.ndarray, float]:
        s = _choose(rises, c, fine, lam)
        return s, float((c * s).sum())

    lo, hi = 0.0, 1.0
    while total(hi)[1] < target and hi < 1e12:
        hi *= 4.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid)[1] < target else (lo, mid)
    (s_lo, p_lo), (s_hi, p_hi) = total(lo), total(hi)
    blend = 0.0 if p_hi <= p_lo else min(max((target - p_lo) / (p_hi - p_lo), 0.0), 1.0)
    return {n: float(v) for n, v in zip(names, s_lo + blend * (s_hi - s_lo), strict=True)}


def exact_counts(sparsity: Mapping[str, float], sizes: Mapping[str, int], target: float) -> dict[str, int]:
    """Integer pruned counts per layer near `sparsity`, summing to exactly round(target * total).

    Largest remainders: counts start at floor(s * n); units are added where the remainder is largest
    (or removed where it is smallest) until the total is met.
    """
    want = round(target * sum(sizes.values()))
    raw = {n: min(max(sparsity[n], 0.0), 1.0) * sizes[n] for n in sizes}
    counts = {n: int(np.floor(v)) for n, v in raw.items()}
    order = sorted(sizes, key=lambda n: raw[n] - counts[n], reverse=True)
    for step, names in ((1, order), (-1, order[::-1])):
        while (want - sum(counts.values())) * step > 0:
            movable = [n for n in names if 0 <= counts[n] + step <= sizes[n]]
            if not movable:
                break
            for n in movable[: abs(want - sum(counts.values()))]:
                counts[n] += step
    return counts
