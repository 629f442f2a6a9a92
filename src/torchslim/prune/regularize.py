"""Sparsity-inducing penalties added to the training loss: L1, L2 and group lasso.

L1 drives individual weights to exactly zero-ish values (unstructured pruning then costs little);
group lasso (the L2 norm of each output channel, summed) drives whole channels to zero, which is
what structural pruning removes. Penalties are sums over the selected weights, scaled by their
coefficients, so a coefficient means the same for a big and a small model only per weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from torchslim.targeting import weighted_modules


class RegularizeSpec(BaseModel):
    """The `regularize:` block of `finetune` and `distill` stages."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    l1: float = Field(0.0, ge=0)
    """Coefficient of the sum of |w|."""
    l2: float = Field(0.0, ge=0)
    """Coefficient of the sum of w**2."""
    group_lasso: float = Field(0.0, ge=0)
    """Coefficient of the sum over output channels of ||w_channel||_2."""
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def active(self) -> bool:
        return self.l1 > 0 or self.l2 > 0 or self.group_lasso > 0


def group_norms(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each output channel (dim 0) of a Linear or Conv weight."""
    return weight.flatten(1).norm(dim=1)


@dataclass
class Regularizer:
    """A training `Callback` whose `extra_loss` is the configured penalty."""

    l1: float = 0.0
    l2: float = 0.0
    group_lasso: float = 0.0
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()

    @classmethod
    def from_spec(cls, spec: RegularizeSpec) -> Regularizer:
        return cls(spec.l1, spec.l2, spec.group_lasso, spec.include, spec.exclude)

    def extra_loss(self, model: nn.Module) -> torch.Tensor:
        total = torch.zeros(())
        for module in weighted_modules(model, self.include, self.exclude).values():
            w = cast(torch.Tensor, module.weight)  # the masked weight when a mask is attached
            if self.l1:
                total = total + self.l1 * w.abs().sum()
            if self.l2:
                total = total + self.l2 * w.pow(2).sum()
            if self.group_lasso:
                total = total + self.group_lasso * group_norms(w).sum()
        return total
