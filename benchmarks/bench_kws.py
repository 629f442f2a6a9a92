"""`kws-digits` on a streaming budget: the dense DS-CNN against the shipped recipe with its defaults and
tuned (`recipes/kws-digits.yaml`: channel pruning to half the MACs, distillation, static int8 through
onnxruntime).

Per-chunk latency is one model call for a new 32 ms chunk (the last second of log-mel frames, batch 1,
one thread), timed round-robin with every model in the same process (`metrics.streaming`); the
real-time factor is that latency over 32 ms. The dense model is timed in torch and in onnxruntime fp32,
the compressed ones in the runtime and form their recipe deploys to (`runtime: auto`: the int8 model as
quantized, or its float-compute form, integer weights dequantized once at load, where that runs faster).
Accuracy is on the 8 held-out voices.
Target (issue 19): within 1 pt of the baseline and >= 2x faster per chunk.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

import torchslim as ts
from benchmarks.harness import Table, benchmark
from torchslim.metrics import count_macs, saved_size
from torchslim.metrics.latency import threads, time_fn
from torchslim.metrics.streaming import streaming_latency
from torchslim.zoo.speech import features

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "kws-digits.yaml"
DEFAULTS: dict[str, Any] = {
    "model": "zoo:kws-digits",
    "stages": [
        {"prune": {"kind": "channel", "macs_target": 0.5}},
        {"finetune": {}},
        {"quantize": {"bits": 8, "weights": "per_channel", "activations": "static"}},
    ],
}
COLUMNS = ["model", "accuracy", "MACs", "size KB", "runtime", "chunk ms", "RTF", "speedup per chunk"]


def _front_end_ms(task: Any) -> float:
    """The fixed front-end's share of a step: the log-mel of one new 40 ms window."""
    window = torch.randn(1, features.WINDOW) * 0.1
    with threads(1), torch.inference_mode():
        return time_fn(lambda: task.features(window), repeats=200)


def _run(recipe: Any, out: Path) -> tuple[torch.nn.Module, dict[str, Any], torch.nn.Module]:
    """The final model, the report, and the model as it was before quantization (pruned, fp32)."""
    report = ts.run_recipe(recipe, out)
    before = sorted(d for d in (out / "stages").iterdir() if d.is_dir() and not d.name.endswith("quantize"))
    return ts.load(out / "model"), report, ts.load(before[-1])


@benchmark("kws")
def bench_kws(quick: bool) -> Table:
    task = ts.zoo.get("kws-digits")
    dense = task.model()
    x = task.chunk_inputs
    title = "kws-digits: DS-CNN keyword spotting, per-chunk streaming latency (one thread, CPU)"
    table = Table(title, COLUMNS)
    with tempfile.TemporaryDirectory(prefix="bench-kws-") as tmp:
        runs = {"recipe, defaults": _run(DEFAULTS, Path(tmp) / "defaults")}
        if not quick:
            runs["recipe, tuned"] = _run(RECIPE, Path(tmp) / "tuned")
        # eager torch is timed on its own: a 10 ms eager call before each onnxruntime call leaves that
        # call cold caches, and slowed the first onnxruntime model by up to 2x in a shared round-robin
        rounds = 50 if quick else 300
        timed = streaming_latency([(dense, "torch")], x, task.chunk_ms, rounds=rounds)
        entries: list[tuple[torch.nn.Module, str]] = [(dense, "onnxruntime")]
        entries += [(model, report["stages"][-1]["runtime"]) for model, report, _ in runs.values()]
        entries += [(fp32, "onnxruntime") for _, _, fp32 in runs.values()]
        timed += streaming_latency(entries, x, task.chunk_ms, rounds=rounds)
        base_ms = {t.runtime: t.latency_ms for t in timed[:2]}
        dense_acc, dense_kb, dense_macs = task.evaluate(dense), saved_size(dense) / 1e3, count_macs(dense, x)
        for t in timed[:2]:
            row = ["dense fp32", dense_acc, dense_macs, dense_kb, t.runtime]
            table.rows.append([*row, t.latency_ms, t.rtf, 1.0])
        for (label, (_, report, _)), t in zip(runs.items(), timed[2 : 2 + len(runs)], strict=True):
            final = report["stages"][-1]
            speedup = base_ms[t.runtime] / t.latency_ms
            form = f"{t.runtime}, {final.get('deployed_form', 'as quantized')}"
            row = [label, final["accuracy"], final["macs"], final["size_bytes"] / 1e3, form]
            table.rows.append([*row, t.latency_ms, t.rtf, speedup])
            drop = 100 * (dense_acc - final["accuracy"])
            table.notes.append(
                f"{label}: {drop:+.2f} pt below dense (target <= 1), {speedup:.2f}x per chunk against dense "
                f"fp32 in {t.runtime} (target >= 2x), {final['macs'] / dense_macs:.2f} of dense MACs; "
                f"deployed {final.get('deploy_reason', 'as quantized')}"
            )
        for (label, (_, report, _)), t in zip(runs.items(), timed[2 + len(runs) :], strict=True):
            pruned = report["stages"][-2]  # the stage before quantize: its accuracy and size
            row = [f"{label}, before int8", pruned["accuracy"], pruned["macs"], pruned["size_bytes"] / 1e3]
            table.rows.append([*row, t.runtime, t.latency_ms, t.rtf, base_ms[t.runtime] / t.latency_ms])
    table.notes.append(
        f"the log-mel front-end adds {_front_end_ms(task):.3f} ms per chunk (one new window), the same "
        "for every model; speedup per chunk is against dense fp32 timed in the same runtime"
    )
    table.notes.append(f"recipe with defaults: `{DEFAULTS['stages']}`; tuned: recipes/kws-digits.yaml")
    return table
