"""The public task interface: what a recipe, `ts.measure` and every stage need from data and a metric.

A task is a test split with a metric, training batches for fine-tuning and distillation, a few
calibration batches, and example inputs for tracing and timing. Subclass `ts.Task` and implement the
abstract members; everything else has a default. The zoo's tasks and the data-mapping tasks of
recipes (`task: {data: x.npz, metric: accuracy}`) are `Task`s too.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.errors import UserError


class Task(abc.ABC):
    """Data and a metric for compressing a model.

    Batches are `(inputs, target)`, where `inputs` is a tensor, a tuple of tensors (passed
    positionally) or a dict (passed as keywords). Required: `train_loader`, `test_loader`,
    `evaluate`, `example_inputs`. The rest has defaults that suit classification.
    """

    name: str = "task"
    """Shown in reports."""
    metric: str = "accuracy"
    """Name of what `evaluate` returns."""
    higher_is_better: bool = True
    """False for errors and losses (mse, mae, perplexity): validation keeps the lowest epoch."""
    outputs: str = "logits"
    """What the model outputs, which picks the distillation loss: `logits`, `embedding` or `regression`."""
    lr: float | None = None
    """Peak learning rate that `finetune` and `distill` use when the recipe gives none (None: 1e-3)."""

    def model(self) -> nn.Module:
        """The trained model this task comes with; tasks that only bring data have none."""
        raise UserError(f"task {self.name!r} brings no model of its own; name one in the recipe's `model:`")

    @abc.abstractmethod
    def train_loader(
        self, batch_size: int | None = None, seed: int = 0, *, augment: bool = True, holdout: float = 0.0
    ) -> Iterable[Any]:
        """Shuffled training batches in an order fixed by `seed`. `augment` applies train-time
        augmentation if any; `holdout` leaves out the fraction that `validate` measures on."""

    @abc.abstractmethod
    def test_loader(self, batch_size: int | None = None) -> Iterable[Any]:
        """The test split, in a fixed order."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module) -> float:
        """The task metric on the test split."""

    @property
    @abc.abstractmethod
    def example_inputs(self) -> Any:
        """A batch of inputs for tracing and timing."""

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        """The training loss of fine-tuning and the hard-label term of distillation."""
        return F.cross_entropy(output, target)

    def calibration_loader(self, batches: int = 8, batch_size: int | None = None) -> list[Any]:
        """A few training batches in a fixed order, for calibration and importance statistics."""
        out = []
        for i, batch in enumerate(self.train_loader(batch_size=batch_size, seed=1234, augment=False)):
            if i >= batches:
                break
            out.append(batch)
        return out

    def validate(self, model: nn.Module, holdout: float) -> float:
        """The task metric on the `holdout` fraction of the training data that `train_loader(...,
        holdout=holdout)` leaves out: to pick epochs without looking at the test split."""
        raise UserError(f"task {self.name!r} has no validation split; train without `validation`")

    def better(self, a: float, b: float) -> bool:
        """Whether metric value `a` is strictly better than `b`."""
        return a > b if self.higher_is_better else a < b


def check_task(task: Any, where: str) -> Task:
    """`task` if it is a `ts.Task`, else a UserError naming `where` it came from."""
    if not isinstance(task, Task):
        raise UserError(
            f"{where} returned {type(task).__name__}, not a torchslim.Task (subclass ts.Task and "
            "implement train_loader, test_loader, evaluate and example_inputs)"
        )
    return task
