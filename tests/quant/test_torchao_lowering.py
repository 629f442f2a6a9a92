from __future__ import annotations

import sys
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchslim as ts
from torchslim.errors import UserError
from torchslim.metrics.runtimes import paired_latency
from torchslim.quant.backends import torchao as backend
from torchslim.quant.modules import QuantConv, QuantLinear
from torchslim.quant.stages import torchao_notes


class ConvMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(self.conv(x).flatten(1))))


def _quantized(**config: object) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = ConvMLP().eval()
    x = torch.randn(16, 2, 8)
    ts.quantize_(model, ts.QuantConfig(bits=8, **config), data=[x])  # type: ignore[arg-type]
    return model, x


def test_lowering_carries_our_integers_and_matches_eager() -> None:
    pytest.importorskip("torchao")
    from torchao.quantization import Int8Tensor

    model, x = _quantized(activations="dynamic")
    low = backend.lower(model)
    assert low.lowered == ["fc1", "fc2"] and set(low.kept) == {"conv"} and "QuantConv" in low.kept["conv"]
    assert isinstance(model.fc1, QuantLinear)  # the original is untouched (and still saveable)
    assert isinstance(low.model.conv, QuantConv)  # convolutions stay as they are
    weight = low.model.fc1.weight
    assert isinstance(weight, Int8Tensor)  # our integers and scales, not re-quantized from float
    assert torch.equal(weight.qdata, model.fc1.int_weight().to(torch.int8))
    assert torch.equal(weight.scale.flatten(), model.fc1.w_scale.flatten())
    with torch.no_grad():
        ours, lowered = model(x), low.model(x)
    # the same integer arithmetic: differences are float rounding (or one activation step at a tie)
    assert F.cosine_similarity(ours, lowered, dim=-1).min() > 0.9999
    assert (ours - lowered).abs().max() <= 1e-4 * ours.abs().max()


def test_compiled_graph_runs_integer_matmuls() -> None:
    pytest.importorskip("torchao")
    from torch._dynamo.backends.common import aot_autograd

    model, x = _quantized(activations="dynamic")
    graphs: list[str] = []

    def keep(gm: torch.fx.GraphModule, inputs: object) -> torch.fx.GraphModule:
        graphs.append(gm.code)
        return gm

    lowered = backend.lower(model).model
    compiled = torch.compile(lowered, backend=aot_autograd(fw_compiler=keep))
    with torch.inference_mode():
        out = compiled(x)
    torch._dynamo.reset()
    assert "aten._int_mm" in "\n".join(graphs)
    assert F.cosine_similarity(out, model(x).detach(), dim=-1).min() > 0.9999


def test_plan_names_what_torchao_cannot_take() -> None:
    static, _ = _quantized(activations="static")
    assert backend.plan(static)[0] == [] and "static" in backend.plan(static)[1]["fc1"]
    asym, _ = _quantized(activations="dynamic", symmetric=False)
    assert "asymmetric" in backend.plan(asym)[1]["fc1"]
    weight_only, _ = _quantized(activations=None)
    assert backend.plan(weight_only)[0] == ["fc1", "fc2"]
    notes = torchao_notes(static)
    if backend.available():
        assert notes["torchao_lowered_layers"] == 0 and set(notes["torchao_kept"]) == {"conv", "fc1", "fc2"}


def test_missing_torchao_is_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _quantized(activations="dynamic")
    monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao -> ImportError
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    assert not backend.available()
    with pytest.raises(UserError, match=r"pip install 'torchslim\[quant\]'"):
        backend.lower(model)
    assert "torchslim[quant]" in torchao_notes(model)["torchao"]
    monkeypatch.setattr(torch, "compile", lambda m, **options: m)  # the runtime still runs our layers
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert paired_latency([(model, "torch.compile")], x, rounds=1, warmup=0)[0] > 0
    assert any("torchslim[quant]" in str(w.message) for w in caught)


@pytest.mark.slow
def test_recipe_runtime_torch_compile_lowers(tmp_path) -> None:
    pytest.importorskip("torchao")
    stage = {"bits": 8, "activations": "dynamic", "runtime": "torch.compile"}
    report = ts.run_recipe({"model": "zoo:tiny-digits", "stages": [{"quantize": stage}]}, tmp_path / "out")
    final = report["stages"][-1]
    assert final["runtime"] == "torch.compile" and final["latency_ms"] > 0
    assert final["torchao_lowered_layers"] == 2 and final["torchao_kept"] == {}
    assert final["accuracy"] >= report["stages"][0]["accuracy"] - 0.02
