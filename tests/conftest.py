"""Shared fixtures: a tiny real task (8x8 digits, an MLP that trains in a second) and small models."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from torchslim import zoo
from torchslim.metrics.accuracy import top1_accuracy
from torchslim.zoo.base import Task


class DigitsMLP(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def make_digits_mlp(hidden: int = 32) -> DigitsMLP:
    """A factory for `package.module:factory` sources (importable as `conftest:make_digits_mlp`)."""
    torch.manual_seed(0)
    return DigitsMLP(hidden)


class TinyDigits(Task):
    """The 8x8 digits with an MLP: real data, trains in about a second, for pipeline mechanics tests."""

    name = "tiny-digits"

    @functools.cached_property
    def _data(self) -> tuple[torch.Tensor, ...]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
        return x[:1400], y[:1400], x[1400:], y[1400:]

    def make(self, width: float = 1.0) -> nn.Module:
        return DigitsMLP(max(1, round(32 * width)))

    def train_baseline(self, model: nn.Module) -> None:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for epoch in range(8):
            for x, y in self.train_loader(seed=epoch):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()

    def evaluate(self, model: nn.Module) -> float:
        return top1_accuracy(model, self.test_loader())

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        return F.cross_entropy(output, target)

    @property
    def example_inputs(self) -> torch.Tensor:
        return self._data[2][:16]

    def train_loader(
        self, batch_size: int | None = None, seed: int = 0, *, augment: bool = True
    ) -> Iterable[Any]:
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(
            TensorDataset(*self._data[:2]), batch_size=batch_size or 128, shuffle=True, generator=gen
        )

    def test_loader(self, batch_size: int | None = None) -> Iterable[Any]:
        return DataLoader(TensorDataset(*self._data[2:]), batch_size=batch_size or 256)


if "tiny-digits" not in zoo.TASKS:
    zoo.TASKS.register("tiny-digits", TinyDigits)


@pytest.fixture(autouse=True, scope="session")
def _cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Baselines of the tiny task go to a throwaway cache; real zoo tasks keep the user cache."""
    zoo.get("tiny-digits").cache_dir = lambda: tmp_path_factory.mktemp("cache") / "tiny"  # type: ignore[method-assign]


@pytest.fixture
def tiny_task() -> Task:
    return zoo.get("tiny-digits")


class LeNet5(nn.Module):
    """The Caffe LeNet-5 (431,080 parameters), built here so metric tests need no zoo training."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(800, 500)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


@pytest.fixture
def lenet() -> LeNet5:
    torch.manual_seed(0)
    return LeNet5()
