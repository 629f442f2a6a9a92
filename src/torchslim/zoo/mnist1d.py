"""`mnist1d-cnn`: a small 1-D CNN on MNIST-1D, generated offline by the `mnist1d` package.

MNIST-1D is procedurally generated from fixed templates and a fixed seed, so no download is needed.
We call `make_dataset` directly (never `get_dataset`, which reads and writes pickles) and cache the
arrays as a plain `.npz`, because generation takes a few seconds.
"""

from __future__ import annotations

import functools
import os
import random
import tempfile
import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from torchslim.zoo.base import cache_root
from torchslim.zoo.classification import ClassificationTask

DATA_FILE = "mnist1d-data-v1.npz"
LENGTH = 40
EPOCHS = 20
LR = 1e-2
WEIGHT_DECAY = 1e-4


def generate(**overrides: Any) -> dict[str, np.ndarray]:
    """MNIST-1D with the package's default arguments (4000 train / 1000 test), as float32/int64 arrays.

    `make_dataset` reseeds Python's and NumPy's global generators; their states are restored after.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    for key, value in overrides.items():
        setattr(args, key, value)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {
        "x_train": data["x"].astype(np.float32),
        "y_train": data["y"].astype(np.int64),
        "x_test": data["x_test"].astype(np.float32),
        "y_test": data["y_test"].astype(np.int64),
    }


def load_arrays() -> dict[str, np.ndarray]:
    """The default data set, generated once and cached under the torchslim cache (written atomically)."""
    path = cache_root() / DATA_FILE
    if not path.exists():
        arrays: dict[str, Any] = dict(generate())
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".mnist1d-", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def _scaled(n: int, width: float) -> int:
    return max(1, round(n * width))


class ConvBlock(nn.Module):
    """Conv1d → BatchNorm1d → ReLU: the unit that channel pruning cuts (and `bn_scale` ranks)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm1d(cout)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class CNN1d(nn.Module):
    """Three conv blocks (32 → 64 → 128 channels, length 40 → 20 → 10), then one linear classifier."""

    def __init__(self, width: float = 1.0, num_classes: int = 10) -> None:
        super().__init__()
        c1, c2, c3 = _scaled(32, width), _scaled(64, width), _scaled(128, width)
        self.block1 = ConvBlock(1, c1, 5, stride=1)
        self.block2 = ConvBlock(c1, c2, 3, stride=2)
        self.block3 = ConvBlock(c2, c3, 3, stride=2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c3 * LENGTH // 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.block3(self.block2(self.block1(x)))))


class Mnist1dCNN(ClassificationTask):
    name = "mnist1d-cnn"
    metric = "accuracy"
    train_batch = 128
    test_batch = 500

    def make(self, width: float = 1.0, **kwargs: Any) -> nn.Module:
        return CNN1d(width=width, **kwargs)

    @functools.cached_property
    def data(self) -> dict[str, torch.Tensor]:
        """Tensors shaped [n, 1, 40] (inputs) and [n] (labels), loaded once per process."""
        arrays = load_arrays()
        out = {k: torch.from_numpy(v) for k, v in arrays.items()}
        out["x_train"] = out["x_train"].unsqueeze(1)
        out["x_test"] = out["x_test"].unsqueeze(1)
        return out

    def train_baseline(self, model: nn.Module) -> None:
        """AdamW with a one-cycle schedule; see `fit_classifier`."""
        self.fit_classifier(model, epochs=EPOCHS, lr=LR, weight_decay=WEIGHT_DECAY)


if __name__ == "__main__":  # quick measurement: python -m torchslim.zoo.mnist1d
    start = time.perf_counter()
    arrays = generate()
    print(f"generated in {time.perf_counter() - start:.1f}s", {k: v.shape for k, v in arrays.items()})
    task = Mnist1dCNN()
    torch.manual_seed(0)
    net = task.build()
    print("params", sum(p.numel() for p in net.parameters()))
    start = time.perf_counter()
    task.train_baseline(net)
    print(f"trained in {time.perf_counter() - start:.1f}s, accuracy {task.evaluate(net):.4f}")
