"""Seeded mutations of the shipped recipes, for the recipe fuzz test and benchmarks/probe_recipes.py.

Each mutation is the text of a recipe file (or bytes, for binary junk): keys deleted or renamed,
values of the wrong type, numbers out of range, deep nesting, binary junk spliced in.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
ODD_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    2**31,
    2**32,
    2**63,
    10**29,
    -(10**29),
    1e308,
    float("inf"),
    float("nan"),
    -0.0,
    "",
    "x" * 5000,
    "os:system",
    "../../etc",
    "/dev/zero",
    "\0",
    "zoo:",
    [],
    {},
    [[[]]],
    {"a": {"b": 1}},
]


def _paths(data: Any, loc: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield loc
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, (*loc, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _paths(value, (*loc, i))


def _parent(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc[:-1]:
        data = data[part]
    return data


def _delete(rng: random.Random, data: Any, loc: tuple[Any, ...]) -> None:
    del _parent(data, loc)[loc[-1]]


def _rename(rng: random.Random, data: Any, loc: tuple[Any, ...]) -> None:
    parent = _parent(data, loc)
    if isinstance(parent, dict):
        key = str(loc[-1])
        i = rng.randrange(len(key) + 1)
        parent[key[:i] + rng.choice("xe_") + key[i + 1 :]] = parent.pop(loc[-1])


def _retype(rng: random.Random, data: Any, loc: tuple[Any, ...]) -> None:
    _parent(data, loc)[loc[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))


def _nest(rng: random.Random, data: Any, loc: tuple[Any, ...]) -> None:
    """A placeholder that `mutate` expands in the text (PyYAML cannot dump 5,000 levels itself)."""
    _parent(data, loc)[loc[-1]] = f"NEST{rng.choice([10, 100, 1000, 5000])}{rng.choice('[{')}"


def _expand(match: re.Match[str]) -> str:
    depth, kind = int(match.group(1)), match.group(2)
    return ("[" * depth + "1" + "]" * depth) if kind == "[" else ("{k: " * depth + "1" + "}" * depth)


MUTATIONS: list[Callable[[random.Random, Any, tuple[Any, ...]], None]] = [_delete, _rename, _retype, _nest]


def mutate(rng: random.Random, text: str) -> str | bytes:
    """One mutation of a recipe's text."""
    if rng.random() < 0.1:  # binary junk spliced into the file
        raw = text.encode()
        i = rng.randrange(len(raw) + 1)
        return raw[:i] + rng.randbytes(rng.randint(1, 64)) + raw[i:]
    data = yaml.safe_load(text)
    for _ in range(rng.randint(1, 3)):
        loc = rng.choice([p for p in _paths(data) if p])
        rng.choice(MUTATIONS)(rng, data, loc)
    if rng.random() < 0.2:  # flow style: everything on one line, as JSON would be
        text = yaml.safe_dump(data, default_flow_style=True, width=10**9)
    else:
        text = yaml.safe_dump(data, sort_keys=False, width=10**9)
    return re.sub(r"NEST(\d+)([\[{])", _expand, text)


def mutations(seed: int, count: int) -> Iterator[str | bytes]:
    rng = random.Random(seed)
    texts = [p.read_text() for p in sorted(RECIPES.glob("*.yaml"))]
    for _ in range(count):
        yield mutate(rng, rng.choice(texts))
