"""Choose modules by name with include/exclude globs. First matching pattern wins.

Patterns are `fnmatch` globs on dotted module names (`features.*`, `fc*`). A pattern prefixed with
`!` excludes. `select(names, include, exclude)` keeps a name when the first pattern that matches it,
in the order `exclude` then `include`, is an include; names that match nothing are kept only when
`include` is empty.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

import torch.nn as nn


def matches(name: str, pattern: str) -> bool:
    """A glob matches the module itself and, for convenience, everything below it."""
    return fnmatchcase(name, pattern) or fnmatchcase(name, pattern + ".*")


def is_selected(name: str, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> bool:
    rules = [(p, False) for p in exclude] + [(p, True) for p in include]
    for pattern, keep in rules:
        if matches(name, pattern):
            return keep
    return not include


def select(names: Iterable[str], include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
    return [n for n in names if is_selected(n, include, exclude)]


def weighted_modules(
    model: nn.Module,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d),
) -> dict[str, nn.Module]:
    """Modules of the given types that the globs select, by dotted name, in model order."""
    return {
        name: mod
        for name, mod in model.named_modules()
        if isinstance(mod, types) and is_selected(name, include, exclude)
    }
