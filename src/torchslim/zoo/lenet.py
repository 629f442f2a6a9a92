"""`lenet5-digits`: the Caffe LeNet-5 of Deep Compression on scikit-learn's bundled digits.

The digits (1,797 8×8 images) ship inside scikit-learn, so the task needs no download; they are
upsampled to 28×28 so that the network keeps LeNet-5's original shapes (and its 431,080 parameters).
"""

from __future__ import annotations

import functools
import time
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.zoo.classification import ClassificationTask

EPOCHS = 12
LR = 2e-3
MAX_SHIFT = 2  # pixels of random translation in training (28×28 scale)


def _scaled(n: int, width: float) -> int:
    return max(1, round(n * width))


class LeNet5(nn.Module):
    """Caffe's LeNet: no ReLU after the convolutions, one after the first fully connected layer."""

    def __init__(self, width: float = 1.0, num_classes: int = 10) -> None:
        super().__init__()
        c1, c2, hidden = _scaled(20, width), _scaled(50, width), _scaled(500, width)
        self.conv1 = nn.Conv2d(1, c1, 5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c2 * 4 * 4, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


def _random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to MAX_SHIFT pixels (zero padding in normalised space is fine here)."""
    n = x.shape[0]
    padded = F.pad(x, (MAX_SHIFT,) * 4, value=float(x.min()))
    dy, dx = (torch.randint(0, 2 * MAX_SHIFT + 1, (2, n), generator=gen)).tolist()
    size = x.shape[-1]
    return torch.stack([padded[i, :, dy[i] : dy[i] + size, dx[i] : dx[i] + size] for i in range(n)])


class LeNetDigits(ClassificationTask):
    name = "lenet5-digits"
    metric = "accuracy"
    train_batch = 64
    test_batch = 256

    def make(self, width: float = 1.0, **kwargs: Any) -> nn.Module:
        return LeNet5(width=width, **kwargs)

    @functools.cached_property
    def data(self) -> dict[str, torch.Tensor]:
        """Fixed stratified split, upsampled to 28×28, normalised with the train split's mean and std."""
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.int64)
        idx_train, idx_test = train_test_split(
            range(len(labels)), test_size=0.2, stratify=digits.target, random_state=0
        )
        x = F.interpolate(images.unsqueeze(1), size=(28, 28), mode="bilinear", align_corners=False)
        x_train, x_test = x[idx_train], x[idx_test]
        mean, std = x_train.mean(), x_train.std()
        return {
            "x_train": (x_train - mean) / std,
            "y_train": labels[idx_train],
            "x_test": (x_test - mean) / std,
            "y_test": labels[idx_test],
        }

    def augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return _random_shift(x, gen)

    def train_baseline(self, model: nn.Module) -> None:
        """Adam (AdamW without decay), one-cycle schedule, small random shifts; see `fit_classifier`."""
        gen = torch.Generator().manual_seed(0)
        self.fit_classifier(model, epochs=EPOCHS, lr=LR, augment=lambda x: self.augment(x, gen))


if __name__ == "__main__":  # quick measurement: python -m torchslim.zoo.lenet
    task = LeNetDigits()
    torch.manual_seed(0)
    net = task.build()
    print("params", sum(p.numel() for p in net.parameters()))
    start = time.perf_counter()
    task.train_baseline(net)
    print(f"trained in {time.perf_counter() - start:.1f}s, accuracy {task.evaluate(net):.4f}")
