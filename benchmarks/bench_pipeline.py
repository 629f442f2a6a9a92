"""The shipped recipes end to end: size, speed and accuracy of the final artifact, re-measured after
`ts.load` in a fresh process (the number a user of the saved model gets)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Table, benchmark
from torchslim.pipeline import run_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
# recipe -> (minimum compression ratio, minimum speedup, maximum metric drop in points)
TARGETS = {
    "demo": (40.0, None, 0.5),
    "mnist1d-fast": (None, 3.0, 1.0),
    "minilm-int8": (1 / 0.27, 1.5, 0.5),
    "minilm-distill": (None, 3.0, 15.0),  # half the depth: cosine >= 0.85 to the 6-layer fp32 model
    "mxnet-lenet": (None, None, 1.0),  # models from other frameworks: accuracy kept within a point
    "keras-digits": (None, None, 1.0),
}
FRESH = "import sys, torchslim as ts; print(ts.zoo.get(sys.argv[2]).evaluate(ts.load(sys.argv[1])))"


def _fresh_metric(model_dir: Path, task: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", FRESH, str(model_dir), task], check=True, capture_output=True, text=True
    ).stdout
    return float(out.strip().splitlines()[-1])


def _verdict(report: dict, fresh: float, targets: tuple[float | None, float | None, float]) -> str:
    ratio, speed, drop = targets
    base = report["stages"][0]["accuracy"]
    speedup = report.get("speedup_same_runtime", report["speedup"])
    checks = [(base - fresh) * 100 <= drop + 1e-9]
    checks += [report["compression_ratio"] >= ratio] if ratio else []
    checks += [report["speedup"] >= speed] if speed else []
    note = f"like-with-like speedup {speedup:.2f}x" if not report["speedup_comparable"] else ""
    return ("met" if all(checks) else "MISSED") + (f"; {note}" if note else "")


@benchmark("pipeline")
def run(quick: bool) -> Table:
    table = Table(
        "Shipped recipes end to end (final model reloaded in a fresh process)",
        ["recipe", "metric: baseline -> reloaded", "compression", "speedup", "runtime", "wall s", "targets"],
    )
    names = ["demo"] if quick else list(TARGETS)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            started = time.perf_counter()
            report = run_recipe(RECIPES / f"{name}.yaml", Path(tmp) / name)
            wall = time.perf_counter() - started
            fresh = _fresh_metric(Path(tmp) / name / "model", report["task"])
            base = report["stages"][0]["accuracy"]
            runtimes = f"{report['stages'][0]['runtime']} -> {report['stages'][-1]['runtime']}"
            table.rows.append(
                [
                    name,
                    f"{base:.4f} -> {fresh:.4f}",
                    f"{report['compression_ratio']:.2f}x",
                    f"{report['speedup']:.2f}x",
                    runtimes,
                    round(wall),
                    _verdict(report, fresh, TARGETS[name]),
                ]
            )
    table.notes.append(
        "targets: demo >= 40x smaller within 0.5 point; mnist1d-fast >= 3x faster within 1 point; "
        "minilm-int8 <= 0.27x size, >= 1.5x faster, cosine within 0.005; minilm-distill (3 of 6 "
        "blocks, distilled, int8) >= 3x faster, cosine >= 0.85; mxnet-lenet and keras-digits "
        "(imported .onnx / .keras, channel pruning + int8 out as ONNX) within 1 point"
    )
    table.notes.append(
        "the speedup column divides the baseline's latency in its runtime (PyTorch eager) by the "
        "final model's in its own; the like-with-like figure is in the targets column"
    )
    return table
