"""User tasks: the public `Task` interface, a registry of named tasks, and recipes' task specs.

`ts.register_task("mine", factory)` makes `task: mine` work in recipes; `task: package.module:factory`
needs no registration; a mapping (`{data: x.npz, metric: accuracy}`) needs no code at all.
"""

from __future__ import annotations

from collections.abc import Callable

from torchslim.tasks.protocol import Task, check_task


def register_task(name: str, factory: Callable[[], Task], *, replace: bool = False) -> None:
    """Register `factory` (a callable returning a `Task`, a Task subclass for instance) as `name`:
    recipes and `ts.zoo.get` find it by that name. The task is built once, on first use."""
    from torchslim import zoo

    if not callable(factory):
        raise TypeError(
            f"register_task({name!r}, ...): factory must be callable, got {type(factory).__name__}"
        )
    zoo.TASKS.register(name, factory, replace=replace)
    zoo.forget(name)


__all__ = ["Task", "check_task", "register_task"]
