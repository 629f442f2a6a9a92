"""The recipe stage `prune`: its `kind` picks a registered technique (`PRUNE_KINDS`); `unstructured` is here.

    - prune: {kind: unstructured, sparsity: 0.9, importance: taylor, scope: global}
    - prune: {kind: unstructured, sparsity: 0.9, schedule: {steps: 5}, finetune_epochs: 1}  # iterative
    - prune: {kind: unstructured, sparsity: 0.9, schedule: {kind: gradual}}   # driven by the next stage
    - finetune: {epochs: 3}

Data-driven criteria and `allocation: auto` use `task.calibration_loader(batches)` and `task.loss`.
Another kind (e.g. `channel`) plugs in with `@register_prune_kind("channel", ChannelSpec)`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from torchslim.config import SparsityConfig
from torchslim.data import forward
from torchslim.distill.trainer import finetune_defaults, fit
from torchslim.errors import UserError
from torchslim.prune.api import SENSITIVITY_METRIC, auto_layer_sparsity, prune_unstructured, target_sparsity
from torchslim.prune.importance import IMPORTANCE
from torchslim.prune.masks import harden
from torchslim.prune.schedule import GradualPruner, iterative_targets
from torchslim.prune.select import AUTO, NORMALIZERS
from torchslim.recipe import StageSpec, register_stage
from torchslim.registry import Registry


@dataclass(frozen=True)
class PruneKind:
    spec: type[StageSpec]
    run: Callable[..., None]


PRUNE_KINDS: Registry[PruneKind] = Registry("prune kind")


def register_prune_kind(
    name: str, spec: type[StageSpec]
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register `run(ctx, spec)` for `prune: {kind: name, ...}`; `spec` validates the whole block."""

    def add(run: Callable[..., None]) -> Callable[..., None]:
        PRUNE_KINDS.register(name, PruneKind(spec, run))
        return run

    return add


class PruneSpec(StageSpec):
    """Dispatches validation of the `prune:` block to the spec of its `kind` (default `unstructured`)."""

    kind: str = "unstructured"

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:
        body = obj if isinstance(obj, dict) else {}
        kind = body.get("kind", "unstructured")
        if not isinstance(kind, str) or kind not in PRUNE_KINDS:
            raise _invalid(cls, "kind", PRUNE_KINDS.unknown_message(kind), kind)
        spec = PRUNE_KINDS.get(kind).spec
        for key in body:
            if key not in spec.model_fields:
                close = difflib.get_close_matches(str(key), spec.model_fields, n=2)
                hint = f"; did you mean {' or '.join(close)}?" if close else ""
                raise _invalid(
                    cls, key, f"unknown key for kind {kind}{hint} (allowed: {', '.join(spec.model_fields)})"
                )
        return spec.model_validate(obj, **kwargs)


def _invalid(cls: type[BaseModel], key: Any, message: str, value: Any = None) -> ValidationError:
    error = PydanticCustomError("prune_spec", message.replace("{", "{{").replace("}", "}}"))
    details = InitErrorDetails(type=error, loc=(key,), input=value)
    return ValidationError.from_exception_data(cls.__name__, [details])


class ScheduleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["oneshot", "iterative", "gradual"] | None = None
    """oneshot; iterative (`steps` rounds of prune + `finetune_epochs`); gradual (cubic, during the next
    training stage). Default: iterative when steps > 1, else oneshot."""
    steps: int = Field(1, ge=1, le=100)
    """Rounds of an iterative schedule; sparsity follows the cubic curve at each round."""
    begin: float = Field(0.0, ge=0, lt=1)
    """Gradual: fraction of the training stage's steps when pruning starts."""
    end: float = Field(0.75, gt=0, le=1)
    """Gradual: fraction of the training stage's steps when the final sparsity is reached."""
    every: int | None = Field(None, ge=1)
    """Gradual: optimizer steps between mask updates (default: about 50 updates)."""

    @model_validator(mode="after")
    def _order(self) -> ScheduleSpec:
        if self.begin >= self.end:
            raise ValueError(f"begin ({self.begin}) must be before end ({self.end})")
        return self

    def resolved(self) -> str:
        return self.kind or ("iterative" if self.steps > 1 else "oneshot")


