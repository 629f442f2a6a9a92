"""Classification tasks on in-memory tensors: loaders, loss, metric and baseline training in one place."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from torchslim.metrics.accuracy import top1_accuracy
from torchslim.metrics.latency import threads
from torchslim.zoo.base import Task, holdout_split


class _Augmented:
    """Batches of a loader with `augment(x, gen)` applied to the inputs, reproducibly per seed."""

    def __init__(
        self,
        loader: DataLoader[Any],
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
        seed: int,
    ) -> None:
        self.loader, self.augment, self.seed = loader, augment, seed

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed + 7919)  # a stream apart from the shuffle's
        for x, y in self.loader:
            yield self.augment(x, gen), y


class ClassificationTask(Task):
    """`data` holds `x_train`, `y_train`, `x_test`, `y_test`; the metric is top-1 accuracy."""

    train_batch: int = 64
    test_batch: int = 256

    @property
    @abc.abstractmethod
    def data(self) -> dict[str, torch.Tensor]: ...

    def augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Train-time augmentation of a batch of inputs: none unless a task defines it."""
        return x

    def train_loader(
        self, batch_size: int | None = None, seed: int = 0, *, augment: bool = True, holdout: float = 0.0
    ) -> Iterable[Any]:
        """Shuffled training batches, augmented as the baseline was trained: recovery after
        compression then learns from the distribution the baseline learned from."""
        ds = self._train_part(holdout, validation=False)
        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(ds, batch_size=batch_size or self.train_batch, shuffle=True, generator=gen)
        if not augment or type(self).augment is ClassificationTask.augment:
            return loader
        return _Augmented(loader, self.augment, seed)

    def _train_part(self, holdout: float, *, validation: bool) -> TensorDataset:
        x, y = self.data["x_train"], self.data["y_train"]
        if not holdout:
            return TensorDataset(x, y)
        rows = holdout_split(len(y), holdout)[1 if validation else 0]
        return TensorDataset(x[rows], y[rows])

    def validate(self, model: nn.Module, holdout: float) -> float:
        loader = DataLoader(self._train_part(holdout, validation=True), batch_size=self.test_batch)
        return top1_accuracy(model, loader)

    def test_loader(self, batch_size: int | None = None) -> DataLoader[Any]:
        ds = TensorDataset(self.data["x_test"], self.data["y_test"])
        return DataLoader(ds, batch_size=batch_size or self.test_batch, shuffle=False)

    @property
    def example_inputs(self) -> torch.Tensor:
        return self.data["x_test"][:32]

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        return F.cross_entropy(output, target)

    def evaluate(self, model: nn.Module) -> float:
        return top1_accuracy(model, self.test_loader())

    def fit_classifier(
        self,
        model: nn.Module,
        *,
        epochs: int,
        lr: float,
        weight_decay: float = 0.0,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """Baseline training for classifiers: AdamW with a one-cycle schedule, seeded, on one thread.

        One thread because CPU results depend on the thread count (reduction order): this keeps the
        baseline independent of the core count; models this small gain little from more threads and
        lose a lot when other processes load the cores.
        """
        with threads(1):
            torch.manual_seed(0)
            steps = epochs * len(list(self.train_loader(augment=False)))
            opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
            model.train()
            for epoch in range(epochs):
                for x, y in self.train_loader(seed=epoch, augment=False):
                    opt.zero_grad()
                    self.loss(model(augment(x) if augment else x), y).backward()
                    opt.step()
                    sched.step()
            model.eval()
