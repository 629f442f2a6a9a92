"""What a recipe's `model:` and `task:` name, turned into a module and a task, checked to fit.

A recipe is the user's own instruction, like a script they run: a `package.module:factory` it
names is imported and called (that is its meaning). It is called with no arguments, so a callable
that needs some (`os:system`) is refused before it runs, and one that returns anything but a
`torch.nn.Module` is refused after. Code named inside a *saved model* is another matter: `ts.load`
decides whether to trust it.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import torch
import torch.nn as nn

from torchslim import bounded, interop, io, zoo
from torchslim.data import call
from torchslim.errors import UserError
from torchslim.tasks.protocol import Task
from torchslim.tasks.resolve import resolve_task

_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def resolve_model(spec: str, trust_code: io.Trust = False) -> nn.Module:
    """`zoo:NAME`, `hf:DIR` (a local save_pretrained directory), a saved model directory, a model file
    of another framework, or `package.module:factory` (which the user named, so it runs; a saved
    directory naming a factory needs `trust_code`)."""
    shown = bounded.short(spec)
    if len(spec) > bounded.MAX_STRING:
        raise UserError(f"model {shown}: longer than {bounded.MAX_STRING} characters")
    if spec.startswith("zoo:"):
        return zoo.get(spec[4:]).model()
    if spec.startswith("hf:"):
        from torchslim.interop.hf import load_pretrained

        return load_pretrained(bounded.check_path(spec[3:], "model"))
    path = bounded.check_path(spec, "model")
    try:
        if path.suffix in interop.IMPORTERS:
            return interop.import_model(path)
        if path.is_dir():
            return io.load(path, trust_code=trust_code)
    except OSError as exc:  # a path the OS refuses (too long, no permission, a loop of links)
        raise UserError(f"model {shown}: cannot read ({exc.strerror or exc})") from None
    if _FACTORY.fullmatch(spec):
        return call_factory(spec)
    raise UserError(
        f"model {shown}: not zoo:NAME, a saved model directory, a model file "
        f"({', '.join(interop.IMPORTERS.names())}), or package.module:factory"
    )


def call_factory(target: str) -> nn.Module:
    """Call the factory a recipe names, with no arguments; its model records where it came from."""
    model = call_without_arguments(target, "model")
    if not isinstance(model, nn.Module):
        got = type(model).__name__
        raise UserError(f"model {target!r}: the factory returned {got}, not a torch.nn.Module")
    return io.set_source(model, "factory", target=target, kwargs={})


def call_without_arguments(target: str, what: str) -> Any:
    """Import `package.module:function` and call it with no arguments, if it can be called so."""
    factory = io.resolve_factory(target)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None  # some builtins have none: then calling is the only test
    if signature is not None:
        try:
            signature.bind()
        except TypeError:
            needed = [p.name for p in signature.parameters.values() if p.default is p.empty]
            raise UserError(
                f"{what} {target!r}: the factory needs arguments ({', '.join(needed)}); a recipe calls it "
                f"with none, so name a function that builds the {what} by itself"
            ) from None
    elif not isinstance(factory, type):
        raise UserError(f"{what} {target!r}: cannot tell what arguments it takes; wrap it in a function")
    return factory()


def check_fits(model: nn.Module, task: Task, name: str = "model") -> None:
    """One forward on the task's example inputs (eval mode, no grad, the model left as it was):
    a model that cannot take the task's inputs is named before any work or output starts."""
    training = [m.training for m in model.modules()]
    try:
        with torch.no_grad():
            model.eval()
            call(model, task.example_inputs)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(
            f"model {bounded.short(name)} does not fit task {task.name!r}: a forward on the task's example "
            f"inputs {_describe(task.example_inputs)} fails with {type(exc).__name__}: {detail[:200]}"
        ) from None
    finally:
        for module, mode in zip(model.modules(), training, strict=True):
            module.training = mode


def _describe(inputs: Any) -> str:
    if isinstance(inputs, torch.Tensor):
        return f"{inputs.dtype} {list(inputs.shape)}".replace("torch.", "")
    if isinstance(inputs, dict):
        return "{" + ", ".join(f"{k}: {_describe(v)}" for k, v in inputs.items()) + "}"
    if isinstance(inputs, (list, tuple)):
        return "(" + ", ".join(_describe(v) for v in inputs) + ")"
    return type(inputs).__name__


__all__ = ["call_factory", "call_without_arguments", "check_fits", "resolve_model", "resolve_task"]
