"""Recipe stages that train: `finetune` (plain training on the task) and `distill` (from a teacher)."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from torchslim.config import DistillConfig
from torchslim.data import forward
from torchslim.distill.api import distill
from torchslim.distill.trainer import finetune_defaults, fit, lost_fraction
from torchslim.prune.regularize import Regularizer, RegularizeSpec
from torchslim.recipe import StageSpec, register_stage
from torchslim.tasks.protocol import Task


class ValidationSpec(BaseModel):
    """Validation each epoch on a held-out part of the training data (never the test split)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    holdout: float = Field(0.1, gt=0, lt=0.5)
    """Fraction of the training data left out of training and measured after every epoch."""
    keep_best: bool = True
    """Restore the weights of the best epoch at the end."""
    patience: int | None = Field(None, ge=1)
    """Stop after this many epochs without improvement (null: train every epoch)."""
    keep_start: bool = True
    """The weights before training compete for best (with `keep_best`): the stage never ends below
    where it started on the held-out part (a trained epoch that ties the start wins)."""


DEFAULT_VALIDATION = ValidationSpec()
"""What a `finetune` stage without a `validation` block uses, on tasks that have a validation split:
lenet5-digits' converged baseline through the default 3-epoch fine-tune lost 0.66 points (mean of 5
data orders) without it and none with it while the start won ties; now that a trained epoch wins a tie
(`trainer._Best`, which the 90% sparse model needs) it loses 0.5 there (BENCHMARKS.md, unstructured-first)."""


def _validation(task: Any, spec: Any) -> ValidationSpec | None:
    """`finetune`'s `validation`: null is the default block where the task has a validation split
    (a user's task without one trains as before), false turns it off."""
    if spec.validation is None:
        return DEFAULT_VALIDATION if type(task).validate is not Task.validate else None
    return spec.validation or None


def _training(ctx: Any, spec: Any, validation: ValidationSpec | None) -> dict[str, Any]:
    """The loader and validation arguments shared by the training stages (`validation` as resolved by
    the stage: None trains without one)."""
    task, holdout = ctx.task, validation.holdout if validation else 0.0
    if holdout and type(task).validate is Task.validate:
        task.validate(ctx.model, holdout)  # the task's own clear error, before any training
    split = {"holdout": holdout} if holdout else {}  # a user's task need not know the argument

    def loader(epoch: int) -> Any:
        return task.train_loader(batch_size=spec.batch_size, seed=ctx.seed + epoch, **split)

    if validation is None:
        return {"loader": loader}
    return {
        "loader": loader,
        "evaluate": lambda model: task.validate(model, holdout),
        "keep_best": validation.keep_best,
        "keep_start": validation.keep_start,
        "patience": validation.patience,
        "higher_is_better": getattr(task, "higher_is_better", True),
    }


def recovery_epochs(
    task: Any, model: nn.Module, reference: nn.Module, validation: ValidationSpec | None
) -> int:
    """`finetune`'s default epochs (`finetune_defaults`) for `model`: more the more of `reference`'s
    (the baseline's) held-out metric it lost. Without validation the damage is not measured and the
    default is that of an undamaged model."""
    if validation is None:
        return finetune_defaults(task)[0]
    start, whole = task.validate(model, validation.holdout), task.validate(reference, validation.holdout)
    return finetune_defaults(task, lost_fraction(start, whole, getattr(task, "higher_is_better", True)))[0]


class FinetuneSpec(StageSpec):
    epochs: int | None = Field(None, ge=0, le=10_000)
    """Passes over the task's training data; null: a quarter of the baseline's epochs, up to half of them
    the more of the baseline's held-out metric the model lost (`recovery_epochs`; 1 if unknown)."""
    lr: float | None = Field(None, gt=0, le=10)
    """Peak learning rate (AdamW, cosine decay to zero); null: the task's `lr`, else the
    baseline's peak lr, else 1e-3 (`torchslim.distill.trainer.finetune_defaults`)."""
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int | None = Field(None, ge=1)
    """Training batch size; the task's default when null."""
    regularize: RegularizeSpec = RegularizeSpec()
    """Sparsity-inducing penalties added to the loss."""
    validation: ValidationSpec | Literal[False] | None = None
    """Per-epoch validation on held-out training data, best epoch (or the start) kept, optional early
    stopping; null: `DEFAULT_VALIDATION` where the task has a validation split; false: none."""


