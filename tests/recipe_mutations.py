"""Hostile recipes for tests/test_recipe_hostile.py and benchmarks/probe_recipes.py: hand-written
ones (with the message each must give) and seeded mutations of the shipped recipes.

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

OK = "model: zoo:tiny-digits\nstages:\n  - finetune: {epochs: 1}\n"
BOMB = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdef", "bcdefg", strict=True))
BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + BOMB


def _deep(depth: int) -> str:
    return "model: zoo:tiny-digits\nstages: " + "[" * depth + "]" * depth + "\n"


HAND_WRITTEN: list[tuple[str, str | bytes, str]] = [
    ("binary junk", bytes(range(256)) * 4, "not UTF-8 text (byte 0x80 at offset 128)"),
    ("latin-1 text", "model: zoo:tiny-digits  # café\n".encode("latin-1"), "not UTF-8"),
    ("utf-16", OK.encode("utf-16"), "not UTF-8"),
    ("NUL byte", "model: zoo:tiny-digits\0\n", "not valid YAML"),
    ("empty file", "", "must be a mapping"),
    ("a list", "- model: zoo:tiny-digits\n", "must be a mapping"),
    ("stages 5000 deep", _deep(5000), "nested more than 64 levels deep"),
    ("a line of 10**5 brackets", "model: zoo:tiny-digits\nstages: " + "[" * 10**5, "nested"),
    ("JSON 5000 deep", '{"model": "zoo:tiny-digits", "stages": ' + "[" * 5000 + "]" * 5000 + "}", "nested"),
    ("mappings 5000 deep", "model: zoo:tiny-digits\noutput: " + "{a: " * 5000 + "1" + "}" * 5000, "nested"),
    ("alias bomb", BOMB + "model: zoo:tiny-digits\nstages: [*g]\n", "more than 100000 values"),
    ("python tag", "model: !!python/object/apply:os.system [echo hi]\n", "not valid YAML"),
    ("binary value", "model: !!binary aGVsbG8=\n", "binary data is not accepted"),
    ("seed 10**29", OK + f"seed: {10**29}\n", "seed: integer 1000"),
    ("seed 2**32", OK + f"seed: {2**32}\n", "seed: Input should be less than or equal to 4294967295"),
    ("seed -1", OK + "seed: -1\n", "seed: Input should be greater than or equal to 0"),
    ("seed 1.5", OK + "seed: 1.5\n", "seed: Input should be a valid integer"),
    ("5000-digit int", OK + "seed: 1" + "0" * 5000 + "\n", "Exceeds the limit (4300 digits)"),
    (
        "inf temperature",
        "model: zoo:tiny-digits\nstages:\n  - distill: {temperature: .inf}\n",
        "not a finite",
    ),
    ("nan lr", "model: zoo:tiny-digits\nstages:\n  - finetune: {lr: .nan}\n", "nan is not a finite"),
    ("epochs 10**6", "model: zoo:tiny-digits\nstages:\n  - finetune: {epochs: 1000000}\n", "less than or"),
    ("modle", "modle: zoo:tiny-digits\nstages: []\n", "modle: unknown key; did you mean model?"),
    ("stages a string", "model: zoo:tiny-digits\nstages: finetune\n", "stages: Input should be a valid list"),
    ("pickle output", "model: zoo:tiny-digits\noutput: {formats: [pickle]}\n", "unknown output format"),
    ("empty model", "model: ''\n", "model: String should have at least 1 character"),
    ("model 10**6 long", "model: " + "a" * 10**6 + "\n", "1000008 bytes, more than the 262144 accepted"),
    (
        "model 5000 long",
        "model: " + "a" * 5000 + "\n",
        "model: a string of 5000 characters, longer than 4096",
    ),
    (
        "30000 list items",
        "model: zoo:tiny-digits\nstages: [" + "1, " * 30000 + "]\n",
        "more than 20000 lines",
    ),
    ("model component 300", f"model: {'d' * 300}/m.onnx\n", "component of 300 bytes, longer than 255"),
    ("os:system", "model: os:system\ntask: tiny-digits\n", "the factory needs arguments (command)"),
    ("task os:system", "model: zoo:tiny-digits\ntask: os:system\n", "task 'os:system': the factory needs"),
    ("os:getpid", "model: os:getpid\ntask: tiny-digits\n", "the factory returned int, not a torch"),
    ("not a factory", "model: os:nothing_here\ntask: tiny-digits\n", "has no attribute"),
    ("wrong task", "model: conftest:LeNet5\ntask: tiny-digits\n", "does not fit task 'tiny-digits'"),
    ("unknown task", "model: zoo:tiny-digits\ntask: nope\n", "unknown zoo task 'nope'"),
    ("empty onnx", "model: EMPTY_ONNX\ntask: tiny-digits\n", "the file is empty (0 bytes)"),
    ("/dev/zero", "model: /dev/zero\n", "not zoo:NAME"),
]


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
