"""Latency: median wall time of a forward pass on one thread, after warm-up.

One thread because this machine is shared and small: multi-threaded timings mostly measure the
neighbours. Medians over repeats resist outliers; compare ratios measured in the same process.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

from torchslim.data import call


@contextmanager
def threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_fn(fn: Callable[[], Any], *, warmup: int = 3, repeats: int = 20, min_seconds: float = 0.2) -> float:
    """Median milliseconds of `fn()`: at least `repeats` runs and at least `min_seconds` of timing."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < repeats or (
        time.perf_counter() - start < min_seconds and len(samples) < 10 * repeats
    ):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(samples)


def measure_latency(model: nn.Module, example_inputs: Any, *, warmup: int = 3, repeats: int = 20) -> float:
    """Median ms of `model(example_inputs)` (the whole batch given), eval mode, no grad, one thread."""
    was_training = model.training
    model.eval()
    try:
        with threads(1), torch.inference_mode():
            return time_fn(lambda: call(model, example_inputs), warmup=warmup, repeats=repeats)
    finally:
        model.train(was_training)
