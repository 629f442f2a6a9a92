"""Wiring of channel pruning into `ts.prune_` (`PRUNERS["ChannelConfig"]`), the recipe stage
`prune: {kind: channel, ...}` (`PRUNE_KINDS["channel"]`) and `ts.load` (the `channel_prune` transform).

    - prune: {kind: channel, ratio: 0.5, importance: l2, round_to: 8, exclude: [fc]}
    - prune: {kind: channel, macs_target: 0.5, importance: taylor, batches: 8}
    - prune: {kind: channel, ratio: 0.5, soft: true, soft_epochs: 3}     # soft filter pruning
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from torchslim.config import ChannelConfig
from torchslim.data import call
from torchslim.distill.trainer import fit
from torchslim.errors import UserError
from torchslim.prune import transform as transform  # registers the `channel_prune` transform
from torchslim.prune.api import PRUNERS
from torchslim.prune.channel import prune_channels_
from torchslim.prune.group_importance import GROUP_CRITERIA
from torchslim.prune.stage import register_prune_kind
from torchslim.recipe import StageSpec

PRUNERS.register("ChannelConfig", prune_channels_)


class ChannelSpec(StageSpec):
    """Structural pruning; fields mirror `ts.ChannelConfig`."""

    kind: Literal["channel"] = "channel"
    ratio: float | None = Field(None, ge=0, lt=1)
    """Fraction of channels removed from each group (or overall with scope global)."""
    macs_target: float | None = Field(None, gt=0, le=1)
    """Instead of ratio: prune until MACs are at most this fraction of the dense model's."""
    latency_target: float | None = Field(None, gt=0, le=1)
    """Instead of ratio: prune until measured latency is at most this fraction of the dense model's."""
    importance: str = "l2"
    """Group criterion: l1, l2, magnitude, taylor, entropy, bn_scale, random or a registered one."""
    scope: Literal["layer", "global"] = "layer"
    round_to: int | None = Field(None, ge=1)
    """Remaining channel counts are multiples of this; null: 4 for convolutions of 32 channels or more
    (onnxruntime's blocked kernels), none elsewhere (see `ChannelConfig.round_to`)."""
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    """Modules whose output channels all stay; their inputs may still be cut (see exclude_mode)."""
    exclude_mode: Literal["outputs", "coupled"] = "outputs"
    """outputs: an excluded layer keeps its outputs only; coupled: also every channel of its inputs."""
    soft: bool = False
    """Soft filter pruning: zero, train `soft_epochs` with re-selection each epoch, then cut."""
    soft_epochs: int = Field(1, ge=0, le=1000)
    lr: float = Field(1e-3, gt=0, le=10)
    """Learning rate of the soft-pruning epochs."""
    batches: int = Field(8, ge=1, le=1024)
    """Calibration batches for data-driven criteria (taylor, entropy)."""

    @field_validator("importance")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in GROUP_CRITERIA:
            raise ValueError(GROUP_CRITERIA.unknown_message(value))
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ChannelSpec:
        try:
            self.config()
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return self

    def config(self) -> ChannelConfig:
        return self.config_of(ChannelConfig)


@register_prune_kind("channel", ChannelSpec)
def run_channel(ctx: Any, spec: ChannelSpec) -> None:
    config = spec.config()
    task = ctx.task
    data = (
        task.calibration_loader(batches=spec.batches) if config.importance in ("taylor", "entropy") else None
    )
    report = prune_channels_(ctx.model, config, task.example_inputs, data, loss=task.loss, seed=ctx.seed)
    if report.soft is not None:
        fit(
            ctx.model,
            lambda epoch: task.train_loader(seed=ctx.seed + epoch),
            lambda model, inputs, target: task.loss(call(model, inputs), target),
            epochs=spec.soft_epochs,
            lr=spec.lr,
            callbacks=[report.soft],
            progress=ctx.progress,
            seed=ctx.seed,
        )
        report.soft.finalize(ctx.model)
    ctx.note(**report.notes())


def register() -> None:
    """Importing this module registers everything; kept for callers that want an explicit call."""
