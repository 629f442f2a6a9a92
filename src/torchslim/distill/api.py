"""`ts.distill`: train a student on a teacher's softened outputs (optionally its features and attention)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.config import DistillConfig
from torchslim.data import call, forward, split
from torchslim.distill.attention import AttentionCapture, AttentionMap
from torchslim.distill.init import default_lr, init_from_teacher
from torchslim.distill.losses import SOFT_LOSSES, Projection, attention_kl, mixed_loss
from torchslim.distill.trainer import Progress, _no_progress, fit
from torchslim.errors import UserError

HardLoss = Callable[[Any, Any], torch.Tensor]
CONV_DIMS: dict[type[nn.Module], int] = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}


class _Capture:
    """Forward hooks that keep the latest output of named modules."""

    def __init__(self, model: nn.Module, names: Sequence[str], role: str) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [
            module.register_forward_hook(self._hook(name))
            for name, module in _layers(model, names, role, "features").items()
        ]

    def _hook(self, name: str) -> Callable[..., None]:
        def keep(module: nn.Module, args: Any, output: Any) -> None:
            self.outputs[name] = output[0] if isinstance(output, tuple) else output

        return keep

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _layers(model: nn.Module, names: Sequence[str], role: str, field: str) -> dict[str, nn.Module]:
    """The named modules; an unknown name is a UserError with the closest names."""
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise UserError(f"DistillConfig.{field}: the {role} has no layer {name!r}{hint}")
    return {name: modules[name] for name in names}


def _attention(model: nn.Module, names: Sequence[str], role: str) -> AttentionCapture:
    return AttentionCapture(_layers(model, names, role, "attention"))


class _Student(nn.Module):
    """The student plus the learned feature projections, so the optimizer (and DDP) trains both.

    `forward(inputs)` returns the student's output, its captured features (projected to the
    teacher's widths) and its attention maps, all computed inside the forward that DDP sees.
    """

    def __init__(self, student: nn.Module, capture: _Capture, attention: AttentionCapture) -> None:
        super().__init__()
        self.student = student
        self.projections = nn.ModuleDict()
        self._capture = capture
        self._attention = attention

    def forward(self, inputs: Any) -> tuple[Any, dict[str, torch.Tensor], dict[str, AttentionMap]]:
        out = forward(self.student, inputs)
        feats = {}
        for name, value in self._capture.outputs.items():
            key = _key(name)
            feats[name] = self.projections[key](value) if key in self.projections else value
        return out, feats, dict(self._attention.maps)


class _ForStudent:
    """Hands a training callback the student, not the wrapper that `fit` trains (names must match)."""

    def __init__(self, callback: Any, student: nn.Module) -> None:
        self.callback, self.student = callback, student
        for hook in ("extra_loss", "after_step", "after_epoch"):
            if not hasattr(callback, hook):
                setattr(self, hook, None)

    @property
    def done(self) -> bool:
        return bool(getattr(self.callback, "done", True))

    def extra_loss(self, model: nn.Module) -> torch.Tensor:
        return self.callback.extra_loss(self.student)

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        self.callback.after_step(self.student, step, total_steps)

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        self.callback.after_epoch(self.student, epoch)


def _pairs(items: Sequence[str], field: str = "features") -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        s, sep, t = item.partition(":")
        if not sep or not s or not t:
            raise UserError(f"DistillConfig.{field}: {item!r} must look like 'student_layer:teacher_layer'")
        pairs.append((s, t))
    return pairs


def _projection(
    student_out: torch.Tensor, teacher_out: torch.Tensor, student_layer: nn.Module
) -> nn.Module | None:
    """None when shapes agree; else a learned map along the one dimension where widths differ.

    The channel dimension is 1 for convolutions and for any module whose output has the teacher's
    layout but for dim 1 (a conv block, a BatchNorm); the last dimension otherwise (Linear, tokens)."""
    if student_out.shape == teacher_out.shape:
        return None
    differ = [d for d in range(student_out.dim()) if student_out.shape[d] != teacher_out.shape[d]]
    conv_dims = CONV_DIMS.get(type(student_layer), student_out.dim() - 2 if differ == [1] else 0)
    dim = 1 if conv_dims else student_out.dim() - 1
    if student_out.dim() != teacher_out.dim() or differ != [dim] or not 0 <= conv_dims <= 3:
        raise UserError(
            f"DistillConfig.features: student output {tuple(student_out.shape)} cannot be matched to "
            f"teacher output {tuple(teacher_out.shape)} by a channel projection"
        )
    return Projection(student_out.shape[dim], teacher_out.shape[dim], conv_dims)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    train_loader: Iterable[Any] | Callable[[int], Iterable[Any]],
    config: DistillConfig,
    *,
    outputs: str = "logits",
    hard_loss: HardLoss | None = F.cross_entropy,
    callbacks: Sequence[Any] = (),
    evaluate: Callable[[nn.Module], float] | None = None,
    keep_best: bool = False,
    patience: int | None = None,
    checkpoint: Path | None = None,
    progress: Progress = _no_progress,
    higher_is_better: bool = True,
    keep_start: bool = False,
    notes: dict[str, Any] | None = None,
) -> list[dict[str, float]]:
    """Train `student` in place from `teacher`; returns the per-epoch history.

    Where the student starts is `config.init` (`torchslim.distill.init`); `notes`, when given, gets
    `init`: what was done and why.

    `evaluate(student)` is recorded each epoch; with it, `keep_best` restores the best epoch's weights
    and `patience` stops after that many epochs without improvement (see `fit`; `higher_is_better`
    False keeps the lowest); `keep_start` lets the student's weights before training compete.

    `train_loader` yields `(inputs, target)` batches (or is `loader(epoch)`); `outputs` picks the
    soft loss (`logits` or `embedding`); `hard_loss(output, target)` is the label term weighted by
    `1 - alpha` (None: distillation only). Feature (`config.features`) and attention-map
    (`config.attention`) terms are added to it. Bad shapes and layer names fail before any training.
    """
    soft = SOFT_LOSSES.get(outputs)
    loader = train_loader if callable(train_loader) else (lambda epoch: train_loader)
    pairs, att_pairs = _pairs(config.features), _pairs(config.attention, "attention")
    teacher.eval()
    first = next(iter(loader(0)))
    with ExitStack() as hooks:
        s_cap = hooks.enter_context(closing(_Capture(student, [s for s, _ in pairs], "student")))
        t_cap = hooks.enter_context(closing(_Capture(teacher, [t for _, t in pairs], "teacher")))
        s_att = hooks.enter_context(closing(_attention(student, [s for s, _ in att_pairs], "student")))
        t_att = hooks.enter_context(closing(_attention(teacher, [t for _, t in att_pairs], "teacher")))
        hooks.callback(student.eval)
        wrapper = _Student(student, s_cap, s_att)
        _check_and_build(wrapper, teacher, first, pairs, s_cap, t_cap)
        _check_attention(att_pairs, s_att, t_att)
        mode = "student" if config.init == "auto" and config.alpha == 0 else config.init  # plain training
        start = init_from_teacher(student, teacher, split(first)[0], soft, config.temperature, mode)
        if notes is not None:
            notes["init"] = start
        max_steps = step_budget(config, first)

        def loss_fn(model: nn.Module, inputs: Any, target: Any) -> torch.Tensor:
            with torch.no_grad():
                t_out = forward(teacher, inputs)
            s_out, feats, maps = model(inputs)  # through DDP when distributed
            hard = hard_loss(s_out, target) if hard_loss is not None and target is not None else None
            loss = mixed_loss(soft(s_out, t_out, config.temperature), hard, config.alpha)
            for s, t in pairs:
                loss = loss + F.mse_loss(feats[s], t_cap.outputs[t])
            if att_pairs:
                loss = loss + config.attention_weight * _attention_loss(maps, t_att.maps, att_pairs)
            return loss

        return fit(
            wrapper,
            loader,
            loss_fn,
            epochs=config.epochs,
            lr=config.lr if config.lr is not None else default_lr(student),
            warmup=config.warmup,
            seed=config.seed,
            callbacks=[_ForStudent(cb, student) for cb in callbacks],
            evaluate=(lambda m: evaluate(student)) if evaluate else None,
            keep_best=keep_best,
            patience=patience,
            checkpoint=checkpoint,
            progress=progress,
            higher_is_better=higher_is_better,
            keep_start=keep_start,
            max_steps=max_steps,
        )


def batch_tokens(batch: Any) -> int:
    """Tokens in one training batch: the elements of its `input_ids` (padding included, as every
    position is trained on); UserError for a batch without token ids."""
    inputs, _ = split(batch)
    ids = inputs.get("input_ids") if isinstance(inputs, dict) else inputs
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point():
        raise UserError(
            "DistillConfig.tokens: the training batches carry no token ids (an integer tensor or "
            "an `input_ids` entry); bound the run with max_steps instead"
        )
    return int(ids.numel())


def step_budget(config: DistillConfig, first_batch: Any) -> int | None:
    """The optimizer steps `config.max_steps` and `config.tokens` allow (the smaller); None: no bound."""
    bounds = [config.max_steps] if config.max_steps is not None else []
    if config.tokens is not None:
        bounds.append(-(-config.tokens // batch_tokens(first_batch)))
    return min(bounds) if bounds else None


def attention_gap(student: nn.Module, teacher: nn.Module, inputs: Any, attention: Sequence[str]) -> float:
    """The attention term of `ts.distill` (mean KL over the `student_layer:teacher_layer` pairs) on
    one batch of `inputs`, without training: to measure how far the student's attention is from the
    teacher's. The models run in their current mode (use eval mode for a deterministic number)."""
    pairs = _pairs(attention, "attention")
    with ExitStack() as hooks:
        s_att = hooks.enter_context(closing(_attention(student, [s for s, _ in pairs], "student")))
        t_att = hooks.enter_context(closing(_attention(teacher, [t for _, t in pairs], "teacher")))
        with torch.no_grad():
            call(student, inputs)
            call(teacher, inputs)
            _check_attention(pairs, s_att, t_att)
            return float(_attention_loss(s_att.maps, t_att.maps, pairs))


