"""Recipe stages that train: `finetune` (plain training on the task)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from pydantic import Field

from torchslim.data import call
from torchslim.distill.trainer import fit
from torchslim.prune.regularize import Regularizer, RegularizeSpec
from torchslim.recipe import StageSpec, register_stage


class FinetuneSpec(StageSpec):
    epochs: int = Field(1, ge=0, le=10_000)
    """Passes over the task's training data."""
    lr: float = Field(1e-3, gt=0, le=10)
    """Peak learning rate (AdamW, cosine decay to zero)."""
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int | None = Field(None, ge=1)
    """Training batch size; the task's default when null."""
    regularize: RegularizeSpec = RegularizeSpec()
    """Sparsity-inducing penalties added to the loss."""


@register_stage("finetune", FinetuneSpec)
def finetune(ctx: Any, spec: FinetuneSpec) -> None:
    """Train on the task's own loss. Masks and shapes are kept: they live in the model itself."""
    task = ctx.task

    def loss_fn(model: nn.Module, inputs: Any, target: Any) -> torch.Tensor:
        return task.loss(call(model, inputs), target)

    callbacks = [
        *ctx.callbacks,
        *([Regularizer.from_spec(spec.regularize)] if spec.regularize.active() else []),
    ]
    history = fit(
        ctx.model,
        lambda epoch: task.train_loader(batch_size=spec.batch_size, seed=ctx.seed + epoch),
        loss_fn,
        epochs=spec.epochs,
        lr=spec.lr,
        weight_decay=spec.weight_decay,
        callbacks=callbacks,
        progress=ctx.progress,
        seed=ctx.seed,
    )
    ctx.note(history=history)
