"""Group importance: one score per pruning unit, aggregated over every tensor slice the unit spans.

A criterion scores each position of one tensor side (`module`, role) from the module's tensors;
`group_scores` adds those scores into the group's units, so a channel's importance counts its conv
filter, its norm scale and its consumers' input columns together. Criteria by name: `l1`, `l2`
(= `magnitude`), `taylor` (first order, (g*w)^2 summed over calibration batches), `entropy`
(differential entropy of the channel's activations, Gaussian estimate), `bn_scale` (network
slimming: |gamma| of the normalization layers in the group, L2 where a group has none), `random`.
Register your own in `GROUP_CRITERIA`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.data import call, forward, split
from torchslim.prune.graph import Graph, Group, Key
from torchslim.prune.layers import rule_of
from torchslim.registry import Registry

LossFn = Callable[[Any, Any], torch.Tensor]


@dataclass
class Context:
    model: nn.Module
    graph: Graph
    data: Sequence[Any] | None = None
    loss: LossFn = F.cross_entropy
    seed: int = 0
    grads: dict[int, torch.Tensor] = field(default_factory=dict)
    """id(tensor) -> accumulated (grad * value)^2, filled for `taylor`."""
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    """module path -> per-channel entropy of its output, filled for `entropy`."""


PositionScore = Callable[[Context, Key], torch.Tensor | None]


@dataclass(frozen=True)
class GroupCriterion:
    score: PositionScore
    prepare: Callable[[Context], None] = lambda ctx: None


GROUP_CRITERIA: Registry[GroupCriterion] = Registry("channel importance criterion")


def tensors_of(ctx: Context, key: Key) -> dict[str, tuple[torch.Tensor, int]]:
    """Tensor name -> (tensor, dim of the pruned positions) for one tensor side."""
    path, role = key
    if role.startswith("param"):
        owner, _, name = path.rpartition(".")
        # the tensor itself, not a detached view: `taylor` finds its gradients by identity
        return {name: (getattr(ctx.model.get_submodule(owner), name), int(role[5:]))}
    module = ctx.model.get_submodule(path)
    rule = rule_of(module)
    assert rule is not None
    dims = rule.dims_for(module, role)
    out: dict[str, tuple[torch.Tensor, int]] = {}
    for name, dim in dims.items():
        t = getattr(module, name, None)
        if isinstance(t, nn.Parameter):
            out[name] = (t, dim)
    return out


def per_position(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of `x` over every dim but `dim`."""
    return x.movedim(dim, 0).reshape(x.shape[dim], -1).sum(1)


def _reduce(fn: Callable[[torch.Tensor], torch.Tensor]) -> PositionScore:
    def score(ctx: Context, key: Key) -> torch.Tensor | None:
        parts = [per_position(fn(t.detach().float()), d) for t, d in tensors_of(ctx, key).values()]
        return torch.stack(parts).sum(0) if parts else None

    return score


GROUP_CRITERIA.register("l1", GroupCriterion(_reduce(torch.abs)))
GROUP_CRITERIA.register("l2", GroupCriterion(_reduce(torch.square)))
GROUP_CRITERIA.register("magnitude", GroupCriterion(_reduce(torch.square)))


def _random(ctx: Context, key: Key) -> torch.Tensor | None:
    gen = torch.Generator().manual_seed(ctx.seed + hash(key) % 10_000)
    return torch.rand(ctx.graph.sizes[key], generator=gen)


GROUP_CRITERIA.register("random", GroupCriterion(_random))


def _bn_scale(ctx: Context, key: Key) -> torch.Tensor | None:
    if key[1] != "both" or "Norm" not in type(ctx.model.get_submodule(key[0])).__name__:
        return None
    weight = getattr(ctx.model.get_submodule(key[0]), "weight", None)
    return None if weight is None else weight.detach().abs().float()


GROUP_CRITERIA.register("bn_scale", GroupCriterion(_bn_scale))


