"""Benchmark harness: each `bench_*.py` module registers benchmarks that return a `Table`.

`python -m benchmarks.run [NAME ...] [--quick]` runs them, prints each table and rewrites that
benchmark's section of BENCHMARKS.md (between `<!-- bench:NAME -->` markers), keeping the others.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from torchslim.registry import Registry

BENCHMARKS: Registry[Callable[[bool], Table]] = Registry("benchmark")
RESULTS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Sentences printed under the table: targets met or missed, what limits a number."""

    def markdown(self) -> str:
        head = "| " + " | ".join(self.columns) + " |\n|" + "---|" * len(self.columns) + "\n"
        body = "".join("| " + " | ".join(_cell(v) for v in row) + " |\n" for row in self.rows)
        notes = "".join(f"\n- {n}" for n in self.notes)
        return f"### {self.title}\n\n{head}{body}{notes}\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def benchmark(name: str) -> Callable[[Callable[[bool], Table]], Callable[[bool], Table]]:
    """Register `fn(quick) -> Table` under `name`."""

    def add(fn: Callable[[bool], Table]) -> Callable[[bool], Table]:
        BENCHMARKS.register(name, fn)
        return fn

    return add


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")
"""CPU features that decide which integer kernels pay (VNNI/AMX: int8 dot products)."""


TIMED_OUT, NO_RESULT = object(), object()


def in_child(target: Callable[..., None], args: tuple[Any, ...], seconds: float) -> Any:
    """`target(*args, queue)` in a fresh (spawned) child: what it put on the queue, TIMED_OUT when it ran
    past `seconds` (then killed), NO_RESULT when it died without one. Spawned, since a forked child of a
    process that ran torch ops can deadlock."""
    ctx = multiprocessing.get_context("spawn")
    result = ctx.Queue()
    child = ctx.Process(target=target, args=(*args, result))
    child.start()
    child.join(seconds)
    if child.is_alive():
        child.kill()
        child.join()
        return TIMED_OUT
    return NO_RESULT if result.empty() else result.get()


def machine() -> str:
    cpu, flags = _cpuinfo()
    isa = "/".join(f for f in ISA_FLAGS if f in flags) or "no AVX2"
    return (
        f"{cpu or platform.processor() or platform.machine()} ({isa}), torch {torch.__version__}, "
        f"{os.cpu_count()} cores"
    )


def _cpuinfo() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", set()
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in text.splitlines()) if v
    )
    return fields.get("model name", ""), set(fields.get("flags", "").split())


def write_section(name: str, command: str, table: Table, path: Path = RESULTS) -> None:
    """Replace (or append) the section of `name` in BENCHMARKS.md, atomically."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    section = f"{start}\n{table.markdown()}\nMeasured with `{command}` on {machine()}.\n{end}\n"
    text = (
        path.read_text() if path.exists() else "# Benchmarks\n\nEach section is written by its benchmark.\n\n"
    )
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".BENCHMARKS.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
