"""The embedded tasks' baselines: metric, size, MACs, latency, first-run (training) and cached load time."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

import torchslim as ts
from benchmarks.harness import Table, benchmark
from torchslim.data import batch_size

T = TypeVar("T")

TASKS = ("lenet5-digits", "mnist1d-cnn", "minilm")
TARGETS = {"lenet5-digits": 0.97, "mnist1d-cnn": 0.92, "minilm": 0.9999}


@contextmanager
def _fresh_cache() -> Iterator[None]:
    before = os.environ.get("XDG_CACHE_HOME")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = tmp
        try:
            yield
        finally:
            if before is None:
                del os.environ["XDG_CACHE_HOME"]
            else:
                os.environ["XDG_CACHE_HOME"] = before


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


@benchmark("baselines")
def run(quick: bool) -> Table:
    table = Table(
        "Embedded task baselines",
        [
            "task",
            "metric",
            "value",
            "params",
            "MACs/example",
            "saved size",
            "latency ms (batch)",
            "first run s",
            "cached load s",
        ],
    )
    for name in TASKS:
        with _fresh_cache():  # data generation + training from scratch, as on a first run
            _, first = _timed(type(ts.zoo.get(name))().model)
        task = ts.zoo.get(name)
        task.model()
        model, cached = _timed(task.model)
        x = task.example_inputs
        m = ts.measure(model, x, task=task, repeats=5 if quick else 30)
        batch = batch_size(x)
        table.rows.append(
            [
                name,
                task.metric,
                m.accuracy,
                m.params,
                m.macs,
                m.size_bytes,
                f"{m.latency_ms:.3f} ({batch})",
                round(first, 1),
                round(cached, 2),
            ]
        )
        status = "met" if (m.accuracy or 0) >= TARGETS[name] else "MISSED"
        table.notes.append(f"{name}: {task.metric} {m.accuracy:.4f} vs target >= {TARGETS[name]}: {status}")
    table.notes.append(f"latency: median over repeats, one thread ({torch.__version__})")
    return table
