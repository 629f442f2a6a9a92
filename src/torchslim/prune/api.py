"""`ts.prune_`: one verb; the config type picks the technique through the `PRUNERS` registry."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.config import BaseConfig, SparsityConfig
from torchslim.data import limit
from torchslim.errors import UserError
from torchslim.prune import pattern, select
from torchslim.prune.importance import IMPORTANCE, ImportanceInput, LossFn, auto_choice
from torchslim.prune.masks import get_mask, record, set_mask
from torchslim.prune.schedule import cubic_sparsity
from torchslim.prune.sensitivity import allocate, exact_counts, grid_for, joint_loss, max_layer_sparsity, scan
from torchslim.prune.targets import Target, find_targets
from torchslim.registry import Registry

PRUNERS: Registry[Callable[..., Any]] = Registry("pruning config")
"""Config class name -> `fn(model, config, **kwargs)`; `ChannelConfig` plugs in here."""
MAX_BATCHES = 32


def prune_(model: nn.Module, config: BaseConfig, **kwargs: Any) -> Any:
    """Prune `model` in place as `config` says (`SparsityConfig`: unstructured masks).

    Unstructured keyword arguments: `data` (batches `(inputs, target)`, needed by data-driven
    criteria and `allocation="auto"`; at most 32 batches are used), `loss(output, target)` (default
    cross-entropy), `seed`. Returns a `PruneReport`.
    """
    return PRUNERS.get(type(config).__name__)(model, config, **kwargs)


@dataclass
class PruneReport:
    sparsity: float
    """Fraction of the selected weights that are zero after pruning."""
    layer_sparsity: dict[str, float]
    sensitivity: dict[str, list[list[float]]] = field(default_factory=dict)
    """With `allocation="auto"`: per layer, `[sparsity, held loss]` points of the scan."""
    extra: dict[str, Any] = field(default_factory=dict)
    """What else the method reports (the layer-by-layer engine: blocks, peak memory, output errors)."""

    def notes(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sparsity": round(self.sparsity, 6), "layer_sparsity": self.layer_sparsity}
        out.update(self.extra)
        if self.sensitivity:
            out.update(sensitivity=self.sensitivity, sensitivity_metric=SENSITIVITY_METRIC)
        return out


SENSITIVITY_METRIC = "held-out loss (lower is better)"
"""What the sensitivity curves measure (see `torchslim.prune.sensitivity.scan`)."""


@dataclass
class Plan:
    """A validated request: everything is checked before any weight changes."""

    config: SparsityConfig
    targets: list[Target]
    inputs: ImportanceInput
    needs_data: bool


def plan(
    model: nn.Module,
    config: SparsityConfig,
    data: Iterable[Any] | None = None,
    loss: LossFn | None = None,
    seed: int = 0,
) -> Plan:
    if config.importance == "auto":  # resolved here, so reports and rounds name the criterion used
        has_data = data is not None and config.threshold is None  # a threshold stays on |w|
        config = config.replace(importance=auto_choice(model, has_data))
    criterion = IMPORTANCE.get(config.importance)
    select.check_normalizer(config.normalize)
    targets = find_targets(model, config.include, config.exclude)
    auto = config.allocation == "auto"
    if auto and config.threshold is not None:
        raise UserError(
            "SparsityConfig.allocation: 'auto' needs a sparsity or retain target, not a threshold"
        )
    needs = criterion.needs_data or auto
    batches = list(limit(data, MAX_BATCHES)) if data is not None else None
    if needs and not batches:
        why = f"importance {config.importance!r}" if criterion.needs_data else "allocation='auto'"
        raise UserError(f"{why} needs calibration data: pass data=<batches of (inputs, target)>")
    inputs = ImportanceInput(model, targets, batches, loss or F.cross_entropy, seed)
    return Plan(config, targets, inputs, needs)


def target_sparsity(config: SparsityConfig) -> float | None:
    if config.sparsity is not None:
        return config.sparsity
    return None if config.retain is None else 1.0 - config.retain


def prune_unstructured(
    model: nn.Module,
    config: SparsityConfig,
    *,
    data: Iterable[Any] | None = None,
    loss: LossFn | None = None,
    seed: int = 0,
    layer_sparsity: dict[str, float] | None = None,
) -> PruneReport:
    """Score, choose and apply masks; `layer_sparsity` (used by gradual schedules) fixes per-layer targets.

    With several rounds (`SparsityConfig.rounds`) each layer's sparsity climbs the cubic schedule from
    where its hard mask stands to its target, and the weights still alive are re-scored every round.
    """
    layerwise = IMPORTANCE.get(config.importance).layerwise
    if layerwise is not None:  # wanda, sparsegpt: one block at a time through the calibration engine
        return layerwise(model, config, data)
    p = plan(model, config, data, loss, seed)
    scores = _scores(p)
    curves: dict[str, list[tuple[float, float]]] = {}
    if layer_sparsity is None and config.allocation == "auto":
        sparsity = target_sparsity(config)
        assert sparsity is not None and p.inputs.data is not None
        counts, curves = auto_counts(model, p, scores, sparsity)
        layer_sparsity = {t.name: counts[t.name] / t.numel() for t in p.targets}
    rounds = 1 if config.threshold is not None or config.pattern else resolved_rounds(p.config)
    start = _hard_sparsity(p.targets)
    for k in range(rounds):
        if k:
            scores = _scores(p)
        keep = _choose(p, scores, (k + 1) / rounds, start, layer_sparsity)
        apply_masks(model, p.targets, select.keep_hard(p.targets, keep), config.soft)
    return report(p.targets, curves)


def resolved_rounds(config: SparsityConfig) -> int:
    """`config.rounds`, or the criterion's own default when it is None."""
    return config.rounds if config.rounds is not None else IMPORTANCE.get(config.importance).rounds


