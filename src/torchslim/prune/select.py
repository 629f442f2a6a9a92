"""From importance scores to boolean keep-masks: a threshold, a sparsity per layer, or one global ranking.

A global ranking compares scores of different layers, whose scales differ (a wide layer's weights
are smaller, a gradient-based score is larger near the loss); a registered normalizer (`NORMALIZERS`,
chosen by `SparsityConfig.normalize`) first puts each layer's scores in comparable units. `auto`
(the default) is LAMP when every score is >= 0 and the raw ranking otherwise (LAMP needs them >= 0).

Counts are exact: a layer of n weights at sparsity s loses exactly round(s * n) of them (ties broken
by position), and a global ranking loses exactly round(s * N) over all selected weights. Entries a
hard mask already pruned stay pruned (they rank below everything).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from torchslim.errors import UserError
from torchslim.prune.masks import get_mask
from torchslim.prune.targets import Target
from torchslim.registry import Registry

Normalizer = Callable[[torch.Tensor], torch.Tensor]
"""One layer's ranked scores (-inf: already pruned) -> scores comparable across layers, same order."""
NORMALIZERS: Registry[Normalizer] = Registry("score normalizer")
NORMALIZERS.register("none", lambda scores: scores)


@NORMALIZERS.register("mean")
def _mean(scores: torch.Tensor) -> torch.Tensor:
    """Divided by the mean of the layer's remaining scores."""
    alive = scores[torch.isfinite(scores)]
    return scores / alive.mean().clamp_min(1e-30) if alive.numel() else scores


@NORMALIZERS.register("lamp")
def lamp(scores: torch.Tensor) -> torch.Tensor:
    """LAMP (Lee et al., ICLR 2021): a score over the sum of the layer's scores at or above it.

    The layer's best weight scores 1 and a weight scores high when few, large weights rank above it,
    so a global ranking keeps every layer's most important weights and thins a layer only where its
    tail is light. With squared magnitudes this bounds the layer's output distortion; the ratio is
    scale-free, so it applies to any non-negative criterion. Ties keep position order.
    """
    alive = torch.isfinite(scores)
    flat = torch.where(alive, scores, 0.0).flatten().double()
    if bool((flat < 0).any()):
        raise UserError("normalize='lamp' needs importance scores >= 0; use normalize='mean' or 'none'")
    order = torch.argsort(flat, stable=True)
    ranked = flat[order]
    tail = ranked.flip(0).cumsum(0).flip(0)
    out = torch.empty_like(flat)
    out[order] = ranked / tail.clamp_min(1e-300)
    return torch.where(alive, out.view(scores.shape).float(), -torch.inf)


AUTO = "auto"


def check_normalizer(name: str) -> None:
    """A clear error for an unknown normalizer name (`auto` or a registered one)."""
    if name != AUTO:
        NORMALIZERS.get(name)


def resolve(scores: Mapping[str, torch.Tensor], normalizer: str) -> str:
    """The registered normalizer `normalizer` stands for: `auto` is lamp unless some score is < 0."""
    if normalizer != AUTO:
        return normalizer
    negative = any(bool((s[torch.isfinite(s)] < 0).any()) for s in scores.values())
    return "none" if negative else "lamp"


def normalized(scores: Mapping[str, torch.Tensor], normalizer: str) -> dict[str, torch.Tensor]:
    """Each layer's ranked scores through the named normalizer (before a global ranking)."""
    fn = NORMALIZERS.get(resolve(scores, normalizer))
    return {name: fn(s) for name, s in scores.items()}


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
