"""The run report: every stage's numbers as report.json, and a self-contained report.html to read.

Both files are written atomically, so an interrupted run never leaves a half-written report that looks whole.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

STAGE_FIELDS = ("name", "params", "nonzero_params", "macs", "size_bytes", "latency_ms", "runtime", "accuracy")
REPORT_FIELDS = ("task", "metric", "stages", "compression_ratio", "speedup")
LAYER_FIELDS = ("name", "type", "shape", "params", "nonzero", "sparsity", "macs", "bits")
_DERIVED = (
    "runtime",
    "speedup_comparable",
    "speedup_same_runtime",
    "accuracy_delta",
    "higher_is_better",
    "torchslim_version",
    "created",
    "layers",
)
_MAX_LAYER_BARS = 80  # taller charts stop being readable; the table still lists every layer

Check = tuple[Callable[[Any], bool], str]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_pairs(c: Any) -> bool:
    return isinstance(c, list | tuple) and all(
        isinstance(p, list | tuple) and len(p) == 2 and all(_is_num(x) for x in p) for p in c
    )


_STR: Check = (lambda v: isinstance(v, str) and v != "", "a non-empty str")
_COUNT: Check = (lambda v: _is_int(v) and v >= 0, "an int >= 0")
_POS_INT: Check = (lambda v: _is_int(v) and v > 0, "an int > 0")  # ratios divide by size_bytes
_POS: Check = (lambda v: _is_num(v) and v > 0, "a number > 0")
_NUM: Check = (_is_num, "a finite number")
_SHAPE: Check = (lambda v: isinstance(v, list | tuple) and all(_is_int(d) for d in v), "a list of ints")
_FRACTION: Check = (lambda v: _is_num(v) and 0 <= v <= 1, "a number in [0, 1]")
_STAGES: Check = (lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list")
_PAIRS: Check = (_is_pairs, "a list of [sparsity, metric] pairs")
# Specs line up with the field tuples above, so the checks cannot drift from the documented fields.
_STAGE_SPEC = dict(zip(STAGE_FIELDS, (_STR, _COUNT, _COUNT, _COUNT, _POS_INT, _POS, _STR, _NUM), strict=True))
_LAYER_SPEC = dict(
    zip(LAYER_FIELDS, (_STR, _STR, _SHAPE, _COUNT, _COUNT, _FRACTION, _COUNT, _POS_INT), strict=True)
)
_REPORT_SPEC = dict(zip(REPORT_FIELDS, (_STR, _STR, _STAGES, _POS, _POS), strict=True))


def _check(obj: Any, spec: dict[str, Check], where: str) -> None:
    """Fail on the first missing or malformed field, naming it: the caller can fix it from the message."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a dict, got {type(obj).__name__}")
    for field, (ok, what) in spec.items():
        if field not in obj:
            raise ValueError(f"{where}: missing field {field!r}")
        if not ok(obj[field]):
            raise ValueError(f"{where}.{field}: expected {what}, got {obj[field]!r}")


