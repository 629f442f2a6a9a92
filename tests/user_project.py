"""A user's project in a directory: a model module, a task module and data files, as a new user writes them.

Nothing here is importable from the tests' path: the package `mypkg` lives only under the directory
that `write_project` fills, so a run finds it only through its working directory.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

MODELS = """
import torch
import torch.nn as nn


def mlp(features: int = 8, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, classes))


def regressor(features: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, 1))


def cnn(classes: int = 2) -> nn.Module:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, classes))
"""

TASKS = '''
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import torchslim as ts


class Blobs(ts.Task):
    """Three Gaussian blobs in 8 dimensions."""

    name = "blobs"

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        centers = torch.randn(3, 8, generator=gen) * 3
        y = torch.arange(300) % 3
        x = centers[y] + torch.randn(300, 8, generator=gen)
        self.x_train, self.y_train, self.x_test, self.y_test = x[:240], y[:240], x[240:], y[240:]

    def train_loader(self, batch_size=None, seed=0, *, augment=True, holdout=0.0):
        gen = torch.Generator().manual_seed(seed)
        ds = TensorDataset(self.x_train, self.y_train)
        return DataLoader(ds, batch_size=batch_size or 32, shuffle=True, generator=gen)

    def test_loader(self, batch_size=None):
        return DataLoader(TensorDataset(self.x_test, self.y_test), batch_size=batch_size or 100)

    def evaluate(self, model):
        model.eval()
        with torch.no_grad():
            return float((model(self.x_test).argmax(-1) == self.y_test).float().mean())

    @property
    def example_inputs(self):
        return self.x_test[:16]


def blobs() -> Blobs:
    return Blobs()
'''


def blobs(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The same blobs as the task module's, as numpy arrays (features float32, labels int64)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 8, generator=gen) * 3
    y = torch.arange(n) % 3
    x = centers[y] + torch.randn(n, 8, generator=gen)
    return x.numpy().astype(np.float32), y.numpy().astype(np.int64)


def write_project(root: Path) -> Path:
    """`root/mypkg/{models,tasks}.py`, `root/data.npz`, `root/{train,test}.csv` (classes), `root/reg.csv`
    (a regression target `y`, one file), `root/images/`."""
    (root / "mypkg").mkdir(parents=True)
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "models.py").write_text(textwrap.dedent(MODELS))
    (root / "mypkg" / "tasks.py").write_text(textwrap.dedent(TASKS))
    x, y = blobs()
    np.savez(root / "data.npz", x_train=x[:240], y_train=y[:240], x_test=x[240:], y_test=y[240:])
    names = np.array(["ant", "bee", "cat"])
    for split, rows in (("train", slice(0, 240)), ("test", slice(240, 300))):
        lines = [",".join([*(f"f{i}" for i in range(8)), "label"])]
        lines += [
            ",".join([*(f"{v:.5f}" for v in xs), str(names[c])])
            for xs, c in zip(x[rows], y[rows], strict=True)
        ]
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    lines = [",".join([*(f"f{i}" for i in range(8)), "y"])]
    lines += [",".join(f"{v:.5f}" for v in [*xs, xs[:4].sum() - xs[4:].sum()]) for xs in x]
    (root / "reg.csv").write_text("\n".join(lines) + "\n")
    write_images(root / "images")
    return root


def write_images(root: Path, per_class: int = 12, size: int = 10) -> None:
    """`root/{train,test}/{dark,light}/*.png`: noisy images, dark or light."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", per_class // 2)):
        for label, level in (("dark", 60), ("light", 190)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(level + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
