"""Quantization, the first recipe: what a user who writes only the obvious settings gets.

Static int8 of the zoo classifiers through `run_recipe` (runtime and deployment form chosen by
measurement, final model reloaded and timed like with like), and MiniLM's two Python first recipes
(dynamic int8 with the `auto` smoothing and runtime; 4-bit per_group weights with calibration data).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import torchslim as ts
from benchmarks.harness import Table, benchmark

COLUMNS = ["model", "recipe", "runtime", "deployed form", "quality", "size ratio", "latency ms", "speedup"]
FIRST_INT8 = {"quantize": {"bits": 8, "weights": "per_channel", "activations": "static"}}


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=-1).mean())


def _classifier(table: Table, name: str, tmp: Path) -> None:
    report = ts.run_recipe({"model": f"zoo:{name}", "stages": [FIRST_INT8]}, tmp / f"first-{name}")
    final = report["stages"][-1]
    form = final.get("deployed_form", "as quantized")
    recipe = "`quantize: {bits: 8, weights: per_channel, activations: static}`"
    table.rows.append(
        [
            name,
            recipe,
            final["runtime"],
            form,
            final["accuracy"],
            1 / report["compression_ratio"],
            final["latency_ms"],
            report["speedup_same_runtime"],
        ]
    )
    table.notes.append(
        f"{name}: deployed {form} in {final['runtime']}, {report['speedup_same_runtime']:.2f}x the speed of "
        f"fp32 timed there (like with like, final model reloaded; {report['speedup']:.2f}x against fp32 "
        f"eager), accuracy {final['accuracy']:.4f} vs fp32 {report['stages'][0]['accuracy']:.4f}; "
        f"why: {final.get('deploy_reason', 'integer runtime pays')}"
    )


def _minilm(table: Table, quick: bool) -> None:
    from torchslim.metrics.deploy import choose_runtime
    from torchslim.quant.dequantized import float_compute, float_compute_
    from torchslim.zoo.minilm import load_sentences

    task = ts.zoo.get("minilm")
    tokens = task.tokenize(load_sentences()[1][:64])
    x = (tokens["input_ids"], tokens["attention_mask"])
    fp = task.model()
    ref, fp_size = fp(*x).detach(), ts.io.saved_size(fp)
    m = task.model()
    config = ts.QuantConfig(bits=8, weights="per_channel", activations="dynamic")
    result = ts.quantize_(m, config, task.calibration_loader(8))
    choice = choose_runtime(m, fp, x, fallback=float_compute)
    if choice.use_fallback:
        float_compute_(m)
    rt = choice.runtime
    model_ms, base_ms = (
        (choice.fallback_ms, choice.fallback_baseline_ms)
        if choice.use_fallback
        else (choice.model_ms, choice.baseline_ms)
    )
    form = "float compute" if choice.use_fallback else "as quantized"
    cos, size = _cos(m(*x).detach(), ref), ts.io.saved_size(m) / fp_size
    label = "`QuantConfig(bits=8, weights='per_channel', activations='dynamic')`"
    table.rows.append(["minilm", label, rt, form, cos, size, model_ms[rt], base_ms[rt] / model_ms[rt]])
    candidates = ", ".join(
        f"{k} {v['model_ms']:.1f}/{v['baseline_ms']:.1f}"
        for k, v in choice.notes()["runtime_candidates"].items()
    )
    table.notes.append(
        f"minilm int8: smoothing alpha {result.chosen.get('smoothing')} chosen (output error per alpha "
        f"{_rounded(result.chosen.get('smoothing_output_error'))}); runtime candidates, ms model/fp32: "
        f"{candidates}; cosine {cos:.4f} (target >= 0.995 with SmoothQuant + onnxruntime 0.9966)"
    )
    if quick:
        return
    m4 = task.model()
    result = ts.quantize_(m4, ts.QuantConfig(bits=4, weights="per_group"), task.calibration_loader(4))
    cos4, size4 = _cos(m4(*x).detach(), ref), ts.io.saved_size(m4) / fp_size
    label = "`QuantConfig(bits=4, weights='per_group')` + calibration data"
    table.rows.append(["minilm", label, "torch", "as quantized", cos4, size4, None, None])
    grids = sorted({(p["symmetric"], p["group_size"]) for p in result.quantized.values()})
    table.notes.append(
        f"minilm int4: rounding {result.chosen['linear_rounding']}, grids (symmetric, group) {grids}; "
        f"cosine {cos4:.4f} (target >= 0.984, GPTQ g64 asymmetric before act order and clipping 0.9839)"
    )


def _rounded(errors: Any) -> Any:
    return {k: round(v, 5) for k, v in errors.items()} if isinstance(errors, dict) else errors


@benchmark("quant-first")
def bench_quant_first(quick: bool) -> Table:
    table = Table("Quantization, first recipe (defaults only; one thread, CPU)", COLUMNS)
    with tempfile.TemporaryDirectory(prefix="bench-quant-first-") as tmp:
        for name in ("lenet5-digits", "mnist1d-cnn"):
            _classifier(table, name, Path(tmp))
        _minilm(table, quick)
    table.notes.append(
        "quality: accuracy for classifiers (reloaded), mean cosine to fp32 on 64 sentences for minilm"
    )
    return table