class UnstructuredSpec(StageSpec):
    """Unstructured pruning; fields mirror `ts.SparsityConfig`."""

    kind: Literal["unstructured"] = "unstructured"
    sparsity: float | None = Field(None, ge=0, lt=1)
    """Fraction of selected weights set to zero."""
    threshold: float | None = Field(None, ge=0)
    """Instead of sparsity: prune every weight whose importance is below this (|w| for magnitude)."""
    retain: float | None = Field(None, gt=0, le=1)
    """Instead of sparsity: the fraction of selected weights kept."""
    importance: str = "auto"
    """Criterion: auto (magnitude_bn where the model has BatchNorms, else magnitude), magnitude,
    magnitude_bn, taylor, entropy, random, wanda, sparsegpt or a registered one."""
    pattern: str | None = None
    """N:M semi-structured sparsity ("2:4", "4:8"): N kept in every M weights along a row; sparsity may
    then be omitted (it is 1 - N/M)."""
    scope: Literal["layer", "global"] = "global"
    """global (default): one ranking across layers; layer: every layer reaches the sparsity."""
    allocation: Literal["uniform", "auto"] = "uniform"
    """auto: per-layer sparsity from a sensitivity scan on calibration batches."""
    normalize: str = "auto"
    """How a global ranking compares layers: auto (lamp for scores >= 0), lamp, none (raw) or mean."""
    rounds: int | None = Field(None, ge=1, le=100)
    """Score-and-prune rounds without training between, re-scoring the remaining weights each round;
    null: the criterion's default (10 for taylor, 1 for magnitude)."""
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    soft: bool = False
    """Pruned weights may regrow during training; masks recomputed and hardened at the end."""
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    finetune_epochs: int = Field(1, ge=0, le=1000)
    """Iterative schedule: training epochs after each round."""
    lr: float | None = Field(None, gt=0, le=10)
    """Iterative schedule: learning rate of those fine-tunes; null: the finetune stage's default."""
    batches: int = Field(8, ge=1, le=1024)
    """Calibration batches for data-driven criteria and the sensitivity scan."""

    @field_validator("importance", "normalize")
    @classmethod
    def _registered(cls, value: str, info: ValidationInfo) -> str:
        registry = IMPORTANCE if info.field_name == "importance" else NORMALIZERS
        if value not in registry and not (info.field_name == "normalize" and value == AUTO):
            raise ValueError(registry.unknown_message(value))
        return value

    @model_validator(mode="after")
    def _consistent(self) -> UnstructuredSpec:
        try:
            config = self.config()
        except UserError as exc:
            raise ValueError(str(exc)) from None
        needs_target = self.schedule.resolved() != "oneshot" or self.soft
        if needs_target and target_sparsity(config) is None:
            raise ValueError("a schedule or soft masks need a sparsity or retain target, not a threshold")
        one_shot = config.pattern is not None or IMPORTANCE.get(config.importance).layerwise is not None
        if one_shot and needs_target:
            raise ValueError(f"importance {config.importance} / a pattern prunes one-shot with hard masks")
        return self

    def config(self) -> SparsityConfig:
        return self.config_of(SparsityConfig)


@register_stage("prune", PruneSpec)
def run_prune(ctx: Any, spec: Any) -> None:
    PRUNE_KINDS.get(spec.kind).run(ctx, spec)


SCHEDULES: Registry[Callable[[Any, UnstructuredSpec, SparsityConfig, Any], None]] = Registry("prune schedule")


@register_prune_kind("unstructured", UnstructuredSpec)
def run_unstructured(ctx: Any, spec: UnstructuredSpec) -> None:
    config = spec.config()
    criterion = IMPORTANCE.get(config.importance)
    uses_data = criterion.needs_data or criterion.wants_data or config.allocation == "auto"
    data = ctx.task.calibration_loader(batches=spec.batches) if uses_data else None
    SCHEDULES.get(spec.schedule.resolved())(ctx, spec, config, data)


