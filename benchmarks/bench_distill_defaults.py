"""Distillation's first recipe: `ts.DistillConfig(epochs=15)` with every other field at its default, on
the mnist1d-cnn half-width student (0.33x the teacher's parameters), against the same student trained
from scratch with the same budget and recipe (epochs, data order, lr, warm-up and cosine decay).
Both are measured again with random shifts of the signals, applied to the inputs that the student and
the teacher both see, to show what limits distillation here: the teacher itself."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

import torchslim as ts
from benchmarks.harness import Table, benchmark
from torchslim.distill.trainer import fit
from torchslim.metrics.latency import threads
from torchslim.metrics.size import param_count
from torchslim.zoo.base import Task

WIDTH = 0.5
EPOCHS = 15
MAX_SHIFT = 3
"""Samples of circular shift each way; a label-preserving change of an MNIST-1D signal."""


def _shifted(batches: Iterable[Any], seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed + 99)
    for x, y in batches:
        shifts = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (x.shape[0],), generator=gen).tolist()
        yield torch.stack([torch.roll(x[i], s, -1) for i, s in enumerate(shifts)]), y


def _loader(task: Task, seed: int, shift: bool) -> Callable[[int], Iterable[Any]]:
    def batches(epoch: int) -> Iterable[Any]:
        plain = task.train_loader(seed=seed * 1000 + epoch)
        return list(_shifted(plain, seed * 1000 + epoch)) if shift else plain

    return batches


def _runs(task: Task, teacher: torch.nn.Module, seeds: list[int], shift: bool) -> dict[str, list[float]]:
    defaults = ts.DistillConfig()
    runs: dict[str, list[float]] = {"from scratch": [], "distilled, defaults": []}
    for seed in seeds:
        torch.manual_seed(seed)
        scratch, student = task.build(width=WIDTH), task.build(width=WIDTH)
        student.load_state_dict(scratch.state_dict())
        loader = _loader(task, seed, shift)
        with threads(1):
            fit(
                scratch,
                loader,
                lambda m, x, y: task.loss(m(x), y),
                epochs=EPOCHS,
                lr=defaults.lr,
                warmup=defaults.warmup,
                seed=seed,
            )
            config = ts.DistillConfig(epochs=EPOCHS, seed=seed)  # every other field at its default
            ts.distill(student, teacher, loader, config, hard_loss=task.loss)
        runs["from scratch"].append(task.evaluate(scratch))
        runs["distilled, defaults"].append(task.evaluate(student))
    return runs


@benchmark("distill-defaults")
def run(quick: bool) -> Table:
    table = Table("Distillation: the first recipe", ["model", "setting", "params", "metric", "detail"])
    task = ts.zoo.get("mnist1d-cnn")
    teacher = task.model()
    t_params, s_params = param_count(teacher), param_count(task.build(width=WIDTH))
    table.rows.append(["mnist1d-cnn teacher", "trained baseline", t_params, task.evaluate(teacher), "-"])
    seeds = [0] if quick else [0, 1, 2]
    d = ts.DistillConfig()
    recipe = f"T={d.temperature:g}, alpha={d.alpha:g}, lr={d.lr:g}, warm-up {d.warmup:g}, cosine"
    for shift in (False, True):
        runs = _runs(task, teacher, seeds, shift)
        data = f"random shifts <= {MAX_SHIFT}" if shift else "task's training data"
        for name, values in runs.items():
            table.rows.append(
                [
                    f"student w={WIDTH} {name}",
                    f"{EPOCHS} epochs, {data}, mean of {len(seeds)}",
                    s_params,
                    statistics.mean(values),
                    ", ".join(f"{v:.3f}" for v in values),
                ]
            )
        gain = statistics.mean(runs["distilled, defaults"]) - statistics.mean(runs["from scratch"])
        verdict = "met" if gain >= 0.01 else "MISSED"
        table.notes.append(
            f"{data}: `DistillConfig(epochs={EPOCHS})` ({recipe}) {gain * 100:+.2f} points over the same "
            f"student from scratch with the same lr schedule and data (target >= +1): {verdict}"
        )
    table.notes.append(
        f"student has {s_params / t_params:.2f}x the teacher's params; the teacher was trained without "
        "shifts, so with them the student from scratch can pass the teacher it would distill from"
    )
    return table
