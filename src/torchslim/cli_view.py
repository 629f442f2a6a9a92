"""Terminal output of the CLI: rich progress while a recipe runs, tables when it ends."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from torchslim.pipeline import Reporter
from torchslim.report import fmt_bytes, fmt_count

console = Console(stderr=True)


class RichReporter(Reporter):
    """Stage lines and progress bars on stderr (stdout stays clean for --json)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not enabled,
        )

    def __enter__(self) -> RichReporter:
        self._progress.start()
        return self

    def __exit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        self._progress.stop()

    def stage(self, index: int, total: int, name: str) -> None:
        if self.enabled:
            self._progress.console.print(f"[bold]stage {index}/{total}[/bold] {name}")

    def measured(self, row: dict[str, Any]) -> None:
        if self.enabled:
            self._progress.console.print(
                f"  metric {row['accuracy']:.4f}  size {fmt_bytes(row['size_bytes'])}  "
                f"nonzero {fmt_count(row['nonzero_params'])}  latency {row['latency_ms']:.3f} ms"
            )

    def progress(self, description: str, total: int) -> Callable[[int], None]:
        task = self._progress.add_task(f"  {description}", total=total)
        return lambda n: self._progress.advance(task, n)


def print_summary(report: dict[str, Any], out: Path) -> None:
    table = Table(title=f"{report['task']} ({report['metric']})")
    for col in ("stage", "params", "nonzero", "MACs", "size", "latency", report["metric"]):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for s in report["stages"]:
        table.add_row(
            s["name"],
            fmt_count(s["params"]),
            fmt_count(s["nonzero_params"]),
            fmt_count(s["macs"]),
            fmt_bytes(s["size_bytes"]),
            f"{s['latency_ms']:.3f} ms ({s['runtime']})",
            f"{s['accuracy']:.4f}",
        )
    out_console = Console()
    out_console.print(table)
    speedup = f"speedup {report['speedup']:.2f}x"
    if not report["speedup_comparable"]:
        first, last = report["stages"][0]["runtime"], report["stages"][-1]["runtime"]
        same = report.get("speedup_same_runtime")
        speedup += f" ({first} -> {last}" + (f"; {same:.2f}x both in {last})" if same else ")")
    out_console.print(
        f"compression {report['compression_ratio']:.2f}x, {speedup}; report: {out / 'report.html'}"
    )


def print_layers(title: str, rows: list[dict[str, Any]]) -> None:
    table = Table(title=title)
    for col in ("layer", "type", "shape", "params", "sparsity", "MACs", "bits"):
        table.add_column(col, justify="left" if col in ("layer", "type", "shape") else "right")
    for r in rows:
        table.add_row(
            r["name"],
            r["type"],
            "×".join(map(str, r["shape"])),
            fmt_count(r["params"]),
            f"{r['sparsity']:.1%}",
            fmt_count(r["macs"]),
            str(r["bits"]),
        )
    Console().print(table)