def _attention_loss(
    student: dict[str, AttentionMap], teacher: dict[str, AttentionMap], pairs: list[tuple[str, str]]
) -> torch.Tensor:
    """Mean over pairs (so the weight does not grow with their number); padding from the teacher's mask."""
    terms = [
        attention_kl(student[s].probs, teacher[t].probs, _first(teacher[t].valid, student[s].valid))
        for s, t in pairs
    ]
    return torch.stack(terms).mean()


def _first(*masks: torch.Tensor | None) -> torch.Tensor | None:
    return next((m for m in masks if m is not None), None)


def _key(layer: str) -> str:
    return layer.replace(".", "__")


def _check_and_build(
    wrapper: _Student,
    teacher: nn.Module,
    batch: Any,
    pairs: list[tuple[str, str]],
    s_cap: _Capture,
    t_cap: _Capture,
) -> None:
    """One forward pass of both: output shapes must agree; feature projections are sized here."""
    inputs, _ = split(batch)
    with torch.no_grad():
        t_out, s_out = forward(teacher, inputs), forward(wrapper.student, inputs)
    if t_out.shape != s_out.shape:
        raise UserError(
            f"teacher output {tuple(t_out.shape)} does not match student output {tuple(s_out.shape)}"
        )
    modules = dict(wrapper.student.named_modules())
    for s, t in pairs:
        proj = _projection(s_cap.outputs[s], t_cap.outputs[t], modules[s])
        if proj is not None:
            wrapper.projections[_key(s)] = proj


def _check_attention(pairs: list[tuple[str, str]], s_att: AttentionCapture, t_att: AttentionCapture) -> None:
    """After a forward pass of both: every named layer ran, and each pair attends over the same lengths."""
    for role, capture, names in (
        ("student", s_att, [s for s, _ in pairs]),
        ("teacher", t_att, [t for _, t in pairs]),
    ):
        missing = [name for name in names if name not in capture.maps]
        if missing:
            raise UserError(
                f"DistillConfig.attention: the {role}'s layer(s) {missing} did not run in a forward pass"
            )
    for s, t in pairs:
        s_shape, t_shape = s_att.maps[s].probs.shape, t_att.maps[t].probs.shape
        if s_shape[0] != t_shape[0] or s_shape[2:] != t_shape[2:]:
            raise UserError(
                f"DistillConfig.attention: student layer {s!r} attends {s_shape[2]} queries over "
                f"{s_shape[3]} keys, teacher layer {t!r} {t_shape[2]} over {t_shape[3]}; "
                "sequence lengths must match"
            )
