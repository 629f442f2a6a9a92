"""Limits on what a run reads from files it is given: size, text encoding, nesting, value ranges.

Hostile or broken input (binary junk, a list nested 5,000 deep, a 10^6-character path, a seed of
10^29) ends in a `UserError` that names the problem, never in a `RecursionError`, `OSError` or
`UnicodeDecodeError` traceback, and never after work has started.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from torchslim.errors import UserError

MAX_DEPTH = 64
"""Deepest nesting of lists and mappings accepted in a recipe or a run's own JSON files."""
MAX_VALUES = 100_000
"""Most values (counting each use of a YAML alias) a recipe may hold: alias bombs stop here."""
MAX_TEXT_BYTES = 256 << 10
"""Largest recipe (or run state) file read: recipes are a few hundred bytes."""
MAX_STRING = 4096
"""Longest string value: the longest path Linux accepts (PATH_MAX)."""
MAX_NAME = 255
"""Longest path component (NAME_MAX)."""
INT_RANGE = (-(2**63), 2**63 - 1)
"""Integers must fit torch's int64 wherever they end up."""

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def short(value: Any, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters, so a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-1]} ({len(text)} characters)"


def read_text(path: str | os.PathLike[str], what: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a small file, or a `UserError` saying why it is not one."""
    path = check_path(path, what)
    try:
        if not path.is_file():
            raise UserError(f"{what} {short(str(path))}: no such file")
        size = path.stat().st_size
        if size > max_bytes:
            raise UserError(f"{what} {path}: {size} bytes, more than the {max_bytes} accepted")
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{what} {short(str(path))}: cannot read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{what} {path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "is it a binary file?"
        ) from None


def check_path(path: str | os.PathLike[str], what: str) -> Path:
    """`path` if the OS could open it at all: at most PATH_MAX bytes, components at most NAME_MAX."""
    raw = os.fsencode(path)
    if len(raw) > MAX_STRING:
        shown = short(os.fsdecode(raw))
        raise UserError(f"{what} {shown}: path of {len(raw)} bytes, longer than {MAX_STRING}")
    if b"\0" in raw:
        raise UserError(f"{what} {short(os.fsdecode(raw))}: a path cannot contain a NUL byte")
    longest = max(raw.split(b"/"), key=len)
    if len(longest) > MAX_NAME:
        raise UserError(
            f"{what} {short(os.fsdecode(raw))}: a path component of {len(longest)} bytes, "
            f"longer than {MAX_NAME}"
        )
    return Path(os.fsdecode(raw))


def json_depth(text: str) -> int:
    """Deepest bracket nesting of a JSON text (strings skipped), without parsing it."""
    return bracket_depth(_STRING.sub('""', text))


def bracket_depth(text: str) -> int:
    """Deepest nesting of `[]{}` in `text`, counting every bracket (an upper bound for YAML)."""
    depth = deepest = 0
    for match in _BRACKET.finditer(text):
        depth = depth + 1 if match.group() in "[{" else max(depth - 1, 0)
        deepest = max(deepest, depth)
    return deepest


def load_json(text: str, what: str, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads` that refuses deep nesting and reports broken text as a `UserError`."""
    if json_depth(text) > max_depth:
        raise UserError(f"{what}: nested more than {max_depth} levels deep")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UserError(f"{what}: not valid JSON ({exc})") from None


def read_json(path: Path, what: str) -> Any:
    return load_json(read_text(path, what), f"{what} {path}")


def check_values(data: Any, *, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES) -> None:
    """Walk plain data (no recursion): depth, count, string lengths, integer range, finite floats.

    Raises `ValueError(loc, message)` pairs as `BoundsError` so the caller can name the key.
    """
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(data, ())]
    seen = 0
    while stack:
        value, loc = stack.pop()
        seen += 1
        if seen > max_values:
            raise BoundsError(loc, f"more than {max_values} values (YAML aliases count each time used)")
        if len(loc) > max_depth:
            raise BoundsError(loc[:max_depth], f"nested more than {max_depth} levels deep")
        problem = _scalar_problem(value)
        if problem:
            raise BoundsError(loc, problem)
        if isinstance(value, dict):
            stack.extend((v, (*loc, str(k))) for k, v in value.items())
            stack.extend((k, (*loc, "<key>")) for k in value if not isinstance(k, str))
        elif isinstance(value, (list, tuple)):
            stack.extend((v, (*loc, i)) for i, v in enumerate(value))


def _scalar_problem(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not INT_RANGE[0] <= value <= INT_RANGE[1]:
        return f"integer {short(value, 30)} is out of range (it must fit 64 bits)"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number"
    if isinstance(value, str) and len(value) > MAX_STRING:
        return f"a string of {len(value)} characters, longer than {MAX_STRING}"
    if isinstance(value, (bytes, bytearray)):
        return "binary data is not accepted here"
    return None


class BoundsError(ValueError):
    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc, self.message = loc, message
