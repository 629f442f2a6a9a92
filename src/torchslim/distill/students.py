"""Students built from the teacher: a shallower copy that keeps every other repeated block.

DistilBERT-style: a model made of a stack of identical blocks (a ModuleList, or a Sequential of
blocks of one type) keeps a subset of them, initialised from the teacher's own weights, which is a
far better start than random. The change is recorded as the `keep_blocks` transform, so `ts.load`
rebuilds the shallow architecture from the teacher's source before the weights load.
"""

from __future__ import annotations

import copy
from typing import Any

import torch.nn as nn

from torchslim.errors import UserError
from torchslim.io import TRANSFORMS, add_transform


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
    if not keep or max(keep) >= len(stack) or min(keep) < 0:
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


@TRANSFORMS.register("keep_blocks")
def _replay_keep_blocks(model: nn.Module, params: dict[str, Any]) -> nn.Module:
    return _keep(model, params["path"], list(params["keep"]))


def shallow_student(teacher: nn.Module, *, every: int = 2, path: str | None = None) -> nn.Module:
    """A copy of `teacher` keeping blocks 0, every, 2*every, ... of its repeated stack."""
    if every < 1:
        raise UserError(f"shallow_student: every must be >= 1, got {every}")
    student = copy.deepcopy(teacher)
    path = path or repeated_blocks(student)
    keep = list(range(0, len(_stack(student, path)), every))
    _keep(student, path, keep)
    add_transform(student, "keep_blocks", {"path": path, "keep": keep})
    return student
