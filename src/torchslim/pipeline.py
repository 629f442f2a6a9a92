"""The engine behind `torchslim compress` and `ts.run_recipe`.

Every stage's model is saved (`OUT/stages/NN-name/`), loaded back and measured from what was
loaded, so each reported number belongs to an artifact that really round-trips. The run builds in a
temporary sibling of OUT and is renamed into place at the end: an interrupted run leaves no half report.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchslim import atomic, bounded, interop, io, runslot, trust
from torchslim.distill import distributed
from torchslim.errors import UserError
from torchslim.metrics import layer_table, measure, paired_latency
from torchslim.prune.masks import make_permanent
from torchslim.recipe import STAGES, Recipe, load_recipe, parse_recipe
from torchslim.report import build_report, write_report
from torchslim.resolve import check_fits, resolve_model, resolve_task
from torchslim.tasks.protocol import Task

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
    train_checkpoint: Path | None = None
    """Where a training stage keeps its per-epoch checkpoint, so `--resume` continues mid-stage."""
    runtime: str = "torch"
    """Where `_checkpoint` measures latency from now on (a stage may switch it, e.g. to onnxruntime)."""

    def note(self, **items: Any) -> None:
        """Attach details to the current stage's row in the report."""
        self.notes.update(items)

    def progress(self, description: str, total: int) -> Callable[[int], None]:
        return self.reporter.progress(description, total)


def _own_factories(model: nn.Module) -> list[str]:
    """The factory the run's model was built from (already trusted to get here): its stages reload it."""
    source = io.record_of(model).source or {}
    return [str(source["target"])] if source.get("kind") == "factory" else []


def run_recipe(
    recipe: str | os.PathLike[str] | dict[str, Any] | Recipe,
    out: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    reporter: Reporter | None = None,
    trust_code: io.Trust = False,
) -> dict[str, Any]:
    """Run every stage of `recipe` and write OUT/ (report.json, report.html, model/, stages/).

    The run holds a lock beside OUT (a second run on the same OUT fails at once), builds in its
    own `.OUT.partial-XXXXXXXX/` and renames it onto OUT when complete. With `resume`, the
    interrupted run that `.OUT.resume.json` names continues: finished stages are reloaded, and a
    training stage restarts from its last epoch checkpoint. Under torchrun only rank 0 writes OUT.
    Everything that can be checked (recipe, paths, model, task, one forward) is checked before
    anything is written.
    `trust_code` is passed to `ts.load` for a `model:` directory; the run reloads the stages it
    saves trusting the factory its model came from.
    """
    recipe = _coerce(recipe)
    out = bounded.check_path(out if out is not None else Path("runs") / Path(recipe.source).stem, "--out")
    _check_out(out, overwrite)
    distributed.init_from_env()
    rank = distributed.rank_and_size()[0]
    model = resolve_model(recipe.model, trust_code)  # bad input fails here, before anything is written
    task = resolve_task(recipe.task, model)
    check_fits(model, task, recipe.model)
    interop.check_formats(model, recipe.output.formats)
    with runslot.claim(out, rank) as slot:
        _check_out(out, overwrite)  # again under the lock: a run may have finished meanwhile
        work = slot.work_dir(recipe.to_dict(), resume)
        with io.trusting([*_own_factories(model), *trust.entries(trust_code)]):
            report = _run(recipe, model, task, work, reporter or Reporter())
        distributed.barrier()
        if rank == 0:
            slot.publish(work)
        else:
            slot.forget()
            shutil.rmtree(work, ignore_errors=True)
    return report


def _check_out(out: Path, overwrite: bool) -> None:
    if len(os.fsencode(out.name)) > bounded.MAX_NAME - 32:  # room for `.OUT.rankN.partial-XXXXXXXX`
        raise UserError(f"--out {bounded.short(str(out))}: the directory name is too long")
    if out.exists() and not overwrite:
        raise UserError(f"output directory {out} exists; choose another --out or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a directory; choose another --out")


def _run(recipe: Recipe, model: nn.Module, task: Task, work: Path, reporter: Reporter) -> dict[str, Any]:
    steps = [("baseline", None), *recipe.stages]
    rows: list[dict[str, Any]] = []
    ctx = Context(model, task, model, recipe.seed, reporter)
    for index, (name, spec) in enumerate(steps):
        reporter.stage(index, len(steps) - 1, name)
        stage_dir = work / "stages" / f"{index:02d}-{name}"
        row_file = stage_dir.with_suffix(".json")
        if _reusable(row_file, work, index, steps):  # finished before an interruption
            ctx.model, row = io.load(stage_dir), bounded.read_json(row_file, "stage record")
            ctx.runtime = row["runtime"]
        else:
            final = 0 < index == len(steps) - 1
            row = _run_stage(ctx, index, name, spec, stage_dir, work / "train" / stage_dir.name, final)
            atomic.write_text(row_file, json.dumps(row))
        rows.append(row)
        reporter.measured(row)
        if index == 0:
            ctx.teacher = copy.deepcopy(ctx.model)
    stage_dirs = [work / "stages" / f"{i:02d}-{name}" for i, (name, _) in enumerate(steps)]
    _paired_timing(rows, stage_dirs, task.example_inputs)
    final_dir = stage_dirs[-1]
    shutil.rmtree(work / "model", ignore_errors=True)
    shutil.copytree(final_dir, work / "model", copy_function=_link_or_copy)
    for fmt in recipe.output.formats:
        if fmt != "torchslim":
            interop.EXPORTERS.get(fmt)(ctx.model, task.example_inputs, work)
    layers = layer_table(ctx.model, task.example_inputs)
    report = build_report(
        task.name,
        task.metric,
        rows,
        layers,
        higher_is_better=getattr(task, "higher_is_better", True),
        recipe=recipe.to_dict(),
        **_charts(rows),
    )
    write_report(report, work)
    _remove_resume_state(work)
    return report