def _check_list(rows: Any, spec: dict[str, Check], where: str) -> None:
    if not isinstance(rows, list):
        raise ValueError(f"{where}: expected a list, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        _check(row, spec, f"{where}[{i}]")


def validate_report(report: dict) -> None:
    """Raise ValueError naming the first bad or missing field, so a broken run fails before writing."""
    _check(report, _REPORT_SPEC, "report")
    _check_list(report["stages"], _STAGE_SPEC, "report.stages")
    if not isinstance(report.get("speedup_comparable", False), bool):
        raise ValueError(f"report.speedup_comparable: expected a bool, got {report['speedup_comparable']!r}")
    if report.get("layers") is not None:
        _check_list(report["layers"], _LAYER_SPEC, "report.layers")
    sens = report.get("sensitivity")
    if sens is not None:
        _check(sens, {str(k): _PAIRS for k in sens} if isinstance(sens, dict) else {}, "report.sensitivity")


def build_report(
    task: str,
    metric: str,
    stages: list[dict],
    layers: list[dict] | None = None,
    *,
    higher_is_better: bool = True,
    **extra: Any,
) -> dict:
    """Assemble the report from measured stages; the headline numbers are derived here, never passed in.
    `higher_is_better` is False for metrics such as mse or perplexity (stage rows keep the metric under
    `accuracy`, the field name of the report format)."""
    from torchslim import __version__  # lazy: the package __init__ may import modules that import this one

    _check({"stages": stages}, {"stages": _STAGES}, "report")
    _check_list(stages, _STAGE_SPEC, "report.stages")
    clash = sorted(set(extra) & {*REPORT_FIELDS, *_DERIVED})
    if clash:
        raise ValueError(f"build_report: extra key {clash[0]!r} would overwrite a computed field")
    first, last = stages[0], stages[-1]
    report: dict[str, Any] = {
        "task": task,
        "metric": metric,
        "stages": [dict(s) for s in stages],
        "compression_ratio": round(first["size_bytes"] / last["size_bytes"], 4),
        "runtime": last["runtime"],
        **_same_runtime(first, last),
        "speedup": round(first["latency_ms"] / last["latency_ms"], 4),
        "speedup_comparable": first["runtime"] == last["runtime"],
        "accuracy_delta": round(last["accuracy"] - first["accuracy"], 6),
        "higher_is_better": higher_is_better,
        "torchslim_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if layers is not None:
        report["layers"] = [dict(row) for row in layers]
    report.update(extra)
    validate_report(report)
    return report


def _same_runtime(first: dict, last: dict) -> dict[str, float]:
    """The like-with-like speedup: the final model against the baseline timed in the final model's runtime."""
    if first["runtime"] == last["runtime"]:
        return {"speedup_same_runtime": round(first["latency_ms"] / last["latency_ms"], 4)}
    return {"speedup_same_runtime": last["speedup_same_runtime"]} if "speedup_same_runtime" in last else {}


def _json_default(obj: Any) -> Any:
    """numpy/torch scalars and paths turn up in `extra`; anything else is a bug worth a TypeError."""
    if isinstance(obj, Path):
        return str(obj)
    for attr in ("tolist", "item"):
        if callable(getattr(obj, attr, None)):
            return getattr(obj, attr)()
    raise TypeError(f"report: cannot write {type(obj).__name__} to JSON")


def _atomic_write(files: dict[Path, str]) -> None:
    """Write every file to a temp file beside it first, then rename them all: a crash while writing leaves
    old files or none, and both renames happen only after all the content is safely on disk."""
    tmps: dict[Path, str] = {}
    try:
        for path, text in files.items():
            fd, tmps[path] = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmps[path], 0o644)  # mkstemp makes 0600; a report is meant to be shared
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    finally:
        for tmp in tmps.values():
            Path(tmp).unlink(missing_ok=True)


def write_report(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Validate and render both files in memory before touching disk, so a failure leaves no partial file."""
    validate_report(report)
    text_json = json.dumps(report, indent=2, allow_nan=False, default=_json_default) + "\n"
    text_html = render_html(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "report.json", out / "report.html"
    _atomic_write({json_path: text_json, html_path: text_html})
    return json_path, html_path


# ------------------------------------------------------------------------------------- formatting, charts


def fmt_bytes(n: float) -> str:
    """Binary units, as file managers show sizes: 1716452 -> '1.64 MiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def fmt_count(n: float) -> str:
    """Decimal units for params and MACs: 2291200 -> '2.29 M'."""
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


def _fmt_ms(x: float) -> str:
    return f"{x:.3f} ms" if x < 10 else f"{x:.1f} ms"


def _esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _tex(s: str) -> str:
    """Matplotlib reads '$...$' as math and can fail on it; our labels are plain text."""
    return s.replace("$", r"\$")


_GREY, _BLUE, _DARK = "#9aa5b1", "#7fa7d9", "#2b6cb0"


def _axes(width: float, height: float) -> Any:
    """A bare Figure renders through Agg without pyplot: no global backend switch, no figure registry."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained").add_subplot()


def _png(ax: Any, title: str) -> str:
    ax.set_title(_tex(title), fontsize=11, loc="left")
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=8)
    buf = io.BytesIO()
    try:
        ax.figure.savefig(buf, format="png", metadata={"Software": None})
    finally:
        ax.figure.clear()
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _stage_colors(n: int) -> list[str]:
    return [_GREY if i == 0 else _DARK if i == n - 1 else _BLUE for i in range(n)]


def _stage_bars(labels: list[str], values: list[float], title: str, ylabel: str, fmt: Callable) -> str:
    """One bar per stage with its value printed on it: the exact numbers matter more than the picture."""
    ax = _axes(5.4, 3.4)
    xs = list(range(len(values)))
    bars = ax.bar(xs, values, color=_stage_colors(len(values)), width=0.6)
    ax.bar_label(bars, labels=[fmt(v) for v in values], fontsize=8, padding=2)
    tilt = len(values) > 4 or max(len(s) for s in labels) > 14
    ax.set_xticks(xs, [_tex(s) for s in labels], rotation=25 if tilt else 0, ha="right" if tilt else "center")
    ax.set_ylabel(_tex(ylabel), fontsize=9)
    lo, hi = min(0.0, *values), max(0.0, *values)  # a metric such as cosine may be negative
    ax.set_ylim(lo * 1.15, hi * 1.15 if hi > 0 else 1)
    return _png(ax, title)


def _tradeoff_plot(stages: list[dict], metric: str) -> str:
    """Metric against cumulative compression: shows which stage bought size and which one cost accuracy."""
    ax = _axes(5.4, 3.4)
    xs = [stages[0]["size_bytes"] / s["size_bytes"] for s in stages]
    ys = [s["accuracy"] for s in stages]
    ax.plot(xs, ys, color=_BLUE, zorder=1)
    ax.scatter(xs, ys, c=_stage_colors(len(stages)), zorder=2, s=36)
    ax.axhline(ys[0], color=_GREY, linestyle="--", linewidth=0.8)
    for i, xy in enumerate(zip(xs, ys, strict=True)):
        ax.annotate(
            _tex(f"{i}: {stages[i]['name']}"), xy, textcoords="offset points", xytext=(5, 5), fontsize=7
        )
    ax.set_xlabel("compression ratio (baseline size / stage size)", fontsize=9)
    ax.set_ylabel(_tex(metric), fontsize=9)
    ax.margins(x=0.15, y=0.2)
    return _png(ax, f"{metric} vs compression")


def _layer_charts(layers: list[dict]) -> list[str]:
    """Horizontal bars keep long module names readable; log scale when layer sizes span decades."""
    rows = layers[:_MAX_LAYER_BARS][::-1]  # barh draws bottom-up; reverse so the first layer is on top
    ys, names, height = list(range(len(rows))), [_tex(r["name"]) for r in rows], 1.2 + 0.22 * len(rows)
    ax = _axes(5.4, height)
    params = [r["params"] for r in rows]
    ax.barh(ys, params, color=_GREY, label="params")
    ax.barh(ys, [r["nonzero"] for r in rows], color=_DARK, height=0.5, label="nonzero")
    positive = [p for p in params if p > 0]
    if positive and max(positive) / min(positive) > 100:
        ax.set_xscale("log", nonpositive="clip")
        ax.set_xlabel("log scale", fontsize=8)
    ax.set_yticks(ys, names)
    ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1, 1), ncol=2, frameon=False)
    charts = [_png(ax, "params per layer")]
    ax = _axes(5.4, height)
    sparsity = [r["sparsity"] for r in rows]
    bars = ax.barh(ys, sparsity, color=_BLUE)
    ax.bar_label(bars, labels=[f"{s:.0%}" for s in sparsity], fontsize=7, padding=2)
    ax.set_xlim(0, 1.12)
    ax.set_yticks(ys, names)
    charts.append(_png(ax, "sparsity per layer (fraction of zero weights)"))
    return charts


def _sensitivity_plot(sens: dict, metric: str) -> str:
    ax = _axes(7.0, 4.0)
    for name, curve in sens.items():
        xs, ys = zip(*sorted((float(x), float(y)) for x, y in curve), strict=True) if curve else ((), ())
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1, label=_tex(str(name)))
    ax.set_xlabel("sparsity of the layer", fontsize=9)
    ax.set_ylabel(_tex(metric), fontsize=9)
    ax.legend(fontsize=7, ncol=1 + len(sens) // 12, loc="best")
    return _png(ax, f"sensitivity: {metric} when pruning one layer alone"[:90])


# ------------------------------------------------------------------------------------------------- html

_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2933;background:#f7f8fa}
body{margin:0}main{max-width:1160px;margin:0 auto;padding:24px 28px 48px;background:#fff}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:32px 0 10px;border-bottom:1px solid #e4e7eb}
.meta{color:#616e7c;font-size:.9em;margin:0}.cards{display:flex;flex-wrap:wrap;gap:14px;margin:20px 0 8px}
.card{flex:1 1 220px;border:1px solid #e4e7eb;border-radius:6px;padding:12px 16px}
.label,.sub{color:#616e7c;font-size:.85em}.value{font-size:1.7em;font-weight:600}
.warn{border-color:#e3a008;background:#fffbea}.note{border-left:4px solid #e3a008;padding:8px 12px}
table{border-collapse:collapse;font-size:.9em;width:100%}tr.final td{font-weight:600}.scroll{overflow-x:auto}
th,td{padding:5px 10px;border-bottom:1px solid #e4e7eb;text-align:left;white-space:nowrap}
th{background:#f0f2f5;font-weight:600}.n{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;flex:1 1 480px}img{max-width:100%;height:auto}
pre{background:#f0f2f5;padding:10px;border-radius:4px;overflow-x:auto;font-size:.85em}
footer{margin-top:36px;color:#9aa5b1;font-size:.8em}
"""


def _img(b64: str, alt: str) -> str:
    return f'<figure><img src="data:image/png;base64,{b64}" alt="{_esc(alt)}"></figure>'


def _table(heads: list[str], rows: list[list[tuple[str, bool]]], final_row: int = -1) -> str:
    """Cells are (already escaped html, numeric?); numeric columns align right."""
    th = "".join(
        f'<th class="n">{h}</th>' if n else f"<th>{h}</th>" for h, (_, n) in zip(heads, rows[0], strict=True)
    )
    trs = []
    for i, row in enumerate(rows):
        tds = "".join(f'<td class="n">{c}</td>' if n else f"<td>{c}</td>" for c, n in row)
        trs.append(f'<tr class="final">{tds}</tr>' if i == final_row else f"<tr>{tds}</tr>")
    return f'<div class="scroll"><table><tr>{th}</tr>\n' + "\n".join(trs) + "\n</table></div>"


def _card(label: str, value: str, sub: str, warn: bool = False) -> str:
    return (
        f'<div class="card{" warn" if warn else ""}"><div class="label">{_esc(label)}</div>'
        f'<div class="value">{_esc(value)}</div><div class="sub">{_esc(sub)}</div></div>'
    )


def _headline(report: dict) -> str:
    """Three cards: what shrank, what sped up, what it cost; a plain warning when speedups mix runtimes."""
    first, last = report["stages"][0], report["stages"][-1]
    comparable = report.get("speedup_comparable", first["runtime"] == last["runtime"])
    was, now = (f"{_fmt_ms(s['latency_ms'])} ({s['runtime']})" for s in (first, last))
    sizes = f"{fmt_bytes(first['size_bytes'])} → {fmt_bytes(last['size_bytes'])} on disk"
    out = [
        '<section class="cards">',
        _card("compression ratio", f"{report['compression_ratio']:.2f}×", sizes),
        _speed_card(report, comparable, f"{was} → {now}"),
        _card(
            f"{metric_label(report)}, baseline → final",
            f"{first['accuracy']:.4f} → {last['accuracy']:.4f}",
            f"change {last['accuracy'] - first['accuracy']:+.4f}",
        ),
        "</section>",
    ]
    if not comparable:
        same = report.get("speedup_same_runtime")
        like = (
            f" Timed in {_esc(last['runtime'])} too, the baseline gives a like-with-like speedup of "
            f"<strong>{same:.2f}×</strong>."
            if same is not None
            else ""
        )
        out.append(
            '<p class="note warn"><strong>Speedup is not comparable.</strong> The baseline was timed on '
            f"{_esc(first['runtime'])} and the final model on {_esc(last['runtime'])}, so the ratio "
            f"mixes the effect of compression with the effect of changing runtime.{like}</p>"
        )
    return "\n".join(out)


def metric_label(report: dict) -> str:
    """The metric's name, flagged when lower is better (errors, perplexity)."""
    lower = report.get("higher_is_better") is False
    return f"{report['metric']} (lower is better)" if lower else report["metric"]


def _speed_card(report: dict, comparable: bool, times: str) -> str:
    """Like with like first: the final model against the baseline timed in the final model's runtime."""
    same, runtime = report.get("speedup_same_runtime"), report["stages"][-1]["runtime"]
    if same is None:
        return _card("speedup (not comparable)", f"{report['speedup']:.2f}×", times, warn=True)
    sub = times if comparable else f"{report['speedup']:.2f}× against the baseline as first timed: {times}"
    return _card(f"speedup in {runtime}, like with like", f"{same:.2f}×", sub, warn=same < 1)


def _stage_table(report: dict) -> str:
    stages = report["stages"]
    extra = list(
        dict.fromkeys(k for s in stages for k, v in s.items() if k not in STAGE_FIELDS and _scalar(v))
    )
    heads = ["#", "stage", "runtime", "params", "nonzero params", "MACs", "size", "latency", report["metric"]]
    rows = []
    for i, s in enumerate(stages):
        cells = [(str(i), True), (_esc(s["name"]), False), (_esc(s["runtime"]), False)]
        cells += [(fmt_count(s[k]), True) for k in ("params", "nonzero_params", "macs")]
        cells += [(fmt_bytes(s["size_bytes"]), True), (_fmt_ms(s["latency_ms"]), True)]
        cells.append((f"{s['accuracy']:.4f}", True))
        cells += [(_esc(_fmt_extra(s[k])) if k in s else "", _is_num(s.get(k))) for k in extra]
        rows.append(cells)
    final = len(stages) - 1 if len(stages) > 1 else -1
    return _table([_esc(h) for h in heads + extra], rows, final)


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _stage_details(report: dict) -> str:
    """Structured stage notes (training history, per-layer choices) as collapsible JSON per stage."""
    out = []
    for i, s in enumerate(report["stages"]):
        details = {k: v for k, v in s.items() if k not in STAGE_FIELDS and not _scalar(v)}
        if details:
            text = _esc(json.dumps(details, indent=2, default=str))
            summary = _esc(f"{i}: {s['name']} — {', '.join(details)}")
            out.append(f"<details><summary>{summary}</summary><pre>{text}</pre></details>")
    return "\n".join(["<h2>Stage details</h2>", *out]) if out else ""


def _fmt_extra(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v, default=str) if isinstance(v, dict | list) else str(v)


def _stage_charts(report: dict) -> str:
    stages, metric = report["stages"], report["metric"]
    names = [f"{i}: {s['name']}" for i, s in enumerate(stages)]
    with_rt = [f"{n}\n({s['runtime']})" for n, s in zip(names, stages, strict=True)]
    unit = fmt_bytes(max(s["size_bytes"] for s in stages)).split()[1]  # axis in the unit of the largest
    div = 1024 ** ("B", "KiB", "MiB", "GiB").index(unit)
    sizes = [s["size_bytes"] / div for s in stages]
    size = _stage_bars(names, sizes, "size on disk", unit, lambda v: fmt_bytes(v * div))
    acc = _stage_bars(
        names, [s["accuracy"] for s in stages], f"{metric} per stage", metric, lambda v: f"{v:.4f}"
    )
    lat = _stage_bars(with_rt, [s["latency_ms"] for s in stages], "latency (runtime)", "ms", _fmt_ms)
    trade = _tradeoff_plot(stages, metric_label(report))
    alts = ("size per stage", f"{metric} per stage", "latency per stage", f"{metric} vs compression ratio")
    imgs = (_img(b64, alt) for b64, alt in zip((size, acc, lat, trade), alts, strict=True))
    return '<div class="grid">' + "".join(imgs) + "</div>"


def _layer_section(layers: list[dict]) -> str:
    out = ["<h2>Layers of the final model</h2>"]
    if len(layers) > _MAX_LAYER_BARS:
        out.append(
            f"<p>Charts show the first {_MAX_LAYER_BARS} of {len(layers)} layers; the table lists all.</p>"
        )
    if layers:
        out.append('<div class="grid">' + "".join(_img(b, "per-layer chart") for b in _layer_charts(layers)))
        out.append("</div>")
        heads = ["layer", "type", "shape", "params", "nonzero", "sparsity", "MACs", "bits"]
        out.append(_table(heads, [_layer_row(r) for r in layers]))
    else:
        out.append("<p>No layer rows were recorded.</p>")
    return "\n".join(out)


def _layer_row(r: dict) -> list[tuple[str, bool]]:
    text = (r["name"], r["type"], "×".join(map(str, r["shape"])))
    nums = (fmt_count(r["params"]), fmt_count(r["nonzero"]), f"{r['sparsity']:.1%}", fmt_count(r["macs"]))
    return [(_esc(t), False) for t in text] + [(n, True) for n in nums] + [(str(r["bits"]), True)]


def _extras_section(report: dict) -> str:
    """The recipe and anything else a caller attached, shown verbatim so nothing recorded is hidden."""
    out = []
    if report.get("sensitivity"):
        b64 = _sensitivity_plot(report["sensitivity"], report.get("sensitivity_metric", report["metric"]))
        out += ["<h2>Sensitivity</h2>", _img(b64, "per-layer sensitivity curves")]
    recipe = report.get("recipe")
    if recipe is not None:
        text = recipe if isinstance(recipe, str) else json.dumps(recipe, indent=2, default=str)
        out += ["<h2>Recipe</h2>", f"<pre>{_esc(text)}</pre>"]
    shown = {*REPORT_FIELDS, *_DERIVED, "sensitivity", "sensitivity_metric", "recipe"}
    rest = {k: v for k, v in report.items() if k not in shown}
    if rest:
        text = _esc(json.dumps(rest, indent=2, default=str))
        summary = _esc(", ".join(map(str, rest)))
        out += ["<h2>Other details</h2>", f"<details><summary>{summary}</summary><pre>{text}</pre></details>"]
    return "\n".join(out)


def render_html(report: dict) -> str:
    """One self-contained page (inline CSS, PNG charts as data URIs) that can be mailed or archived alone."""
    task = _esc(report["task"])
    meta = [f"metric: {metric_label(report)}", f"{len(report['stages'])} stages"]
    meta += [f"torchslim {report['torchslim_version']}"] if "torchslim_version" in report else []
    meta += [report["created"]] if "created" in report else []
    parts = [
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>torchslim report: {task}</title><style>{_CSS}</style></head><body><main>",
        f'<header><h1>Compression report: {task}</h1><p class="meta">{_esc(" · ".join(meta))}</p></header>',
        _headline(report),
        "<h2>Stages</h2>",
        _stage_table(report),
        "<h2>Charts</h2>",
        _stage_charts(report),
        _layer_section(report["layers"]) if report.get("layers") is not None else "",
        _stage_details(report),
        _extras_section(report),
        "<footer>Written by torchslim. Size is on disk; latency is the median forward time on one thread."
        "</footer></main></body></html>\n",
    ]
    return "\n".join(p for p in parts if p)
