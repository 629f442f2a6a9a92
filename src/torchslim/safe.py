"""Guards for rebuilding a model from untrusted manifest data: what a name may reach, how much to allocate.

Transforms replaying a manifest look modules and tensors up through these helpers only: a module
path must name an existing submodule (never an arbitrary attribute chain), a tensor name an existing
parameter or buffer, an attribute name one of the module's plain public numbers. `element_budget`
bounds the size of any tensor built while loading, from the verified size of the stored weights.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import Any

import torch.nn as nn
from torch.nn.utils import parametrize

from torchslim.errors import ManifestError

MAX_ELEMENTS = 1 << 31
"""Elements any one tensor built from a file may hold when nothing tighter is known."""
_budget: ContextVar[int] = ContextVar("torchslim_element_budget", default=MAX_ELEMENTS)


@contextlib.contextmanager
def element_budget(limit: int) -> Iterator[None]:
    """While loading: no tensor rebuilt from the manifest or a structure file may exceed `limit` elements."""
    token = _budget.set(min(limit, MAX_ELEMENTS))
    try:
        yield
    finally:
        _budget.reset(token)


def check_numel(shape: Sequence[int], what: str) -> int:
    """The number of elements of `shape`, refused when negative or over the current budget."""
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise ManifestError(f"{what}: negative dimension in shape {dims}")
    numel = math.prod(dims)
    if numel > _budget.get():
        raise ManifestError(
            f"{what}: shape {dims} holds {numel} elements, more than the {_budget.get()} that the "
            "stored weights can fill; the file is corrupted or hostile"
        )
    return numel


def submodule(model: nn.Module, path: str, where: str) -> nn.Module:
    """The submodule at `path` ("" is the model): it must exist; no other attribute is reachable."""
    if path == "":
        return model
    modules = dict(model.named_modules(remove_duplicate=False))
    if path not in modules:
        raise ManifestError(f"{where}: the model has no layer {path!r}")
    return modules[path]


def parent_and_name(model: nn.Module, path: str, where: str) -> tuple[nn.Module, str]:
    """The parent of an existing submodule `path` and its attribute name there."""
    submodule(model, path, where)
    parent, _, name = path.rpartition(".")
    return submodule(model, parent, where), name


def tensor_name(module: nn.Module, name: str, where: str, *, parametrized: bool = True) -> str:
    """`name` when it is a parameter or buffer of `module` itself (or, if allowed, a parametrized one)."""
    own = {*module._parameters, *module._buffers}
    if name in own or (parametrized and parametrize.is_parametrized(module, name)):
        return name
    raise ManifestError(f"{where}: layer {type(module).__name__} has no parameter or buffer {name!r}")


def plain_attribute(module: nn.Module, name: str, value: Any, where: str) -> Any:
    """The value to set for a recorded plain attribute: the attribute must exist as a public number or
    tuple of numbers (`out_channels`, `kernel_size`) and keep its type."""
    current = vars(module).get(name)
    if name.startswith("_") or not isinstance(current, (bool, int, float, tuple)):
        raise ManifestError(f"{where}: {type(module).__name__}.{name} is not a plain size attribute")
    if isinstance(current, tuple):
        if not isinstance(value, list) or not all(type(v) in (int, float) for v in value):
            raise ManifestError(f"{where}: {type(module).__name__}.{name} must be a list of numbers")
        return tuple(value)
    if type(value) is not type(current) and not (type(current) is float and type(value) is int):
        raise ManifestError(f"{where}: {type(module).__name__}.{name} must be a {type(current).__name__}")
    if isinstance(value, int) and not isinstance(value, bool) and not -MAX_ELEMENTS <= value <= _budget.get():
        raise ManifestError(f"{where}: {type(module).__name__}.{name} = {value} is out of range")
    return value