def _charts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Sensitivity curves a stage measured (with the name of what they measure) go to the report's chart."""
    for row in rows:
        if "sensitivity_metric" in row:
            return {"sensitivity": row["sensitivity"], "sensitivity_metric": row["sensitivity_metric"]}
    return {}


def _reusable(row_file: Path, work: Path, index: int, steps: list[tuple[str, Any]]) -> bool:
    """A finished stage is reloaded on resume, unless it left training callbacks (a gradual pruning
    schedule) that the next stage has not consumed yet: those live in memory, so the (seeded,
    deterministic) stage runs again to recreate them."""
    if not row_file.is_file():
        return False
    if not bounded.read_json(row_file, "stage record").get("registers_callbacks"):
        return True
    if index + 1 >= len(steps):
        return True
    return (work / "stages" / f"{index + 1:02d}-{steps[index + 1][0]}.json").is_file()


def _remove_resume_state(work: Path) -> None:
    """What only `--resume` needs does not belong in the published output."""
    shutil.rmtree(work / "train", ignore_errors=True)
    (work / "recipe.json").unlink(missing_ok=True)
    for row_file in (work / "stages").glob("*.json"):
        row_file.unlink()


def _run_stage(
    ctx: Context, index: int, name: str, spec: Any, stage_dir: Path, train_dir: Path, final: bool = False
) -> dict[str, Any]:
    """Run one stage, then save, reload and measure its model; returns the report row.

    The final model's pruning masks are folded into its weights: no later stage trains it, and a mask
    left as a parametrization would recompute `original * mask` in every forward of the deployed model.
    """
    torch.manual_seed(ctx.seed + index)
    ctx.notes = {}
    ctx.train_checkpoint = train_dir
    callbacks = len(ctx.callbacks)
    started = time.perf_counter()
    if spec is not None:
        STAGES.get(name).run(ctx, spec)
    seconds = time.perf_counter() - started
    if final and make_permanent(ctx.model):
        ctx.notes["masks_folded"] = True
    ctx.model, row = _checkpoint(ctx.model, ctx.task, stage_dir, ctx.runtime)
    if len(ctx.callbacks) > callbacks:
        ctx.notes["registers_callbacks"] = True
    return {"name": name, **row, "seconds": round(seconds, 2), **ctx.notes}


def _paired_timing(rows: list[dict[str, Any]], stage_dirs: list[Path], example_inputs: Any) -> None:
    """Re-time every stage's saved model round-robin in one pass, so latencies compare fairly.

    Timings taken minutes apart on a shared machine differ by more than many speedups; taken
    interleaved, a slow spell hits every model alike. A stage timed in another runtime than the
    baseline gets the baseline timed in that runtime too (`speedup_same_runtime`).
    """
    models = [io.load(d) for d in stage_dirs]
    other = sorted({r["runtime"] for r in rows} - {rows[0]["runtime"]})
    entries = [(m, r["runtime"]) for m, r in zip(models, rows, strict=True)] + [
        (models[0], rt) for rt in other
    ]
    times = paired_latency(entries, example_inputs)
    for row, ms in zip(rows, times, strict=False):
        row["latency_ms"] = round(ms, 4)
    baseline_in = dict(zip(other, times[len(rows) :], strict=True))
    for row in rows[1:]:
        if row["runtime"] in baseline_in:
            row["baseline_latency_ms_same_runtime"] = round(baseline_in[row["runtime"]], 4)
            row["speedup_same_runtime"] = round(baseline_in[row["runtime"]] / row["latency_ms"], 3)


def _checkpoint(
    model: nn.Module, task: Task, directory: Path, runtime: str = "torch"
) -> tuple[nn.Module, dict[str, Any]]:
    """Save, load back, and measure the loaded model; the loaded one continues down the pipeline."""
    io.write(model, directory)
    loaded = io.load(directory)
    return loaded, measure(
        loaded, task.example_inputs, task=task, size_bytes=io.disk_size(directory), runtime=runtime
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
