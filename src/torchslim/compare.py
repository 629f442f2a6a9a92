"""`torchslim compare RUN...`: the runs' baseline and final stages side by side, and their fronts.

The page plots the metric against size and against latency for every stage of every run, and joins
the points no other point beats on both axes (the Pareto front): the runs worth keeping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torchslim import atomic
from torchslim.errors import UserError
from torchslim.report import (
    _CSS,
    _axes,
    _esc,
    _fmt_ms,
    _img,
    _png,
    _table,
    _tex,
    fmt_bytes,
    fmt_count,
    metric_label,
    validate_report,
)

_COLORS = ("#2b6cb0", "#c05621", "#2f855a", "#9b2c2c", "#6b46c1", "#b7791f", "#2c7a7b", "#97266d")


def load_runs(dirs: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(label, report) of each run directory; all must measure the same metric."""
    runs = []
    for d in dirs:
        path = Path(d) / "report.json"
        if not path.is_file():
            raise UserError(f"{d}: no report.json (pass directories written by torchslim compress)")
        try:
            report = json.loads(path.read_text())
            validate_report(report)
        except (json.JSONDecodeError, ValueError) as exc:
            raise UserError(f"{path}: not a valid report ({exc})") from None
        runs.append((Path(d).resolve().name, report))
    metrics = sorted({r["metric"] for _, r in runs})
    if len(metrics) > 1:
        raise UserError(
            f"the runs measure different metrics ({', '.join(metrics)}); compare runs of one task"
        )
    return runs


def rows(runs: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row for each run's baseline and one for its final stage."""
    out = []
    for label, report in runs:
        first, last = report["stages"][0], report["stages"][-1]
        for which, s in (("baseline", first), ("final", last)):
            out.append(
                {
                    "run": label,
                    "stage": which if which == "baseline" else f"final ({s['name']})",
                    "metric": s["accuracy"],
                    "size_bytes": s["size_bytes"],
                    "params": s["params"],
                    "nonzero_params": s["nonzero_params"],
                    "macs": s["macs"],
                    "latency_ms": s["latency_ms"],
                    "runtime": s["runtime"],
                    "compression_ratio": 1.0 if which == "baseline" else report["compression_ratio"],
                    "speedup": 1.0 if which == "baseline" else report["speedup"],
                }
            )
    return out


def pareto(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats: no larger x and a metric at least as good, one of
    them strictly. Sorted by x."""
    sign = 1.0 if higher_is_better else -1.0
    keep = []
    for i, (x, y) in enumerate(points):
        beaten = any(
            (x2 <= x and sign * y2 >= sign * y) and (x2 < x or sign * y2 > sign * y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
        if not beaten:
            keep.append(i)
    return sorted(keep, key=lambda i: points[i][0])


def _front_plot(runs: list[tuple[str, dict[str, Any]]], key: str, xlabel: str, title: str) -> str:
    ax = _axes(6.0, 3.8)
    points: list[tuple[float, float]] = []
    for n, (label, report) in enumerate(runs):
        xs = [float(s[key]) for s in report["stages"]]
        ys = [float(s["accuracy"]) for s in report["stages"]]
        color = _COLORS[n % len(_COLORS)]
        ax.plot(xs, ys, color=color, linewidth=0.8, alpha=0.5)
        ax.scatter(xs[1:], ys[1:], color=color, s=28, label=_tex(label), zorder=3)
        ax.scatter(xs[:1], ys[:1], color=color, marker="s", s=28, zorder=3)
        points += list(zip(xs, ys, strict=True))
    higher = runs[0][1].get("higher_is_better", True) is not False
    front = pareto(points, higher)
    ax.step(
        [points[i][0] for i in front],
        [points[i][1] for i in front],
        where="post",
        color="#1f2933",
        linestyle="--",
        linewidth=1,
        label="front",
    )
    ax.set_xscale("log")
    ax.set_xlabel(_tex(xlabel + " (log scale; squares: baselines)"), fontsize=9)
    ax.set_ylabel(_tex(metric_label(runs[0][1])), fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return _png(ax, title)


def render_html(runs: list[tuple[str, dict[str, Any]]]) -> str:
    table = rows(runs)
    metric = metric_label(runs[0][1])
    heads = ["run", "stage", metric, "size", "params", "nonzero", "MACs", "latency", "compression", "speedup"]
    cells = [
        [
            (_esc(r["run"]), False),
            (_esc(r["stage"]), False),
            (f"{r['metric']:.4f}", True),
            (fmt_bytes(r["size_bytes"]), True),
            (fmt_count(r["params"]), True),
            (fmt_count(r["nonzero_params"]), True),
            (fmt_count(r["macs"]), True),
            (_esc(f"{_fmt_ms(r['latency_ms'])} ({r['runtime']})"), True),
            (f"{r['compression_ratio']:.2f}×", True),
            (f"{r['speedup']:.2f}×", True),
        ]
        for r in table
    ]
    size = _front_plot(runs, "size_bytes", "size on disk (bytes)", f"{metric} against size")
    lat = _front_plot(runs, "latency_ms", "latency (ms)", f"{metric} against latency")
    task = _esc(", ".join(sorted({r["task"] for _, r in runs})))
    parts = [
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">',
        f"<title>torchslim comparison: {task}</title><style>{_CSS}</style></head><body><main>",
        f'<header><h1>Comparison: {task}</h1><p class="meta">{len(runs)} runs · metric: {_esc(metric)}'
        "</p></header>",
        "<h2>Runs</h2>",
        _table([_esc(h) for h in heads], cells),
        "<h2>Fronts</h2>",
        '<div class="grid">' + _img(size, "metric against size") + _img(lat, "metric against latency"),
        "</div>",
        "<p>Latencies come from different runs, timed at different moments: compare them with care.</p>",
        "<footer>Written by torchslim compare.</footer></main></body></html>\n",
    ]
    return "\n".join(parts)


def compare(dirs: list[str], out: str | Path) -> dict[str, Any]:
    """Read the runs, write the HTML page to `out`, return the table."""
    runs = load_runs(dirs)
    page = render_html(runs)
    atomic.write_text(Path(out), page)
    return {"metric": runs[0][1]["metric"], "rows": rows(runs), "html": str(out)}
