"""Structural (channel) pruning: `prune_channels_(model, ChannelConfig(...), example_inputs, data)`.

The three concerns stay apart: `graph.py` finds what is coupled, `group_importance.py` ranks the
units, `layers.py` cuts them. This module turns a config target (ratio, MAC or latency target,
rounding, include/exclude) into the units to remove, applies the cut in place, and records it so
that `ts.save`/`ts.load` rebuild the smaller shapes (`channel_prune` transform, `transform.py`).
The whole plan is computed before the first module changes: an error leaves the model untouched.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.nn as nn
import torch.nn.functional as F

from torchslim.config import ChannelConfig
from torchslim.errors import UserError
from torchslim.metrics.latency import measure_latency
from torchslim.metrics.macs import count_macs
from torchslim.prune import torch_blocks as torch_blocks  # registers torch.nn's transformer blocks
from torchslim.prune.check import guard
from torchslim.prune.flow_attention import fix_heads
from torchslim.prune.flow_split import fix_splits
from torchslim.prune.graph import Graph, Group, Key, build_graph
from torchslim.prune.group_importance import Context, LossFn, group_scores
from torchslim.prune.heads import (
    block_cuts,
    block_groups,
    block_paths,
    fix_blocks,
    note_cuts,
    replace_blocks,
    sync_config,
)
from torchslim.prune.layers import _select, prune_module, rule_of
from torchslim.prune.soft import SoftChannelPruner
from torchslim.prune.transform import record_prune, snapshot
from torchslim.targeting import is_selected, matches

Plan = dict[int, np.ndarray]
"""Group index -> unit indices to remove."""


def opaque_modules(model: nn.Module, include: Sequence[str], exclude: Sequence[str]) -> set[str]:
    """Excluded modules (left whole, as graph leaves) and registered layers the globs do not select."""
    out = set()
    for name, module in model.named_modules():
        if not name:
            continue
        excluded = any(matches(name, p) for p in exclude)
        if excluded or (rule_of(module) is not None and not is_selected(name, include, exclude)):
            out.add(name)
    return out


def protected_modules(model: nn.Module, config: ChannelConfig) -> tuple[set[str], set[str]]:
    """(opaque, protected): modules left whole, and layers that keep only their output channels.

    With `exclude_mode="outputs"` a matched layer that has a rule (and is not inside a whole module)
    is traced as usual but its outputs are frozen, so its inputs are cut with their producer, as
    Torch-Pruning's `ignored_layers`; containers stay whole (that is also how untraceable code is
    skipped)."""
    opaque = opaque_modules(model, config.include, config.exclude)
    if config.exclude_mode == "coupled":
        return opaque, set()
    modules = dict(model.named_modules())
    protected = {n for n in opaque if _layer_rule(modules[n]) and not _inside(n, opaque)}
    return opaque - protected, protected


def _layer_rule(module: nn.Module) -> bool:
    rule = rule_of(module)
    return rule is not None and rule.kind(module) != "opaque"


def _inside(name: str, paths: set[str]) -> bool:
    return any(name.startswith(p + ".") for p in paths if p != name)


def dependency_graph(model: nn.Module, example_inputs: Any, config: ChannelConfig) -> Graph:
    """Coupled channel groups of `model`: traced layers plus registered transformer blocks."""
    opaque, protected = protected_modules(model, config)
    blocks = block_paths(model, opaque | protected)
    graph = build_graph(
        model,
        example_inputs,
        opaque=opaque | set(blocks),
        protected=protected,
        allow_untraceable=bool(blocks),
    )
    graph.groups += block_groups(model, blocks)
    convs = {name for name, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}
    for group in graph.groups:
        group.conv = not group.block and group.name in convs
        for key, pos in group.positions.items():
            graph.sizes.setdefault(key, len(pos))
    return graph


AUTO_ROUND_TO, AUTO_MIN_CHANNELS = 4, 32
"""`round_to=None`: channel counts in multiples of 4 for convolution groups of at least 32. onnxruntime's
blocked (NCHWc) convolutions on AVX2 take only such counts (batch 1, DS-CNN, one thread: 40 channels
0.15 ms, 37 channels 0.40 ms, 44 channels 0.17 ms); in a smaller group a step of 4 costs too much
of the pruning's resolution (a LeNet-5 layer of 6 channels). On AVX-512 the blocked kernels work in
blocks of 16 output channels, and a count costs what the next multiple of 16 costs (a DS-CNN ran
0.038 ms per chunk at 24 to 32 channels, 0.057 ms at 36 to 48), so `round_to=16` pays there for a
fixed ratio; it is not the default because under a MACs target steps of 16 overshoot (mnist1d-cnn:
0.12x MACs for a 0.25 target, 0.35x for 0.5)."""


def round_to_for(config: ChannelConfig, group: Group) -> int:
    if config.round_to is not None:
        return config.round_to
    return AUTO_ROUND_TO if group.conv and group.units >= AUTO_MIN_CHANNELS else 1


def _keep_count(n: int, fraction_removed: float, round_to: int, unit_channels: int) -> int:
    step = round_to // math.gcd(round_to, unit_channels)
    keep = round(n * (1.0 - fraction_removed) / step) * step
    return min(n, max(keep, step, 1))


def plan_for(graph: Graph, scores: list[np.ndarray], ratio: float, config: ChannelConfig) -> Plan:
    """Units to remove so that each group (layer scope) or all groups together (global) lose `ratio`."""
    if config.scope == "global" and graph.groups:
        normed = [s / (s.mean() + 1e-12) for s in scores]
        flat = np.sort(np.concatenate(normed))
        threshold = flat[min(int(ratio * len(flat)), len(flat) - 1)] if ratio > 0 else -np.inf
        fractions = [float((s < threshold).mean()) for s in normed]
    else:
        fractions = [ratio] * len(graph.groups)
    plan: Plan = {}
    for gi, (group, s, frac) in enumerate(zip(graph.groups, scores, fractions, strict=True)):
        step = round_to_for(config, group)
        keep = _keep_count(group.units, min(frac, 0.95), step, group.unit_channels)
        if keep < group.units:
            plan[gi] = np.argsort(s, kind="stable")[: group.units - keep]
    return plan


def apply_plan(model: nn.Module, graph: Graph, plan: Plan) -> dict[str, Any]:
    """Cut `model` in place; returns the `channel_prune` transform parameters.

    Blocks that cannot hold fewer units are swapped first, and the snapshot taken after the swap, so
    the record is what replaying the swap on a fresh model (`replace`) and then the shapes rebuilds."""
    cuts = block_cuts(graph.groups, plan)
    replaced = replace_blocks(model, cuts)
    before = snapshot(model)
    note_cuts(model, cuts)
    for (path, role), keep in graph.keep(plan).items():
        if role.startswith("param"):
            owner, _, name = path.rpartition(".")
            _select(model.get_submodule(owner), name, int(role[5:]), keep)
        else:
            prune_module(model.get_submodule(path), role, keep)
    fix_blocks(model)
    fix_splits(model)
    fix_heads(model)
    record = record_prune(model, before)
    return {"replace": replaced, **record} if replaced else record


def _cost(model: nn.Module, example_inputs: Any, metric: str) -> float:
    if metric == "macs":
        return float(count_macs(model, example_inputs))
    return measure_latency(model, example_inputs, repeats=10)


def search_ratio(
    model: nn.Module,
    graph: Graph,
    scores: list[np.ndarray],
    config: ChannelConfig,
    measure: Callable[[nn.Module], float],
) -> float:
    """The smallest ratio whose pruned model costs at most the target fraction of the dense one."""
    target = config.macs_target if config.macs_target is not None else config.latency_target
    assert target is not None
    budget = target * measure(model)

    def cost(ratio: float) -> float:
        trial = copy.deepcopy(model)
        apply_plan(trial, graph, plan_for(graph, scores, ratio, config))
        return measure(trial)

    lo, hi = 0.0, 0.95
    if cost(hi) > budget:
        raise UserError(
            f"ChannelConfig: cannot reach {target:.0%} of the dense cost by pruning "
            f"the prunable channels (at most {cost(hi) / budget * target:.0%}); exclude fewer modules"
        )
    for _ in range(8):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if cost(mid) <= budget else (mid, hi)
    return hi


@dataclass
class ChannelReport:
    ratio: float
    """Fraction of units removed from each group (layer scope) or overall (global scope)."""
    groups: int
    units_removed: int
    units_total: int
    soft: SoftChannelPruner | None = None
    """With `soft=True`: the callback that re-zeroes channels while training; call `finalize(model)`."""
    adjusted: dict[str, str] = field(default_factory=dict)
    """Blocks whose units (heads; under grouped-query attention a kv head with its query heads) are too
    few for the ratio: what they lost instead, so the grouping the config states still holds."""
    kept: dict[str, str] = field(default_factory=dict)
    """Module path -> why channels there were kept whole (a construct the cut cannot follow)."""

    def notes(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ratio": round(self.ratio, 4),
            "groups": self.groups,
            "units_removed": self.units_removed,
            "units_total": self.units_total,
        }
        out |= {"kept_whole": self.kept} if self.kept else {}
        return out | ({"adjusted": self.adjusted} if self.adjusted else {})


def adjusted_blocks(graph: Graph, plan: Plan, ratio: float) -> dict[str, str]:
    """Block path -> what it lost, for blocks whose whole units cannot make `ratio` exactly."""
    out = {}
    for gi, group in enumerate(graph.groups):
        removed = len(plan.get(gi, ()))
        if group.block and abs(removed / group.units - ratio) > 1 / (4 * group.units):
            out[group.name] = (
                f"removed {removed} of {group.units} units of {group.unit_channels} channels "
                f"(ratio {ratio:g} rounds to whole units)"
            )
    return out


def prune_channels_(
    model: nn.Module,
    config: ChannelConfig,
    example_inputs: Any = None,
    data: Sequence[Any] | None = None,
    *,
    loss: LossFn = F.cross_entropy,
    seed: int = 0,
) -> ChannelReport:
    """Remove channels, filters and heads of `model` in place; it stays an ordinary dense model.

    With `config.soft` the chosen channels are only zeroed; train with `report.soft` as a callback
    (it re-selects and re-zeroes each epoch, so channels may regrow) and call its `finalize(model)`.
    """
    if example_inputs is None:
        raise UserError("channel pruning needs example_inputs to trace the model")
    graph = dependency_graph(model, example_inputs, config)
    data = list(data) if data is not None else None
    if config.importance in ("taylor", "entropy") and not data:
        raise UserError(f"ChannelConfig.importance={config.importance!r} needs data (calibration batches)")
    ctx = Context(model, graph, data, loss, seed)
    scores = group_scores(ctx, config.importance)
    ratio = config.ratio
    if ratio is None:
        metric = "macs" if config.macs_target is not None else "latency"
        ratio = search_ratio(model, graph, scores, config, lambda m: _cost(m, example_inputs, metric))
    plan = plan_for(graph, scores, ratio, config)
    report = ChannelReport(
        ratio, len(graph.groups), sum(len(v) for v in plan.values()), sum(g.units for g in graph.groups)
    )
    report.kept = dict(graph.notes)
    if config.scope != "global":
        report.adjusted = adjusted_blocks(graph, plan, ratio)
    if config.soft:
        report.soft = SoftChannelPruner(graph, config, ratio, ctx)
        report.soft.zero(model, plan)
    else:
        guard(model, example_inputs, lambda: finish(model, graph, plan))
    return report


def finish(model: nn.Module, graph: Graph, plan: Plan) -> None:
    """Cut and record the `channel_prune` transform for ts.save / ts.load (with the config fields that
    now describe the pruned sizes, so a rebuilt transformers model gets them back)."""
    from torchslim import io

    params = apply_plan(model, graph, plan)
    fields = sync_config(model)
    io.add_transform(model, "channel_prune", {**params, "config": fields} if fields else params)


def removed_fraction(graph: Graph, plan: Plan) -> float:
    total = sum(g.units for g in graph.groups)
    return sum(len(v) for v in plan.values()) / max(total, 1)


__all__ = ["Key", "apply_plan", "dependency_graph", "plan_for", "prune_channels_"]
