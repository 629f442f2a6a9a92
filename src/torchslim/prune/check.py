"""A model is never left broken by structural surgery.

The dependency graph sees what tracing shows; a forward that hard-codes a size (`x.view(b, 16, -1)`,
a constant in a custom module) can still break after channels are cut. `guard` keeps a deep copy of
the model, runs the surgery, then runs the example inputs through the result: when that forward
raises, or its outputs change shape, the model is put back exactly as it was (the same module
objects, with their old tensors, attributes and record) and the `UserError` names the first module
that failed and why. The copy doubles the model's memory for the duration of the cut.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch.utils._pytree import tree_leaves

from torchslim.data import call
from torchslim.errors import UserError


def output_shapes(model: nn.Module, inputs: Any) -> list[tuple[int, ...]]:
    """Shapes of every tensor the model returns (a transformers ModelOutput counts as its tuple)."""
    with torch.no_grad(), _eval(model):
        out = call(model, inputs)
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    return [tuple(t.shape) for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


class _eval:
    def __init__(self, model: nn.Module) -> None:
        self.model, self.training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        self.model.train(self.training)


def failing_module(model: nn.Module, inputs: Any) -> tuple[str, BaseException] | None:
    """(where, error) of the innermost module running when a forward on `inputs` raised, else None."""
    running: list[str] = []
    finished: list[str] = []
    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, name=name: running.append(name)))
        handles.append(module.register_forward_hook(lambda m, a, o: finished.append(running.pop())))
    try:
        with torch.no_grad(), _eval(model):
            call(model, inputs)
    except Exception as exc:  # any failure of the user's forward is what we report
        return _describe(model, running, finished), exc
    finally:
        for h in handles:
            h.remove()
    return None


def _describe(model: nn.Module, running: list[str], finished: list[str]) -> str:
    inner = running[-1] if running else ""
    if inner:
        return f"module {inner!r} ({type(model.get_submodule(inner)).__name__})"
    after = f" (after module {finished[-1]!r} ran)" if finished else ""
    return f"{type(model).__name__}.forward itself{after}"


def restore(originals: dict[str, nn.Module], backup: nn.Module) -> None:
    """Give every module object the model held before the surgery (`originals`, by name) the state of
    its copy in `backup`: attributes, tensors and record come back, and so do the objects themselves
    (a caller's reference to `model.conv2` is the model's conv2 again)."""
    copies = dict(backup.named_modules())
    by_copy = {id(copies[name]): module for name, module in originals.items()}
    for name, module in originals.items():
        state = dict(copies[name].__dict__)
        state["_modules"] = {k: None if c is None else by_copy[id(c)] for k, c in state["_modules"].items()}
        module.__dict__.clear()
        module.__dict__.update(state)


def guard(model: nn.Module, inputs: Any, surgery: Callable[[], None], what: str = "channel pruning") -> None:
    """Run `surgery` (changes `model` in place); restore `model` unchanged if it no longer runs `inputs`
    to outputs of the same shapes, and raise a UserError that says where and why."""
    try:
        reference = output_shapes(model, inputs)
    except Exception as exc:
        raise UserError(f"the model does not run on its example_inputs before {what}: {_line(exc)}") from None
    backup, originals = copy.deepcopy(model), dict(model.named_modules())
    try:
        surgery()
        failure = failing_module(model, inputs)
        shapes = output_shapes(model, inputs) if failure is None else reference
    except BaseException:
        restore(originals, backup)
        raise
    if failure is not None:
        restore(originals, backup)
        where, error = failure
        raise UserError(
            f"{what} broke the model's forward on example_inputs: {where} failed: {_line(error)}; the model "
            "is restored unchanged; exclude that module (or the layers that feed it) from pruning"
        )
    if shapes != reference:
        restore(originals, backup)
        raise UserError(
            f"{what} changed the model's output shapes on example_inputs from {reference} to {shapes} "
            "(a size hard-coded in the forward?); the model is restored unchanged; exclude the layers "
            "whose channels reach that output from pruning"
        )


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