def _prepare_taylor(ctx: Context) -> None:
    assert ctx.data is not None, "taylor needs data"
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    was_training = ctx.model.training
    ctx.model.eval()
    try:
        for batch in ctx.data:
            inputs, target = split(batch)
            with torch.enable_grad():
                grads = torch.autograd.grad(
                    ctx.loss(forward(ctx.model, inputs), target), params, allow_unused=True
                )
            for p, g in zip(params, grads, strict=True):
                if g is not None:
                    total = ctx.grads.setdefault(id(p), torch.zeros_like(p, dtype=torch.float32))
                    total += (g.detach() * p.detach()).float().square()
    finally:
        ctx.model.train(was_training)


def _taylor(ctx: Context, key: Key) -> torch.Tensor | None:
    parts = [
        per_position(ctx.grads[id(t)], d) for t, d in tensors_of(ctx, key).values() if id(t) in ctx.grads
    ]
    return torch.stack(parts).sum(0) if parts else None


GROUP_CRITERIA.register("taylor", GroupCriterion(_taylor, _prepare_taylor))


def _prepare_entropy(ctx: Context) -> None:
    """Per-channel Gaussian entropy 0.5*log(2*pi*e*var) of each producing layer's output."""
    assert ctx.data is not None, "entropy needs data"
    sums: dict[str, list[torch.Tensor]] = {}
    handles = []
    for path, role in ctx.graph.sizes:
        module = ctx.model.get_submodule(path) if not role.startswith("param") else None
        rule = rule_of(module) if module is not None else None
        if rule is None or role == "in" or path in sums:
            continue
        sums[path] = []

        def hook(
            m: nn.Module, args: Any, out: Any, path: str = path, dim: int = rule.channel_dim(module)
        ) -> None:
            out = out[0] if isinstance(out, tuple) else out  # recurrent layers: (output, state)
            x = out.detach().float().movedim(dim, -1).reshape(-1, out.shape[dim])
            sums[path].append(torch.stack([x.sum(0), x.square().sum(0), torch.full_like(x[0], len(x))]))

        handles.append(module.register_forward_hook(hook))  # type: ignore[union-attr]
    try:
        with torch.no_grad():
            for batch in ctx.data:
                call(ctx.model, split(batch)[0])
    finally:
        for h in handles:
            h.remove()
    for path, parts in sums.items():
        if parts:
            s, sq, n = torch.stack(parts).sum(0)
            var = (sq / n - (s / n).square()).clamp_min(1e-12)
            ctx.activations[path] = 0.5 * torch.log(2 * math.pi * math.e * var)


def _entropy(ctx: Context, key: Key) -> torch.Tensor | None:
    if key[1] == "in" or key[0] not in ctx.activations:
        return None
    act = ctx.activations[key[0]]
    return act if len(act) == ctx.graph.sizes[key] else None  # a recurrent layer's gate rows: not these


GROUP_CRITERIA.register("entropy", GroupCriterion(_entropy, _prepare_entropy))


def group_scores(ctx: Context, criterion: str) -> list[np.ndarray]:
    """One score array per group of `ctx.graph`, higher = keep."""
    crit = GROUP_CRITERIA.get(criterion)
    crit.prepare(ctx)
    cache: dict[Key, np.ndarray | None] = {}
    out = []
    for group in ctx.graph.groups:
        scores = np.zeros(group.units)
        found = False
        for key, pos in group.positions.items():
            if key not in cache:
                t = crit.score(ctx, key)
                cache[key] = None if t is None else t.double().numpy()
            s = cache[key]
            if s is not None:
                np.add.at(scores, pos[pos >= 0], s[pos >= 0])
                found = True
        out.append(scores if found else _fallback(ctx, group))
    return out


def _fallback(ctx: Context, group: Group) -> np.ndarray:
    """L2 where a criterion has nothing to say about a group (bn_scale without a norm layer)."""
    scores = np.zeros(group.units)
    for key, pos in group.positions.items():
        s = GROUP_CRITERIA.get("l2").score(ctx, key)
        if s is not None:
            np.add.at(scores, pos[pos >= 0], s.double().numpy()[pos >= 0])
    return scores
