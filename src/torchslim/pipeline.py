"""The engine behind `torchslim compress` and `ts.run_recipe`.

Every stage's model is saved (`OUT/stages/NN-name/`), loaded back and measured from what was
loaded, so each reported number belongs to an artifact that really round-trips. The run builds in a
temporary sibling of OUT and is renamed into place at the end: an interrupted run leaves no half report.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchslim import io, zoo
from torchslim.atomic import replace_dir, temp_dir_beside
from torchslim.errors import UserError
from torchslim.metrics import layer_table, measure
from torchslim.recipe import STAGES, Recipe, load_recipe, parse_recipe
from torchslim.report import build_report, write_report
from torchslim.zoo.base import Task

DEMO_RECIPE = Path(__file__).parent / "recipes" / "demo.yaml"


class Reporter:
    """What a run tells its user. The CLI supplies a rich one; the default is silent."""

    def stage(self, index: int, total: int, name: str) -> None: ...

    def measured(self, row: dict[str, Any]) -> None: ...

    def progress(self, description: str, total: int) -> Callable[[int], None]:
        return lambda n: None


@dataclass
class Context:
    """What a stage sees: the model to transform (replace `model` freely) and the run around it."""

    model: nn.Module
    task: Task
    teacher: nn.Module
    """The model as it was before the first stage (`teacher: baseline`)."""
    seed: int
    reporter: Reporter
    callbacks: list[Any] = field(default_factory=list)
    """Training callbacks that later training stages must honour (e.g. a pruning schedule)."""
    notes: dict[str, Any] = field(default_factory=dict)

    def note(self, **items: Any) -> None:
        """Attach details to the current stage's row in the report."""
        self.notes.update(items)

    def progress(self, description: str, total: int) -> Callable[[int], None]:
        return self.reporter.progress(description, total)


def resolve_model(spec: str) -> nn.Module:
    """`zoo:NAME`, a saved model directory, or `package.module:factory`."""
    if spec.startswith("zoo:"):
        return zoo.get(spec[4:]).model()
    path = Path(spec)
    if path.suffix == ".onnx":
        raise UserError(f"model {spec!r}: ONNX import is not supported yet")
    if path.is_dir():
        return io.load(path)
    if ":" in spec and "/" not in spec:
        return io.SOURCES.get("factory")(target=spec)
    raise UserError(f"model {spec!r}: not zoo:NAME, a saved model directory, or package.module:factory")


def resolve_task(recipe_task: str | None, model: nn.Module) -> Task:
    if recipe_task is not None:
        return zoo.get(recipe_task)
    source = io.record_of(model).source or {}
    if source.get("kind") == "zoo":
        return zoo.get(source["name"])
    raise UserError("recipe.task: required when the model does not come from the zoo")


def run_recipe(
    recipe: str | os.PathLike[str] | dict[str, Any] | Recipe,
    out: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Run every stage of `recipe` and write OUT/ (report.json, report.html, model/, stages/)."""
    recipe = _coerce(recipe)
    out = Path(out) if out is not None else Path("runs") / Path(recipe.source).stem
    if out.exists() and not overwrite:
        raise UserError(f"output directory {out} exists; choose another --out or pass --overwrite")
    reporter = reporter or Reporter()
    model = resolve_model(recipe.model)
    task = resolve_task(recipe.task, model)
    with temp_dir_beside(out) as work:
        report = _run(recipe, model, task, work, reporter)
        replace_dir(work, out)
    return report


def _run(recipe: Recipe, model: nn.Module, task: Task, work: Path, reporter: Reporter) -> dict[str, Any]:
    steps = [("baseline", None), *recipe.stages]
    rows: list[dict[str, Any]] = []
    ctx = Context(model, task, model, recipe.seed, reporter)
    for index, (name, spec) in enumerate(steps):
        reporter.stage(index, len(steps) - 1, name)
        torch.manual_seed(recipe.seed + index)
        ctx.notes = {}
        started = time.perf_counter()
        if spec is not None:
            STAGES.get(name).run(ctx, spec)
        seconds = time.perf_counter() - started
        ctx.model, row = _checkpoint(ctx.model, task, work / "stages" / f"{index:02d}-{name}")
        row = {"name": name, **row, "seconds": round(seconds, 2), **ctx.notes}
        rows.append(row)
        reporter.measured(row)
        if index == 0:
            ctx.teacher = copy.deepcopy(ctx.model)
    final_dir = work / "stages" / f"{len(steps) - 1:02d}-{steps[-1][0]}"
    shutil.copytree(final_dir, work / "model", copy_function=_link_or_copy)
    if "onnx" in recipe.output.formats:
        from torchslim.export import export_onnx

        export_onnx(ctx.model, task.example_inputs, work / "model.onnx")
    layers = layer_table(ctx.model, task.example_inputs)
    report = build_report(task.name, task.metric, rows, layers, recipe=recipe.to_dict())
    write_report(report, work)
    return report


def _checkpoint(model: nn.Module, task: Task, directory: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Save, load back, and measure the loaded model; the loaded one continues down the pipeline."""
    io.write(model, directory)
    loaded = io.load(directory)
    return loaded, measure(
        loaded, task.example_inputs, task=task, size_bytes=io.disk_size(directory)
    ).to_dict()


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _coerce(recipe: str | os.PathLike[str] | dict[str, Any] | Recipe) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return parse_recipe(recipe)
    return load_recipe(recipe)
