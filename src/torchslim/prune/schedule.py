"""Sparsity schedules: the cubic curve of Zhu & Gupta (2017), and a training callback that follows it.

    s(t) = s_f + (s_i - s_f) * (1 - p)^3,   p = (t - t_begin) / (t_end - t_begin) clipped to [0, 1]

prunes fast while the network is redundant and slowly near the target. `iterative_targets` samples
it at N rounds (prune -> short fine-tune, repeated); `GradualPruner` applies it during training.

In a recipe, `prune: {kind: unstructured, sparsity: 0.9, schedule: {kind: gradual}}` attaches empty
masks and appends a `GradualPruner` to the run's callbacks; the next `finetune` (or `distill`) stage
drives it: masks follow s(t) from `begin` to `end` (fractions of that stage's optimizer steps),
updated every `every` steps, and the rest of the stage recovers at the final sparsity. Soft masks
are recomputed on the same schedule and hardened at the last step. The pruner acts once: later
training stages see it finished (the masks it left are kept by the model itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from torchslim.config import SparsityConfig
from torchslim.errors import UserError
from torchslim.prune.importance import LossFn
from torchslim.prune.masks import harden, zero_all_pruned


def cubic_sparsity(progress: float, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta's s(t) at `progress` in [0, 1] (clipped)."""
    p = min(max(progress, 0.0), 1.0)
    return final + (initial - final) * (1.0 - p) ** 3


def iterative_targets(final: float, steps: int, initial: float = 0.0) -> list[float]:
    """Sparsity after each of `steps` prune+finetune rounds, ending exactly at `final`."""
    return [cubic_sparsity((k + 1) / steps, final, initial) for k in range(steps)]


@dataclass
class GradualPruner:
    """Training callback: sparsity rises along the cubic curve over the optimizer steps of one `fit`."""

    config: SparsityConfig
    """Final target (its `sparsity`, criterion, scope, include/exclude, soft)."""
    begin: float = 0.0
    end: float = 0.75
    every: int | None = None
    """Optimizer steps between mask updates (default: about 50 updates over the stage)."""
    data: Sequence[Any] | None = None
    loss: LossFn | None = None
    layer_sparsity: dict[str, float] | None = None
    """Final per-layer sparsity (from `allocation="auto"`), each scaled along the curve."""
    initial: float = 0.0
    seed: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)
    done: bool = False

    def __post_init__(self) -> None:
        if self.config.sparsity is None:
            if self.config.retain is None:
                raise UserError("a gradual schedule needs a sparsity or retain target, not a threshold")
            self.config = self.config.replace(sparsity=1.0 - self.config.retain, retain=None)

    def at(self, step: int, total: int) -> float:
        span = max((self.end - self.begin) * total, 1.0)
        return cubic_sparsity((step - self.begin * total) / span, self.config.sparsity or 0.0, self.initial)

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        if self.done:
            return
        last = step >= total_steps
        every = self.every or max(1, total_steps // 50)
        if step % every == 0 or last:
            target = self.at(step, total_steps)
            if self.config.soft or not self.history or target != self.history[-1][1]:
                self._prune(model, target)
                self.history.append((step, target))
        zero_all_pruned(model)  # a stale optimizer state must not leave values under hard masks
        if last:
            if self.config.soft:
                harden(model)
            self.done = True

    def _prune(self, model: nn.Module, target: float) -> None:
        from torchslim.prune.api import prune_unstructured

        final = self.config.sparsity or 0.0
        # one round per update: the schedule itself re-scores as sparsity rises
        config = self.config.replace(sparsity=target, allocation="uniform", rounds=1)
        per_layer = None
        if self.layer_sparsity is not None:
            per_layer = {n: s * target / final if final else 0.0 for n, s in self.layer_sparsity.items()}
        prune_unstructured(
            model, config, data=self.data, loss=self.loss, seed=self.seed, layer_sparsity=per_layer
        )
