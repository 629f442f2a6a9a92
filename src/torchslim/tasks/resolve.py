"""What a recipe's `task:` names, made into a `Task`: a registered name, a factory, or a data mapping."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from torchslim import io, zoo
from torchslim.errors import UserError
from torchslim.tasks.protocol import Task, check_task


def resolve_task(spec: str | dict[str, Any] | None, model: nn.Module | None = None) -> Task:
    """`spec` as a Task; None means the zoo task `model` came from."""
    if spec is None:
        source = io.record_of(model).source or {} if model is not None else {}
        if source.get("kind") == "zoo":
            return zoo.get(source["name"])
        raise UserError(
            "recipe.task: required when the model does not come from the zoo (a task name, "
            "package.module:factory, or a data mapping such as {data: data.npz, metric: accuracy})"
        )
    if isinstance(spec, dict):
        from torchslim.tasks.spec import build_task, parse_task_spec

        return build_task(parse_task_spec(spec))
    if ":" in spec:
        from torchslim.resolve import call_without_arguments

        return check_task(call_without_arguments(spec, "task"), f"task factory {spec!r}")
    return zoo.get(spec)
