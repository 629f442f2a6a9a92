"""A task over in-memory tensors: what every data mapping of a recipe becomes once its files are read."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from torchslim.data import call, take
from torchslim.tasks.metrics import METRICS, display_name, logits_of
from torchslim.tasks.protocol import Task
from torchslim.zoo.base import holdout_split

Inputs = torch.Tensor | dict[str, torch.Tensor]


def rows(inputs: Inputs) -> int:
    return int(next(iter(inputs.values())).shape[0]) if isinstance(inputs, dict) else int(inputs.shape[0])


def select(inputs: Inputs, index: torch.Tensor | slice) -> Inputs:
    return {k: v[index] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[index]


@dataclass(frozen=True)
class Split:
    inputs: Inputs
    targets: torch.Tensor

    def __post_init__(self) -> None:
        if rows(self.inputs) != len(self.targets):
            raise ValueError(f"{rows(self.inputs)} input rows but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, index: torch.Tensor) -> Split:
        return Split(select(self.inputs, index), self.targets[index])


class Batches:
    """`(inputs, target)` batches of a split, shuffled in an order fixed by `seed` (None: in order)."""

    def __init__(self, split: Split, batch_size: int, seed: int | None = None) -> None:
        self.split, self.batch_size, self.seed = split, batch_size, seed

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Inputs, torch.Tensor]]:
        n = len(self.split)
        order = (
            torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
            if self.seed is not None
            else torch.arange(n)
        )
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            yield select(self.split.inputs, index), self.split.targets[index]


@dataclass
class Defaults:
    """Training defaults a data mapping may override."""

    batch_size: int = 64
    eval_batch_size: int = 256
    calibration_batch_size: int | None = None
    lr: float = 1e-3
    top_k: int = 5
    example_batch: int = 32


class TensorTask(Task):
    """Train, test and optional validation splits in memory, scored by a metric of `METRICS`."""

    def __init__(
        self,
        name: str,
        splits: dict[str, Split],
        metric: str = "accuracy",
        defaults: Defaults | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.name, self.splits = name, splits
        self.defaults = defaults or Defaults()
        self._metric = METRICS.get(metric)
        self._metric_name = metric
        self.metric = display_name(metric, self.defaults.top_k)
        self.higher_is_better = self._metric.higher_is_better
        self.outputs = self._metric.outputs
        self.lr = self.defaults.lr
        self.info = info or {}
        """What was read (files, shapes, classes): recorded for the user, never needed to run."""

    def train_loader(
        self, batch_size: int | None = None, seed: int = 0, *, augment: bool = True, holdout: float = 0.0
    ) -> Batches:
        """With a `val` split, `holdout` is ignored: validation measures on that split instead."""
        return Batches(self._train(holdout), batch_size or self.defaults.batch_size, seed)

    def _train(self, holdout: float) -> Split:
        train = self.splits["train"]
        if not holdout or "val" in self.splits:
            return train
        return train.subset(holdout_split(len(train), holdout)[0])

    def test_loader(self, batch_size: int | None = None) -> Batches:
        return Batches(self.splits["test"], batch_size or self.defaults.eval_batch_size)

    def calibration_loader(self, batches: int = 8, batch_size: int | None = None) -> list[Any]:
        return super().calibration_loader(batches, batch_size or self.defaults.calibration_batch_size)

    @property
    def example_inputs(self) -> Inputs:
        return take(self.splits["test"].inputs, self.defaults.example_batch)

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        return self._metric.loss(logits_of(output), target)

    def evaluate(self, model: nn.Module) -> float:
        return self.score(model, self.splits["test"])

    def validate(self, model: nn.Module, holdout: float) -> float:
        if "val" in self.splits:
            return self.score(model, self.splits["val"])
        train = self.splits["train"]
        return self.score(model, train.subset(holdout_split(len(train), holdout)[1]))

    def score(self, model: nn.Module, split: Split) -> float:
        """The metric of `model` on `split`, computed in eval mode over all of it at once."""
        was_training = model.training
        model.eval()
        outputs = []
        try:
            with torch.no_grad():
                for inputs, _ in Batches(split, self.defaults.eval_batch_size):
                    outputs.append(logits_of(call(model, inputs)).float())
        finally:
            model.train(was_training)
        options = {"top_k": self.defaults.top_k} if self._metric_name == "top_k_accuracy" else {}
        return self._metric.compute(torch.cat(outputs), split.targets, **options)
