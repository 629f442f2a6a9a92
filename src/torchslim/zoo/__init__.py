"""Embedded tasks: trained baselines on real data that ships with installed packages.

`ts.zoo.get("lenet5-digits")` returns the task; see `torchslim.zoo.base.Task` for its interface.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torchslim.registry import Registry

if TYPE_CHECKING:
    from torchslim.tasks.protocol import Task

# name -> "module:Class" (imported lazily, so `import torchslim` stays light) or a callable returning a
# Task (a Task subclass, or a user's factory registered with `ts.register_task`).
TASKS: Registry[str | Callable[[], Task]] = Registry("zoo task")
TASKS.register("lenet5-digits", "torchslim.zoo.lenet:LeNetDigits")
TASKS.register("mnist1d-cnn", "torchslim.zoo.mnist1d:Mnist1dCNN")
TASKS.register("minilm", "torchslim.zoo.minilm:MiniLM")
TASKS.register("llama-pydocs", "torchslim.zoo.llama_pydocs:LlamaPydocs")
TASKS.register("kws-digits", "torchslim.zoo.speech.kws:KwsDigits")
TASKS.register("silero-vad", "torchslim.zoo.speech.vad:SileroVad")

_instances: dict[str, Task] = {}

TRAINED_BY_CONSTANTS = ("lenet5-digits", "mnist1d-cnn", "kws-digits")
"""Built-in tasks whose module's `EPOCHS` and `LR` say how the baseline was trained: `get` copies them
to the instance as `baseline_epochs` and `baseline_lr`, which fine-tuning defaults derive from
(`torchslim.distill.trainer.finetune_defaults`). Set here rather than in the task classes because a
cached baseline is keyed by a hash of its classes' source: editing them would retrain every baseline."""


def get(name: str) -> Task:
    """The task registered under `name` (one shared instance per process)."""
    if name not in _instances:
        entry = TASKS.get(name)
        if isinstance(entry, str):
            module, _, cls = entry.partition(":")
            entry = getattr(importlib.import_module(module), cls)
        from torchslim.tasks.protocol import check_task

        task: Any = check_task(entry(), f"task factory {name!r}")
        if name in TRAINED_BY_CONSTANTS:
            trained = importlib.import_module(type(task).__module__)
            task.baseline_epochs, task.baseline_lr = trained.EPOCHS, trained.LR
        _instances[name] = task
    return _instances[name]


def forget(name: str) -> None:
    """Drop the cached instance of `name` (its registration changed)."""
    _instances.pop(name, None)


def names() -> list[str]:
    return TASKS.names()


__all__ = ["TASKS", "get", "names"]
