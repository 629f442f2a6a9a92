"""The training loop shared by `finetune` and `distill`: AdamW, optional linear warm-up then cosine
decay, seeded data order.

Anything that must happen during training (a regularizer's loss term, a pruning schedule, re-applied
masks) plugs in as a `Callback`, so the loop itself stays the same for every technique.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn

from torchslim.data import split
from torchslim.distill.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from torchslim.distill.distributed import is_main, shard, wrap

LossFn = Callable[[nn.Module, Any, Any], torch.Tensor]
"""`loss_fn(model, inputs, target) -> scalar` for one batch."""


class Callback(Protocol):
    """Hooks into training; implement any subset (missing methods are skipped)."""

    def extra_loss(self, model: nn.Module) -> torch.Tensor: ...
    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None: ...
    def after_epoch(self, model: nn.Module, epoch: int) -> None: ...


class Progress(Protocol):
    def __call__(self, description: str, total: int) -> Callable[[int], None]:
        """Start a progress bar; returns `advance(n)`."""
        ...


def _no_progress(description: str, total: int) -> Callable[[int], None]:
    return lambda n: None


FINETUNE_LR_FRACTION = 1.0
"""Default fine-tune peak lr as a fraction of the baseline's own. Mean of 3 seeds, default epochs,
against half the baseline's lr: kws-digits channels to half the MACs 0.940 against 0.846, mnist1d-cnn
90% unstructured 0.957 against 0.950 and channels halved 0.965 against 0.963, lenet5-digits 90%
unstructured 0.989 against 0.988 and channels halved 0.985 against 0.989. Scaling it with the damage
(half the peak for a model that lost nothing, the full peak from a quarter lost) measured mixed on
lenet5-digits, mean of 5 data orders: 80% unstructured + 2 epochs 0.990 against 0.986, but 90% with
the default fine-tune 0.986 against 0.988 and the dense control 0.988 against 0.989; not adopted."""
FINETUNE_EPOCHS_FRACTION = 0.25
"""Default fine-tune epochs as a fraction of the baseline's own, for a model that lost nothing."""
DAMAGE_EPOCHS_FRACTION, MAX_EPOCHS_FRACTION = 0.5, 0.5
"""Baseline epochs added per unit of damage (`lost_fraction`), and the most a default fine-tune takes:
mnist1d-cnn 90% unstructured (15% held-out accuracy left) recovers to 0.954 in 5 epochs, 0.961 in 10
and 0.960 in 20 (mean of 3 data orders); lenet5-digits at 90% (98.6% left) needs no more than 3."""
FALLBACK_LR, FALLBACK_EPOCHS = 1e-3, 1
"""For a task that does not say how its baseline was trained."""


def finetune_defaults(task: Any, damage: float = 0.0) -> tuple[int, float]:
    """(epochs, peak lr) for recovering a compressed model of `task`, when the task says how it was
    trained (attributes `baseline_epochs` and `baseline_lr`, which the built-in zoo tasks carry and a
    user's task may define): the baseline's peak lr, and a quarter of its epochs plus half of them
    times `damage` (the fraction of the baseline's metric the model lost), at most half; a task's
    `lr` overrides the lr."""
    lr, epochs = getattr(task, "baseline_lr", None), getattr(task, "baseline_epochs", None)
    given = getattr(task, "lr", None)  # a task's own fine-tuning lr (`Task.lr`) comes first
    fraction = min(MAX_EPOCHS_FRACTION, FINETUNE_EPOCHS_FRACTION + DAMAGE_EPOCHS_FRACTION * damage)
    return (
        max(1, round(fraction * epochs)) if epochs else FALLBACK_EPOCHS,
        given or (FINETUNE_LR_FRACTION * lr if lr else FALLBACK_LR),
    )


def lost_fraction(start: float, reference: float, higher_is_better: bool = True) -> float:
    """The fraction of `reference`'s metric that `start` lost, in [0, 1]: 1 - start/reference, or
    1 - reference/start for a metric where lower is better (a perplexity); 0 where the ratio means
    nothing (a metric at or below zero)."""
    kept, whole = (start, reference) if higher_is_better else (reference, start)
    if whole <= 0 or kept < 0:
        return 0.0
    return min(1.0, max(0.0, 1.0 - kept / whole))


