"""From importance scores to boolean keep-masks: a threshold, a sparsity per layer, or one global ranking.

Counts are exact: a layer of n weights at sparsity s loses exactly round(s * n) of them (ties broken
by position), and a global ranking loses exactly round(s * N) over all selected weights. Entries a
hard mask already pruned stay pruned (they rank below everything).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from torchslim.errors import UserError
from torchslim.prune.masks import get_mask
from torchslim.prune.targets import Target


def ranked_scores(targets: Sequence[Target], scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scores as float, NaN lowest, hard-pruned entries at -inf; checked against the weights' shapes."""
    out = {}
    for t in targets:
        if t.name not in scores:
            raise UserError(f"importance criterion returned no scores for layer {t.name!r}")
        s = scores[t.name].detach().float()
        if s.shape != t.weight().shape:
            raise UserError(f"importance scores of {t.name!r} have shape {list(s.shape)}, not the weight's")
        s = torch.nan_to_num(s, nan=-torch.inf)
        mask = get_mask(t.module, t.param)
        if mask is not None and not mask.soft:
            s = torch.where(mask.mask, s, torch.tensor(-torch.inf))
        out[t.name] = s
    return out


def _prune_lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if count > 0:
        keep[torch.argsort(scores.flatten(), stable=True)[:count]] = False
    return keep.view(scores.shape)


def by_counts(scores: Mapping[str, torch.Tensor], counts: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """Prune exactly `counts[name]` lowest-scored entries of each layer."""
    return {name: _prune_lowest(s, int(counts[name])) for name, s in scores.items()}


def by_layer(scores: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    return by_counts(scores, {n: round(sparsity * s.numel()) for n, s in scores.items()})


def by_global(
    scores: Mapping[str, torch.Tensor], sparsity: float, cap: float = 1.0
) -> dict[str, torch.Tensor]:
    """One ranking across all layers: exactly round(sparsity * total) entries pruned.

    No layer loses more than `cap` of its entries (a ranking that empties a layer disconnects the
    network): a layer over the cap is fixed at it and the rest of the budget re-ranked among the others.
    """
    sizes = {n: s.numel() for n, s in scores.items()}
    budget = round(sparsity * sum(sizes.values()))
    fixed: dict[str, int] = {}
    while True:
        free = [n for n in scores if n not in fixed]
        counts = dict(fixed)
        if free:
            flat = torch.cat([scores[n].flatten() for n in free])
            pruned = ~_prune_lowest(flat, budget - sum(fixed.values()))
            for n, part in zip(free, torch.split(pruned, [sizes[n] for n in free]), strict=True):
                counts[n] = int(part.sum())
        over = {n: int(cap * sizes[n]) for n in free if counts[n] > int(cap * sizes[n])}
        if not over:
            return by_counts(scores, counts)
        fixed.update(over)


def by_threshold(scores: Mapping[str, torch.Tensor], threshold: float) -> dict[str, torch.Tensor]:
    """Prune every entry scored below `threshold` (|w| < t for the magnitude criterion)."""
    return {name: s >= threshold for name, s in scores.items()}


def keep_hard(targets: Sequence[Target], keep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Never revive a hard-pruned entry, whatever the new ranking says."""
    out = dict(keep)
    for t in targets:
        mask = get_mask(t.module, t.param)
        if mask is not None and not mask.soft:
            out[t.name] = keep[t.name] & mask.mask
    return out
