"""Embedded tasks: trained baselines on real data that ships with installed packages.

`ts.zoo.get("lenet5-digits")` returns the task; see `torchslim.zoo.base.Task` for its interface.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from torchslim.registry import Registry

if TYPE_CHECKING:
    from torchslim.tasks.protocol import Task

# name -> "module:Class" (imported lazily, so `import torchslim` stays light) or a callable returning a
# Task (a Task subclass, or a user's factory registered with `ts.register_task`).
TASKS: Registry[str | Callable[[], Task]] = Registry("zoo task")
TASKS.register("lenet5-digits", "torchslim.zoo.lenet:LeNetDigits")
TASKS.register("mnist1d-cnn", "torchslim.zoo.mnist1d:Mnist1dCNN")
TASKS.register("minilm", "torchslim.zoo.minilm:MiniLM")

_instances: dict[str, Task] = {}


def get(name: str) -> Task:
    """The task registered under `name` (one shared instance per process)."""
    if name not in _instances:
        entry = TASKS.get(name)
        if isinstance(entry, str):
            module, _, cls = entry.partition(":")
            entry = getattr(importlib.import_module(module), cls)
        from torchslim.tasks.protocol import check_task

        _instances[name] = check_task(entry(), f"task factory {name!r}")
    return _instances[name]


def forget(name: str) -> None:
    """Drop the cached instance of `name` (its registration changed)."""
    _instances.pop(name, None)


def names() -> list[str]:
    return TASKS.names()


__all__ = ["TASKS", "get", "names"]
