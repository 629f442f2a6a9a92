"""Soft filter pruning (He et al. 2018): zero the least important channels, keep training so they may
regrow, re-select after every epoch, and cut the final selection at the end.

`SoftChannelPruner` is a training callback (`extra_loss`, `after_step`, `after_epoch`) for
`torchslim.distill.trainer.fit`; `finalize(model)` removes the channels for good.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from torchslim.config import ChannelConfig
from torchslim.prune.graph import Graph
from torchslim.prune.group_importance import Context, group_scores, tensors_of

if TYPE_CHECKING:
    from torchslim.prune.channel import Plan


class SoftChannelPruner:
    def __init__(self, graph: Graph, config: ChannelConfig, ratio: float, ctx: Context) -> None:
        self.graph, self.config, self.ratio, self.ctx = graph, config, ratio, ctx
        self.plan: Plan = {}

    def select(self, model: nn.Module) -> Plan:
        from torchslim.prune.channel import plan_for

        self.ctx.model, self.ctx.grads, self.ctx.activations = model, {}, {}
        return plan_for(self.graph, group_scores(self.ctx, self.config.importance), self.ratio, self.config)

    def zero(self, model: nn.Module, plan: Plan) -> None:
        """Zero every tensor that produces a removed channel (filters, norm scales and shifts)."""
        self.plan = plan
        self.ctx.model = model
        with torch.no_grad():
            for gi, units in plan.items():
                for key, pos in self.graph.groups[gi].positions.items():
                    if key[1] == "in":
                        continue
                    idx = torch.from_numpy((pos[:, None] == units[None, :]).any(1).nonzero()[0])
                    for name, (t, dim) in tensors_of(self.ctx, key).items():
                        if not name.startswith("running"):
                            t.index_fill_(dim, idx, 0.0)

    # -- training callback --------------------------------------------------------------------------
    def extra_loss(self, model: nn.Module) -> torch.Tensor:
        return torch.zeros(())

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        pass

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        self.zero(model, self.select(model))

    def finalize(self, model: nn.Module) -> None:
        """Re-select on the trained weights and remove those channels (recorded for ts.save)."""
        from torchslim.prune.channel import finish

        finish(model, self.graph, self.select(model))

    def notes(self) -> dict[str, Any]:
        return {"soft_units_zeroed": sum(len(v) for v in self.plan.values())}
