"""Run benchmarks: `python -m benchmarks.run [NAME ...] [--quick] [--no-write]` (or `make bench`)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table as RichTable

from benchmarks.harness import BENCHMARKS, Table, write_section


def _discover() -> None:
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name.startswith("bench_"):
            importlib.import_module(f"benchmarks.{info.name}")


def _print(table: Table, console: Console) -> None:
    out = RichTable(title=table.title)
    for col in table.columns:
        out.add_column(col)
    for row in table.rows:
        out.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    console.print(out)
    for note in table.notes:
        console.print(f"  - {note}")


def main(argv: list[str] | None = None) -> int:
    _discover()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run")
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {BENCHMARKS.names()})")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and settings, for a smoke run")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args(argv)
    console = Console()
    for name in args.names or BENCHMARKS.names():
        started = time.perf_counter()
        table = BENCHMARKS.get(name)(args.quick)
        table.notes.append(f"benchmark time {time.perf_counter() - started:.0f} s")
        _print(table, console)
        if not args.no_write:
            quick = " --quick" if args.quick else ""
            write_section(name, f"python -m benchmarks.run {name}{quick}", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