@SCHEDULES.register("oneshot")
def _oneshot(ctx: Any, spec: UnstructuredSpec, config: SparsityConfig, data: Any) -> None:
    rep = prune_unstructured(ctx.model, config, data=data, loss=ctx.task.loss, seed=ctx.seed)
    if config.soft:  # keep recomputing at the same sparsity while the next stage trains, then harden
        s = target_sparsity(config)
        auto = rep.layer_sparsity if config.allocation == "auto" else None
        ctx.callbacks.append(_pruner(ctx, spec, config, data, initial=s, layer_sparsity=auto))
    ctx.note(**rep.notes(), schedule="oneshot")


@SCHEDULES.register("iterative")
def _iterative(ctx: Any, spec: UnstructuredSpec, config: SparsityConfig, data: Any) -> None:
    final = target_sparsity(config)
    assert final is not None
    rounds = []
    for k, s in enumerate(iterative_targets(final, spec.schedule.steps)):
        step = config.replace(sparsity=s, retain=None)
        rep = prune_unstructured(ctx.model, step, data=data, loss=ctx.task.loss, seed=ctx.seed + k)
        lr = spec.lr or finetune_defaults(ctx.task)[1]
        history = _finetune(ctx, spec.finetune_epochs, lr, seed=ctx.seed + 1000 * (k + 1))
        rounds.append({"sparsity": round(rep.sparsity, 6), "loss": history[-1]["loss"] if history else None})
    if config.soft:  # last recompute at the final sparsity, then the masks become hard
        rep = prune_unstructured(
            ctx.model,
            config.replace(sparsity=final, retain=None),
            data=data,
            loss=ctx.task.loss,
            seed=ctx.seed,
        )
        harden(ctx.model)
    ctx.note(**rep.notes(), schedule="iterative", rounds=rounds)


@SCHEDULES.register("gradual")
def _gradual(ctx: Any, spec: UnstructuredSpec, config: SparsityConfig, data: Any) -> None:
    final = target_sparsity(config)
    assert final is not None
    planned: dict[str, float] | None = None
    curves: dict[str, list[tuple[float, float]]] = {}
    if config.allocation == "auto":
        planned, curves = auto_layer_sparsity(ctx.model, config, data=data, loss=ctx.task.loss, seed=ctx.seed)
    start = config.replace(sparsity=0.0, retain=None, importance="magnitude", allocation="uniform")
    prune_unstructured(ctx.model, start, seed=ctx.seed)  # attach all-kept masks: the structure exists now
    ctx.callbacks.append(_pruner(ctx, spec, config, data, initial=0.0, layer_sparsity=planned))
    notes: dict[str, Any] = {"schedule": f"gradual to {final} during the next training stage"}
    if planned is not None:
        notes.update(
            layer_sparsity=planned,
            sensitivity={n: [list(p) for p in c] for n, c in curves.items()},
            sensitivity_metric=SENSITIVITY_METRIC,
        )
    ctx.note(**notes)


def _pruner(
    ctx: Any, spec: UnstructuredSpec, config: SparsityConfig, data: Any, **kwargs: Any
) -> GradualPruner:
    final = config.replace(sparsity=target_sparsity(config), retain=None, allocation="uniform")
    s = spec.schedule
    return GradualPruner(final, s.begin, s.end, s.every, data, ctx.task.loss, seed=ctx.seed, **kwargs)


def _finetune(ctx: Any, epochs: int, lr: float, seed: int) -> list[dict[str, float]]:
    task = ctx.task

    def loss_fn(model: Any, inputs: Any, target: Any) -> Any:
        return task.loss(forward(model, inputs), target)

    def batches(epoch: int) -> Any:
        return task.train_loader(seed=seed + epoch)

    return fit(
        ctx.model,
        batches,
        loss_fn,
        epochs=epochs,
        lr=lr,
        callbacks=ctx.callbacks,
        progress=ctx.progress,
        seed=seed,
    )
