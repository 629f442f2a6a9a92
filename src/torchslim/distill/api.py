"""`ts.distill`: train a student on a teacher's softened outputs (and, optionally, its features)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.config import DistillConfig
from torchslim.data import call, split
from torchslim.distill.losses import SOFT_LOSSES, Projection, mixed_loss
from torchslim.distill.trainer import Progress, _no_progress, fit
from torchslim.errors import UserError

HardLoss = Callable[[Any, Any], torch.Tensor]
CONV_DIMS: dict[type[nn.Module], int] = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}


class _Capture:
    """Forward hooks that keep the latest output of named modules."""

    def __init__(self, model: nn.Module, names: Sequence[str], role: str) -> None:
        modules = dict(model.named_modules())
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = []
        for name in names:
            if name not in modules:
                close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
                hint = f"; close matches: {', '.join(close)}" if close else ""
                raise UserError(f"DistillConfig.features: the {role} has no layer {name!r}{hint}")
            self.handles.append(modules[name].register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Callable[..., None]:
        def keep(module: nn.Module, args: Any, output: Any) -> None:
            self.outputs[name] = output[0] if isinstance(output, tuple) else output

        return keep

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


class _Student(nn.Module):
    """The student plus the learned feature projections, so the optimizer (and DDP) trains both.

    `forward(inputs)` returns the student's output and its captured features, projected to the
    teacher's widths.
    """

    def __init__(self, student: nn.Module, capture: _Capture) -> None:
        super().__init__()
        self.student = student
        self.projections = nn.ModuleDict()
        self._capture = capture

    def forward(self, inputs: Any) -> tuple[Any, dict[str, torch.Tensor]]:
        out = call(self.student, inputs)
        feats = {}
        for name, value in self._capture.outputs.items():
            key = _key(name)
            feats[name] = self.projections[key](value) if key in self.projections else value
        return out, feats


class _ForStudent:
    """Hands a training callback the student, not the wrapper that `fit` trains (names must match)."""

    def __init__(self, callback: Any, student: nn.Module) -> None:
        self.callback, self.student = callback, student
        for hook in ("extra_loss", "after_step", "after_epoch"):
            if not hasattr(callback, hook):
                setattr(self, hook, None)

    def extra_loss(self, model: nn.Module) -> torch.Tensor:
        return self.callback.extra_loss(self.student)

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        self.callback.after_step(self.student, step, total_steps)

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        self.callback.after_epoch(self.student, epoch)


def _pairs(features: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in features:
        s, sep, t = item.partition(":")
        if not sep or not s or not t:
            raise UserError(f"DistillConfig.features: {item!r} must look like 'student_layer:teacher_layer'")
        pairs.append((s, t))
    return pairs


def _projection(
    student_out: torch.Tensor, teacher_out: torch.Tensor, student_layer: nn.Module
) -> nn.Module | None:
    conv_dims = CONV_DIMS.get(type(student_layer), 0)
    dim = 1 if conv_dims else -1
    s_width, t_width = student_out.shape[dim], teacher_out.shape[dim]
    if student_out.shape == teacher_out.shape:
        return None
    if student_out.dim() != teacher_out.dim() or s_width == t_width:
        raise UserError(
            f"DistillConfig.features: student output {tuple(student_out.shape)} cannot be matched to "
            f"teacher output {tuple(teacher_out.shape)} by a channel projection"
        )
    return Projection(s_width, t_width, conv_dims)


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
    checkpoint: Path | None = None,
    progress: Progress = _no_progress,
) -> list[dict[str, float]]:
    """Train `student` in place from `teacher`; returns the per-epoch history.

    `train_loader` yields `(inputs, target)` batches (or is `loader(epoch)`); `outputs` picks the
    soft loss (`logits` or `embedding`); `hard_loss(output, target)` is the label term weighted by
    `1 - alpha` (None: distillation only). Bad shapes and layer names fail before any training.
    """
    soft = SOFT_LOSSES.get(outputs)
    loader = train_loader if callable(train_loader) else (lambda epoch: train_loader)
    pairs = _pairs(config.features)
    s_cap = _Capture(student, [s for s, _ in pairs], "student")
    t_cap = _Capture(teacher, [t for _, t in pairs], "teacher")
    wrapper = _Student(student, s_cap)
    teacher.eval()
    try:
        _check_and_build(wrapper, teacher, next(iter(loader(0))), pairs, s_cap, t_cap)

        def loss_fn(model: nn.Module, inputs: Any, target: Any) -> torch.Tensor:
            with torch.no_grad():
                t_out = call(teacher, inputs)
            s_out, feats = model(inputs)  # through DDP when distributed
            hard = hard_loss(s_out, target) if hard_loss is not None and target is not None else None
            loss = mixed_loss(soft(s_out, t_out, config.temperature), hard, config.alpha)
            for s, t in pairs:
                loss = loss + F.mse_loss(feats[s], t_cap.outputs[t])
            return loss

        return fit(
            wrapper,
            loader,
            loss_fn,
            epochs=config.epochs,
            lr=config.lr,
            seed=config.seed,
            callbacks=[_ForStudent(cb, student) for cb in callbacks],
            evaluate=(lambda m: evaluate(student)) if evaluate else None,
            checkpoint=checkpoint,
            progress=progress,
        )
    finally:
        s_cap.close()
        t_cap.close()
        student.eval()


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
        t_out, s_out = call(teacher, inputs), call(wrapper.student, inputs)
    if t_out.shape != s_out.shape:
        raise UserError(
            f"teacher output {tuple(t_out.shape)} does not match student output {tuple(s_out.shape)}"
        )
    modules = dict(wrapper.student.named_modules())
    for s, t in pairs:
        proj = _projection(s_cap.outputs[s], t_cap.outputs[t], modules[s])
        if proj is not None:
            wrapper.projections[_key(s)] = proj