def fit(
    model: nn.Module,
    loader: Callable[[int], Iterable[Any]],
    loss_fn: LossFn,
    *,
    epochs: int,
    lr: float,
    weight_decay: float = 0.0,
    warmup: float = 0.0,
    callbacks: Sequence[Any] = (),
    evaluate: Callable[[nn.Module], float] | None = None,
    keep_best: bool = False,
    patience: int | None = None,
    checkpoint: Path | None = None,
    progress: Progress = _no_progress,
    seed: int = 0,
    higher_is_better: bool = True,
    keep_start: bool = False,
    max_steps: int | None = None,
) -> list[dict[str, float]]:
    """Train `model` in place. `loader(epoch)` returns that epoch's batches. Returns per-epoch history.

    The learning rate rises linearly over the first `warmup` fraction of the steps, then decays to
    zero on a cosine. With `evaluate`, the metric is recorded each epoch; `keep_best` restores the
    weights of the best epoch at the end (the lowest metric when not `higher_is_better`: an error or a
    perplexity), and `patience` stops after that many epochs without improvement; `keep_start` lets the
    weights before training compete too (epoch 0: a fine-tune can then never end below where it
    started; the start's metric is the history's first record's `start_metric`). With `checkpoint`,
    the state is saved there after every epoch and a run finding one resumes from it.
    Under torchrun the model trains data-parallel (see `torchslim.distill.distributed`).
    `max_steps` bounds the optimizer steps (a step or token budget): the schedule is fitted to it and
    training stops there, inside an epoch if need be (that epoch is recorded as the last).
    """
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = max(1, epochs * sum(1 for _ in shard(loader(0))))
    budget = None if max_steps is None else min(total, max_steps)
    total = budget or total
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, warmup))
    history: list[dict[str, float]] = []
    start, step = 0, 0
    if has_checkpoint(checkpoint):
        assert checkpoint is not None
        done = load_checkpoint(checkpoint, model, optimizer, scheduler)
        start, step, history = done["epoch"] + 1, done["step"], done["history"]
    best = _Best(higher_is_better)
    scored = [r for r in history if "metric" in r and r.get("competes", 1.0)]
    if history and "start_metric" in history[0]:  # the start competed as epoch 0
        scored.insert(0, {"epoch": 0.0, "metric": history[0]["start_metric"]})
    if scored:
        for record in scored:  # replayed in order, so ties and patience resume as they ran
            best.note(record["metric"], int(record["epoch"]) - 1)
        best.state = done["best"]
    start_metric = None
    if (
        keep_start
        and evaluate is not None
        and start == 0
        and all(getattr(cb, "done", True) for cb in callbacks)
    ):
        start_metric = evaluate(model)
        best.offer(model, start_metric, -1)
    trained = wrap(model)
    advance = progress("training", total)
    advance(step)
    for epoch in range(start, epochs):
        if budget is not None and step >= budget:  # spent (also when resuming a finished run)
            break
        trained.train()
        running, seen = 0.0, 0
        for batch in shard(loader(epoch)):
            if budget is not None and step >= budget:
                break
            loss = _step(trained, model, batch, loss_fn, optimizer, callbacks)
            scheduler.step()
            step += 1
            for cb in callbacks:
                if getattr(cb, "after_step", None) is not None:
                    cb.after_step(model, step, total)
            running += loss
            seen += 1
            advance(1)
        for cb in callbacks:
            if getattr(cb, "after_epoch", None) is not None:
                cb.after_epoch(model, epoch)
        record = {"epoch": float(epoch + 1), "loss": running / max(seen, 1)}
        if start_metric is not None and epoch == 0:
            record["start_metric"] = start_metric
        history.append(record)
        # an epoch competes for best only once schedules (gradual pruning) have finished: restoring
        # or stopping at an earlier one would undo their work
        settled = all(getattr(cb, "done", True) for cb in callbacks)
        if evaluate is not None:
            record["metric"] = evaluate(model)
            record["competes"] = float(settled)  # kept in the history, so a resumed run agrees
            if settled:
                best.offer(model, record["metric"], epoch)
        if checkpoint is not None and is_main():
            save_checkpoint(
                checkpoint,
                model,
                optimizer,
                scheduler,
                epoch=epoch,
                step=step,
                history=history,
                best=best.state,
            )
        if evaluate is not None and patience is not None and settled and epoch - best.improved >= patience:
            break
    if keep_best and best.state is not None:
        model.load_state_dict(best.state)
    model.eval()
    return history


def warmup_cosine(total: int, warmup: float) -> Callable[[int], float]:
    """The lr factor at each step: linear warm-up over `warmup * total` steps, then cosine to zero
    (with no warm-up, the same curve as `CosineAnnealingLR(T_max=total)`)."""
    ramp = int(warmup * total)

    def factor(step: int) -> float:
        if step < ramp:
            return (step + 1) / ramp
        return 0.5 * (1.0 + math.cos(math.pi * min(step - ramp, total - ramp) / max(1, total - ramp)))

    return factor


def _step(
    trained: nn.Module,
    model: nn.Module,
    batch: Any,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    callbacks: Sequence[Any],
) -> float:
    """One optimizer step; `trained` is `model` or its DDP wrapper (the forward must go through it)."""
    inputs, target = split(batch)
    loss = loss_fn(trained, inputs, target)
    for cb in callbacks:
        if getattr(cb, "extra_loss", None) is not None:
            loss = loss + cb.extra_loss(model)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


class _Best:
    """The best epoch so far and a copy of its weights. A later epoch that ties the best replaces it:
    the held-out rows of a zoo task were in the baseline's training data, so an untrained start often
    scores as high as every trained epoch there (lenet5-digits 90% sparse: 1.0 each; kept start 0.9861
    on the test split, the last epoch 0.9944). `improved` is the last strict improvement (patience)."""

    def __init__(self, higher_is_better: bool = True) -> None:
        self.higher = higher_is_better
        self.metric = float("-inf") if higher_is_better else float("inf")
        self.epoch = self.improved = -1
        self.state: dict[str, torch.Tensor] | None = None

    def note(self, metric: float, epoch: int) -> bool:
        """Record an epoch's metric; True when its weights become the best."""
        if metric > self.metric if self.higher else metric < self.metric:
            self.improved = epoch
        if not (metric >= self.metric if self.higher else metric <= self.metric):
            return False
        self.metric, self.epoch = metric, epoch
        return True

    def offer(self, model: nn.Module, metric: float, epoch: int) -> None:
        if self.note(metric, epoch):
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