@register_stage("finetune", FinetuneSpec)
def finetune(ctx: Any, spec: FinetuneSpec) -> None:
    """Train on the task's own loss. Masks and shapes are kept: they live in the model itself."""
    task = ctx.task

    def loss_fn(model: nn.Module, inputs: Any, target: Any) -> torch.Tensor:
        return task.loss(forward(model, inputs), target)

    callbacks = [
        *ctx.callbacks,
        *([Regularizer.from_spec(spec.regularize)] if spec.regularize.active() else []),
    ]
    validation = _validation(task, spec)
    training = _training(ctx, spec, validation)
    epochs = spec.epochs
    if epochs is None:
        epochs = recovery_epochs(task, ctx.model, ctx.teacher, validation)
    history = fit(
        ctx.model,
        training.pop("loader"),
        loss_fn,
        **training,
        epochs=epochs,
        lr=finetune_defaults(task)[1] if spec.lr is None else spec.lr,
        weight_decay=spec.weight_decay,
        callbacks=callbacks,
        checkpoint=ctx.train_checkpoint,
        progress=ctx.progress,
        seed=ctx.seed,
    )
    ctx.note(history=history)


class DistillSpec(StageSpec):
    teacher: str = "baseline"
    """`baseline` (the model before the first stage), `zoo:NAME`, a saved model directory or a factory."""
    temperature: float = Field(DistillConfig.temperature, gt=0)
    """Softmax temperature of the soft targets."""
    alpha: float = Field(DistillConfig.alpha, ge=0, le=1)
    """Weight of the distillation term; 1 - alpha weights the hard-label loss."""
    epochs: int = Field(1, ge=0, le=10_000)
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (the lr schedule ends there); null: `epochs` decide."""
    tokens: int | None = Field(None, ge=1)
    """Training-token budget (token ids per batch x steps), e.g. 5% of a language model's
    pretraining tokens; the smaller of this, `max_steps` and `epochs` wins."""
    lr: float | None = Field(None, gt=0, le=10)
    """Peak learning rate; null: the task's `lr`, else 1e-3."""
    warmup: float = Field(DistillConfig.warmup, ge=0, lt=1)
    """Fraction of the steps spent warming the lr up to its peak."""
    batch_size: int | None = Field(None, ge=1)
    features: list[str] = Field(default_factory=list)
    """`student_layer:teacher_layer` pairs whose activations are matched (FitNets)."""
    attention: list[str] = Field(default_factory=list)
    """`student_layer:teacher_layer` pairs of attention modules whose attention maps are matched (MiniLM)."""
    attention_weight: float = Field(1.0, ge=0)
    """Weight of the attention-map term (the mean KL over the `attention` pairs)."""
    regularize: RegularizeSpec = RegularizeSpec()
    validation: ValidationSpec | None = None
    """Per-epoch validation on held-out training data, best epoch kept, optional early stopping."""


@register_stage("distill", DistillSpec)
def distill_stage(ctx: Any, spec: DistillSpec) -> None:
    """Train the current model from the teacher's outputs on the task's training data."""
    teacher = ctx.teacher if spec.teacher == "baseline" else _resolve_teacher(spec.teacher)
    config = DistillConfig(
        temperature=spec.temperature,
        alpha=spec.alpha,
        epochs=spec.epochs,
        lr=_lr(ctx.task, spec.lr),
        warmup=spec.warmup,
        seed=ctx.seed,
        features=tuple(spec.features),
        attention=tuple(spec.attention),
        attention_weight=spec.attention_weight,
        max_steps=spec.max_steps,
        tokens=spec.tokens,
    )
    task = ctx.task
    regularizer = [Regularizer.from_spec(spec.regularize)] if spec.regularize.active() else []
    training = _training(ctx, spec, spec.validation)
    notes: dict[str, Any] = {}
    history = distill(
        ctx.model,
        teacher,
        training.pop("loader"),
        config,
        **training,
        outputs=task.outputs,
        hard_loss=task.loss,
        callbacks=[*ctx.callbacks, *regularizer],
        checkpoint=ctx.train_checkpoint,
        progress=ctx.progress,
        notes=notes,
    )
    ctx.note(**notes, history=history)


def _lr(task: Any, lr: float | None) -> float:
    """The stage's learning rate, else the task's suggestion, else 1e-3."""
    return lr if lr is not None else getattr(task, "lr", None) or 1e-3


def _resolve_teacher(spec: str) -> nn.Module:
    from torchslim.pipeline import resolve_model

    return resolve_model(spec)
