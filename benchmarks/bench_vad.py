"""`silero-vad`: the original Silero VAD ONNX file against our rebuild, fp32 and int8, in onnxruntime.

The int8 model is what `recipes/silero-vad-int8.yaml` makes (int8 weights per output channel / gate
row, float activations), also in its float-compute form (weights dequantized once at load: the file
keeps int8, the kernels are fp32). Per-chunk latency is one call for a new 32 ms chunk (576 samples:
64 of context and 512 new, with the LSTM state; batch 1, one thread), timed round-robin in one process;
the real-time factor is latency / 32 ms. Agreement: fraction of test frames (32 synthesised signals,
4 held-out eSpeak voices, noise at 5-30 dB SNR) whose decision at 0.5 matches the original's.
Targets (issue 19): agreement >= 0.99, size <= 0.3x, no slower per chunk than the original in onnxruntime.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import torchslim as ts
from benchmarks.harness import Table, benchmark
from torchslim.export import export_onnx
from torchslim.metrics import saved_size
from torchslim.zoo.speech import silero

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "silero-vad-int8.yaml"
COLUMNS = [
    "model",
    "agreement",
    "mean abs diff",
    "ROC-AUC",
    "size KB",
    "size x",
    "chunk ms",
    "RTF",
    "vs original",
]


def _session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _original_call() -> Callable[[], Any]:
    session = _session(silero.data_file("silero_vad.onnx"))
    feeds = {
        "input": np.zeros((1, silero.CONTEXT + silero.CHUNK), np.float32),
        "state": np.zeros((2, 1, silero.HIDDEN), np.float32),
        "sr": np.array(silero.SAMPLE_RATE, np.int64),
    }
    return lambda: session.run(None, feeds)


def _ours_call(model: torch.nn.Module, x: Any, path: Path) -> Callable[[], Any]:
    session = _session(export_onnx(model, x, path))
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), x, strict=True)}
    return lambda: session.run(None, feeds)


def _round_robin(calls: list[Callable[[], Any]], rounds: int) -> list[float]:
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(5):
        for call in calls:
            call()
    for _ in range(rounds):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            call()
            times[i].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


@benchmark("vad")
def bench_vad(quick: bool) -> Table:
    task = ts.zoo.get("silero-vad")
    dense = task.model()
    x = task.example_inputs
    with tempfile.TemporaryDirectory(prefix="bench-vad-") as tmp:
        ts.run_recipe(RECIPE, Path(tmp) / "run")
        int8 = ts.load(Path(tmp) / "run" / "model")
        floated = copy.deepcopy(int8)
        ts.quant.float_compute_(floated)
        models = {"ours fp32": dense, "ours int8 (recipe)": int8, "ours int8, float compute": floated}
        calls = [_original_call()]
        calls += [_ours_call(m, x, Path(tmp) / f"{i}.onnx") for i, m in enumerate(models.values())]
        ms = _round_robin(calls, 100 if quick else 1000)
        ref = task.scores(dense)
        size0 = silero.data_file("silero_vad.onnx").stat().st_size
        table = Table("silero-vad: Silero VAD 16 kHz, per-chunk latency in onnxruntime (one thread)", COLUMNS)
        table.rows.append(
            [
                "original (silero_vad.onnx)",
                1.0,
                0.0,
                ref["roc_auc_original"],
                size0 / 1e3,
                "",
                ms[0],
                ms[0] / 32,
                1.0,
            ]
        )
        base = saved_size(dense)
        for (label, model), t in zip(models.items(), ms[1:], strict=True):
            s = task.scores(model)
            size = saved_size(model)
            row = [label, s["agreement"], s["mean_abs_diff"], s["roc_auc"], size / 1e3, size / base]
            table.rows.append([*row, t, t / 32, ms[0] / t])
    table.notes.append(
        "size x: ts.save size over our fp32 rebuild's; the original's size is its .onnx file; vs original: "
        "the original's per-chunk ms over the model's (above 1: faster)"
    )
    table.notes.append(
        "recipe: recipes/silero-vad-int8.yaml; ROC-AUC against frame labels from the clean speech"
    )
    return table
