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
from torchslim.report import fmt_bytes, fmt_count, metric_label

console = Console(stderr=True)


class RichReporter(Reporter):
    """Stage lines and progress bars on stderr (stdout stays clean for --json)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled, self._started = enabled, False
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
        return self  # the display starts with the first stage: an error before it stays one line

    def __exit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        if self._started:
            self._progress.stop()

    def _start(self) -> None:
        if not self._started:
            self._progress.start()
            self._started = True

    def stage(self, index: int, total: int, name: str) -> None:
        self._start()
        if self.enabled:
            self._progress.console.print(f"[bold]stage {index}/{total}[/bold] {name}")

    def measured(self, row: dict[str, Any]) -> None:
        if self.enabled:
            self._progress.console.print(
                f"  metric {row['accuracy']:.4f}  size {fmt_bytes(row['size_bytes'])}  "
                f"nonzero {fmt_count(row['nonzero_params'])}  latency {row['latency_ms']:.3f} ms"
            )

    def progress(self, description: str, total: int) -> Callable[[int], None]:
        self._start()
        task = self._progress.add_task(f"  {description}", total=total)
        return lambda n: self._progress.advance(task, n)


def print_summary(report: dict[str, Any], out: Path) -> None:
    table = Table(title=f"{report['task']} ({metric_label(report)})")
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


def print_inspect(title: str, result: dict[str, Any]) -> None:
    """Per-layer table and totals; the effective-MACs column appears once a layer is sparse."""
    rows = result["layers"]
    sparse = any(r["effective_macs"] != r["macs"] for r in rows)
    table = Table(title=title)
    cols = [
        "layer",
        "type",
        "shape",
        "params",
        "sparsity",
        "MACs",
        *(["effective MACs"] if sparse else []),
        "bits",
    ]
    for col in cols:
        table.add_column(col, justify="left" if col in ("layer", "type", "shape") else "right")
    for r in rows:
        cells = [r["name"], r["type"], "×".join(map(str, r["shape"])), fmt_count(r["params"])]
        cells += [f"{r['sparsity']:.1%}", fmt_count(r["macs"])]
        cells += [fmt_count(r["effective_macs"])] if sparse else []
        table.add_row(*cells, str(r["bits"]))
    out = Console()
    out.print(table)
    if result["macs"] is None:
        out.print("MACs need example inputs: pass --input-shape 1,3,224,224 (or --task NAME)")
        return
    line = f"params {fmt_count(result['params'])} (nonzero {fmt_count(result['nonzero_params'])}), "
    line += f"MACs {fmt_count(result['macs'])}, effective MACs {fmt_count(result['effective_macs'])}"
    out.print(line)


def print_compare(result: dict[str, Any]) -> None:
    table = Table(title=f"runs compared ({result['metric']})")
    for col in ("run", "stage", result["metric"], "size", "nonzero", "MACs", "latency", "compression"):
        table.add_column(col, justify="left" if col in ("run", "stage") else "right")
    for r in result["rows"]:
        table.add_row(
            r["run"],
            r["stage"],
            f"{r['metric']:.4f}",
            fmt_bytes(r["size_bytes"]),
            fmt_count(r["nonzero_params"]),
            fmt_count(r["macs"]),
            f"{r['latency_ms']:.3f} ms ({r['runtime']})",
            f"{r['compression_ratio']:.2f}x",
        )
    out = Console()
    out.print(table)
    out.print(f"page: {result['html']}")