def _scores(p: Plan) -> dict[str, torch.Tensor]:
    return select.ranked_scores(p.targets, IMPORTANCE.get(p.config.importance).fn(p.inputs))


def _hard_sparsity(targets: list[Target]) -> dict[str, float]:
    """Per layer, the fraction its hard mask already prunes (where a round schedule starts)."""
    out = {}
    for t in targets:
        mask = get_mask(t.module, t.param)
        out[t.name] = 0.0 if mask is None or mask.soft else float((~mask.mask).float().mean())
    return out


def _choose(
    p: Plan,
    scores: dict[str, torch.Tensor],
    progress: float,
    start: dict[str, float],
    layer_sparsity: dict[str, float] | None,
) -> dict[str, torch.Tensor]:
    """Keep-masks at `progress` in (0, 1] of the way from the `start` sparsities to the targets."""
    config = p.config
    if config.threshold is not None:
        return select.by_threshold(scores, config.threshold)
    if config.pattern is not None:
        return pattern.by_pattern(scores, config.pattern)
    sizes = {t.name: t.numel() for t in p.targets}
    final = target_sparsity(config) or 0.0
    goals = layer_sparsity if layer_sparsity is not None else dict.fromkeys(sizes, final)
    if config.scope == "global" and layer_sparsity is None:
        pruned = sum(start[n] * sizes[n] for n in sizes) / max(sum(sizes.values()), 1)
        s = cubic_sparsity(progress, final, min(pruned, final))
        return select.by_global(select.normalized(scores, config.normalize), s, max_layer_sparsity(final))
    counts = {n: round(cubic_sparsity(progress, goals.get(n, 0.0), start[n]) * sizes[n]) for n in sizes}
    return select.by_counts(scores, counts)


def auto_counts(
    model: nn.Module, p: Plan, scores: dict[str, torch.Tensor], sparsity: float
) -> tuple[dict[str, int], dict[str, list[tuple[float, float]]]]:
    """Pruned count per layer from sensitivity; the candidate with the least measured joint loss wins.

    Candidates: the criterion's own global ranking, and the allocations from two scans, one with the
    other layers dense and one with them pruned as the global ranking would (so that interactions
    between layers enter the curves). The additive model proposes; the held loss of the whole pruned
    network, measured once per candidate, decides.
    """
    data, loss = p.inputs.data, p.inputs.loss
    assert data is not None
    sizes = {t.name: t.numel() for t in p.targets}
    ranked = select.by_global(
        select.normalized(scores, p.config.normalize), sparsity, cap=max_layer_sparsity(sparsity)
    )
    Curves = dict[str, list[tuple[float, float]]]
    candidates: list[tuple[dict[str, int], Curves]] = [({n: int((~k).sum()) for n, k in ranked.items()}, {})]
    for background in (None, ranked):
        curves = scan(model, p.targets, scores, data, loss, grid_for(sparsity), background)
        candidates.append((exact_counts(allocate(curves, sizes, sparsity), sizes, sparsity), curves))
    joint = [joint_loss(model, p.targets, select.by_counts(scores, c), data, loss) for c, _ in candidates]
    best = min(range(len(candidates)), key=lambda i: (joint[i], -i))
    return candidates[best][0], candidates[best][1] or candidates[-1][1]


def auto_layer_sparsity(
    model: nn.Module,
    config: SparsityConfig,
    *,
    data: Iterable[Any] | None,
    loss: LossFn | None = None,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, list[tuple[float, float]]]]:
    """The per-layer sparsity `allocation="auto"` would choose (and the scan behind it), without pruning."""
    p = plan(model, config.replace(allocation="auto"), data, loss, seed)
    sparsity = target_sparsity(config)
    assert sparsity is not None
    scores = select.ranked_scores(p.targets, IMPORTANCE.get(p.config.importance).fn(p.inputs))
    counts, curves = auto_counts(model, p, scores, sparsity)
    return {t.name: counts[t.name] / t.numel() for t in p.targets}, curves


def apply_masks(model: nn.Module, targets: list[Target], keep: dict[str, torch.Tensor], soft: bool) -> None:
    changed = {t.key: soft for t in targets if set_mask(t.module, t.param, keep[t.name], soft)}
    record(model, changed)


def report(targets: list[Target], curves: dict[str, list[tuple[float, float]]] | None = None) -> PruneReport:
    zeros = {t.name: int((t.weight() == 0).sum()) for t in targets}
    sizes = {t.name: t.numel() for t in targets}
    return PruneReport(
        sparsity=sum(zeros.values()) / max(sum(sizes.values()), 1),
        layer_sparsity={n: round(zeros[n] / sizes[n], 6) for n in sizes},
        sensitivity={n: [[s, round(v, 6)] for s, v in c] for n, c in (curves or {}).items()},
    )


PRUNERS.register("SparsityConfig", prune_unstructured)
