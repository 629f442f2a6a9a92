"""A default run deploys its final model where it is fastest and reports the like-with-like speedup."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch.nn as nn
from torch.nn.utils import parametrize

import torchslim as ts
from torchslim import pipeline
from torchslim.metrics import deploy
from torchslim.quant.modules import QuantModule

# fixed costs (ms) per (quantized, runtime): int8 is slower than fp32 in eager PyTorch, faster in onnxruntime
COSTS = {(False, "torch"): 1.0, (True, "torch"): 1.6, (False, "onnxruntime"): 0.8, (True, "onnxruntime"): 0.5}


def fake_latency(entries: Sequence[tuple[Any, str]], example_inputs: Any, **kwargs: Any) -> list[float]:
    quantized = [any(isinstance(m, QuantModule) for m in model.modules()) for model, _ in entries]
    return [COSTS[(q, rt)] for q, (_, rt) in zip(quantized, entries, strict=True)]


def test_a_default_int8_run_is_not_slower_than_fp32_in_its_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    monkeypatch.setattr(deploy, "default_timer", fake_latency)
    monkeypatch.setattr(pipeline, "paired_latency", fake_latency)
    recipe = {
        "model": "zoo:tiny-digits",
        "stages": [{"quantize": {"bits": 8, "weights": "per_channel", "activations": "static"}}],
    }
    report = ts.run_recipe(recipe, tmp_path / "run")
    final = report["stages"][-1]
    assert final["runtime_chosen"] == "onnxruntime" == report["runtime"]
    assert report["speedup_same_runtime"] == pytest.approx(0.8 / 0.5) and report["speedup_same_runtime"] >= 1
    assert list(report).index("speedup_same_runtime") < list(report).index("speedup")


def test_without_integer_kernels_that_pay_a_default_int8_run_deploys_float_compute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    # this CPU (AVX2, no VNNI): int8 slower in eager, 0.98x fp32 in onnxruntime; float compute = fp32 cost
    costs = {(False, "torch"): 1.0, (True, "torch"): 1.6, (False, "onnxruntime"): 0.8}
    costs[(True, "onnxruntime")] = 0.82

    def latency(entries: Sequence[tuple[Any, str]], example_inputs: Any, **kwargs: Any) -> list[float]:
        def integer(model: nn.Module) -> bool:
            return any(isinstance(m, QuantModule) and m.compute == "int" for m in model.modules())

        return [costs[(integer(model), rt)] for model, rt in entries]

    monkeypatch.setattr(deploy, "default_timer", latency)
    monkeypatch.setattr(pipeline, "paired_latency", latency)
    recipe = {
        "model": "zoo:tiny-digits",
        "stages": [{"quantize": {"bits": 8, "weights": "per_channel", "activations": "static"}}],
    }
    report = ts.run_recipe(recipe, tmp_path / "run")
    final = report["stages"][-1]
    assert final["deployed_form"] == "float compute" and "0.98x" in final["deploy_reason"]
    assert report["runtime"] == "onnxruntime" and report["speedup_same_runtime"] >= 1
    assert report["compression_ratio"] > 2  # the integers are what is stored
    loaded = ts.load(tmp_path / "run" / "model")
    layers = [m for m in loaded.modules() if isinstance(m, QuantModule)]
    assert layers and all(m.compute == "float" for m in layers)


def test_the_final_model_of_a_pruning_run_has_no_masks_left(tmp_path: Path) -> None:
    recipe = {"model": "zoo:tiny-digits", "stages": [{"prune": {"kind": "unstructured", "sparsity": 0.5}}]}
    report = ts.run_recipe(recipe, tmp_path / "run")
    loaded = ts.load(tmp_path / "run" / "model")
    assert not any(parametrize.is_parametrized(m) for m in loaded.modules())
    assert report["stages"][-1]["masks_folded"] is True
    weights = [m.weight for m in loaded.modules() if isinstance(m, nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros >= 0.45  # the zeros stay: folded into the weights
    same_runtime = report["speedup_same_runtime"]
    assert same_runtime == report["speedup"]  # both timed in eager PyTorch


def test_a_default_codebook_run_deploys_float_compute_when_the_lookup_costs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchslim.quant.codebook import CodebookModule

    def latency(entries: Sequence[tuple[Any, str]], example_inputs: Any, **kwargs: Any) -> list[float]:
        def looks_up(model: nn.Module) -> bool:
            return any(isinstance(m, CodebookModule) and m.compute != "float" for m in model.modules())

        return [1.3 if looks_up(model) else 1.0 for model, _ in entries]  # the lookup's cost, fixed

    monkeypatch.setattr(deploy, "default_timer", latency)
    monkeypatch.setattr(pipeline, "paired_latency", latency)
    recipe = {"model": "zoo:tiny-digits", "stages": [{"quantize": {"bits": 4, "kind": "codebook"}}]}
    report = ts.run_recipe(recipe, tmp_path / "run")
    final = report["stages"][-1]
    assert final["deployed_form"] == "float compute"
    assert report["speedup_same_runtime"] >= 1 and report["compression_ratio"] > 3  # 4-bit indices stored
    loaded = ts.load(tmp_path / "run" / "model")
    layers = [m for m in loaded.modules() if isinstance(m, CodebookModule)]
    assert layers and all(m.compute == "float" for m in layers)
