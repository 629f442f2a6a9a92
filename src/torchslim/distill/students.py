"""Students built from the teacher: a shallower copy that keeps a subset of its repeated blocks.

DistilBERT-style: a model made of a stack of identical blocks (a ModuleList, or a Sequential of
blocks of one type) keeps a subset of them, initialised from the teacher's own weights, which is a
far better start than random. Which subset matters: every other block is DistilBERT's choice, but a
sentence encoder read through mean pooling depends on its last blocks (all-MiniLM-L6-v2, 3 of 6
kept: blocks 0,2,4 start at cosine 0.38 to the teacher, 0,4,5 at 0.79). Given calibration data,
`shallow_student` picks the subset by measurement: blocks are dropped one at a time, each time the
one whose removal moves the outputs least. The change is recorded as the `keep_blocks` transform,
so `ts.load` rebuilds the shallow architecture from the teacher's source before the weights load.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from torchslim import safe
from torchslim.data import call, main_output, split
from torchslim.errors import UserError
from torchslim.io import TRANSFORMS, add_transform
from torchslim.manifest import TRANSFORM_PARAMS, ModulePath, Strict


def repeated_blocks(model: nn.Module) -> str:
    """Dotted path of the longest stack of same-type blocks (ModuleList or Sequential)."""
    best, length = "", 1
    for name, module in model.named_modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) > length:
            kinds = {type(child) for child in module}
            if len(kinds) == 1 and next(iter(module)).__class__ not in (nn.ReLU, nn.Identity):
                best, length = name, len(module)
    if not best:
        raise UserError("the model has no stack of repeated blocks to thin out; give the student explicitly")
    return best


def _stack(model: nn.Module, path: str) -> nn.ModuleList | nn.Sequential:
    stack = model.get_submodule(path)
    if not isinstance(stack, (nn.ModuleList, nn.Sequential)):
        raise UserError(f"keep_blocks: {path!r} is a {type(stack).__name__}, not a ModuleList or Sequential")
    return stack


def _keep(model: nn.Module, path: str, keep: list[int]) -> nn.Module:
    stack = _stack(model, path)
    if not keep or max(keep) >= len(stack) or min(keep) < 0 or len(set(keep)) != len(keep):
        raise UserError(f"keep_blocks: indices {keep} do not fit {path!r} of {len(stack)} blocks")
    kept = [stack[i] for i in keep]
    new = nn.ModuleList(kept) if isinstance(stack, nn.ModuleList) else nn.Sequential(*kept)
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)
    for module in model.modules():  # transformers models size loops and caches from their config
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "num_hidden_layers"):
            config.num_hidden_layers = len(keep)
    _renumber_layer_indices(new)
    return model


def _renumber_layer_indices(stack: nn.ModuleList | nn.Sequential) -> None:
    """transformers' attention modules remember their position (`layer_idx`) for caches."""
    for position, block in enumerate(stack):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                setattr(module, "layer_idx", position)  # noqa: B010  (typed as Tensor | Module)


@TRANSFORM_PARAMS.register("keep_blocks")
class KeepBlocksParams(Strict):
    path: ModulePath
    keep: Annotated[list[Annotated[int, Field(ge=0, le=1 << 16)]], Field(min_length=1, max_length=1 << 16)]


@TRANSFORMS.register("keep_blocks")
def _replay_keep_blocks(model: nn.Module, params: dict[str, Any]) -> nn.Module:
    safe.submodule(model, params["path"], "keep_blocks")
    return _keep(model, params["path"], list(params["keep"]))


def shallow_student(
    teacher: nn.Module,
    *,
    every: int = 2,
    count: int | None = None,
    path: str | None = None,
    blocks: Sequence[int] | None = None,
    data: Iterable[Any] | None = None,
) -> nn.Module:
    """A copy of `teacher` with `count` of its repeated blocks (default: as many as every `every`-th).

    Which ones: `blocks` (indices) if given; else, with `data` (calibration batches), the subset
    chosen by `select_blocks`; else blocks spread evenly from the first (0, every, 2*every, ...).
    """
    if every < 1:
        raise UserError(f"shallow_student: every must be >= 1, got {every}")
    student = copy.deepcopy(teacher)
    path = path or repeated_blocks(student)
    n = len(_stack(student, path))
    evenly = list(range(0, n, every)) if count is None else [i * n // count for i in range(count)]
    if not 1 <= len(evenly) <= n:
        raise UserError(f"shallow_student: cannot keep {count} of the {n} blocks of {path!r}")
    if blocks is not None:
        keep = sorted(blocks)
    elif data is not None:
        keep = select_blocks(student, path, len(evenly), data)
    else:
        keep = evenly
    _keep(student, path, keep)
    add_transform(student, "keep_blocks", {"path": path, "keep": keep})
    return student


@torch.no_grad()
def select_blocks(model: nn.Module, path: str, count: int, data: Iterable[Any]) -> list[int]:
    """Greedy backward elimination: drop, one at a time, the block whose removal changes the model's
    outputs least (mean cosine distance to the full model's, per example, on `data`), until `count`
    remain. Costs about n^2/2 forward passes over `data` for a stack of n blocks."""
    inputs = [split(batch)[0] for batch in data]
    if not inputs:
        raise UserError("shallow_student: data has no batches to choose blocks on")
    was_training = model.training
    model.eval()
    try:
        reference = [_flat(call(model, x)) for x in inputs]
        keep = list(range(len(_stack(model, path))))
        while len(keep) > count:
            trials = [[b for b in keep if b != drop] for drop in keep]
            keep = min(trials, key=lambda trial: _distance(model, path, trial, inputs, reference))
    finally:
        model.train(was_training)
    return keep


def _distance(
    model: nn.Module, path: str, keep: list[int], inputs: list[Any], reference: list[torch.Tensor]
) -> float:
    trial = _keep(copy.deepcopy(model), path, keep)
    gaps = [
        1 - F.cosine_similarity(_flat(call(trial, x)), ref, dim=1)
        for x, ref in zip(inputs, reference, strict=True)
    ]
    return float(torch.cat(gaps).mean())


def _flat(output: Any) -> torch.Tensor:
    """The main output tensor (a tensor, `.logits`, `.last_hidden_state` or the first item), per example."""
    output = main_output(output)
    if isinstance(output, (tuple, list)):
        output = output[0]
    return output.float().flatten(1)
