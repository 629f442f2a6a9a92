"""Top-1 accuracy over a loader of `(inputs, labels)` batches."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

from torchslim.data import call, split


def top1_accuracy(model: nn.Module, loader: Iterable[Any]) -> float:
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        with torch.no_grad():
            for batch in loader:
                inputs, labels = split(batch)
                if labels is None:
                    raise ValueError("accuracy needs (inputs, labels) batches")
                pred = call(model, inputs).argmax(dim=-1)
                correct += int((pred == labels).sum())
                total += int(labels.numel())
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("accuracy: the loader yielded no examples")
    return correct / total
