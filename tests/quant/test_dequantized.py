"""The float-compute form: integer storage, weights dequantized once, float op, activations in float."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchslim as ts
from torchslim.errors import ManifestError
from torchslim.quant import float_compute_
from torchslim.quant.dequantized import float_compute, has_quantized_layers
from torchslim.quant.modules import QuantModule


def build() -> nn.Module:
    return nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 4))


def net() -> nn.Module:
    torch.manual_seed(0)
    model = build()
    ts.io.set_source(model, "factory", target="quant.test_dequantized:build")
    return model


def test_float_form_is_the_float_op_on_the_dequantized_weights(tmp_path: Path) -> None:
    model, x = net(), torch.randn(5, 2, 16)
    ts.quantize_(model, ts.QuantConfig(bits=8, activations="static"), [x])
    conv, fc = model[0], model[3]
    assert isinstance(conv, QuantModule) and isinstance(fc, QuantModule)
    int_out = model(x)
    names = float_compute_(model)
    assert names == ["0", "3"] and not has_quantized_layers(model)
    h = F.relu(F.conv1d(x, conv.weight, conv.bias, padding=1)).flatten(1)
    expected = F.linear(h, fc.weight, fc.bias)  # no activation grid on the way
    assert torch.equal(model(x), expected)
    assert not torch.equal(int_out, expected)  # static activations did round before
    ts.save(model, tmp_path / "m")
    loaded = ts.load(tmp_path / "m", trust_code=True)
    assert all(m.compute == "float" for m in loaded.modules() if isinstance(m, QuantModule))
    assert loaded[3].qweight.dtype == torch.uint8  # still stored as integers
    assert torch.equal(loaded(x), expected)


def test_smoothing_is_folded_back_into_the_float_weight() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 8)
    x[:, 2] *= 40  # an outlier channel, so smoothing is on
    model = nn.Sequential(nn.Linear(8, 6))
    ts.quantize_(model, ts.QuantConfig(bits=8, activations="dynamic", smoothing=0.5), [x])
    layer = model[0]
    assert isinstance(layer, QuantModule) and hasattr(layer, "smooth")
    twin = float_compute(model)
    assert layer.compute == "int"  # the copy changed, not the model
    expected = F.linear(x / layer.smooth, layer.weight, layer.bias)
    torch.testing.assert_close(twin(x), expected, rtol=1e-5, atol=1e-5)


def test_float_form_exports_to_onnx_as_float_weights(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnx

    from torchslim.metrics.runtimes import ort_feed, ort_session

    model, x = net(), torch.randn(5, 2, 16)
    ts.quantize_(model, ts.QuantConfig(bits=8, activations="static"), [x])
    float_compute_(model)
    path = ts.export_onnx(model, x, tmp_path / "m.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear", "MatMulInteger"}
    session = ort_session(path)
    out = torch.from_numpy(session.run(None, ort_feed(session, x))[0])
    torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-4)


def test_a_record_naming_a_float_layer_is_refused(tmp_path: Path) -> None:
    model, x = net(), torch.randn(5, 2, 16)
    ts.quantize_(model, ts.QuantConfig(bits=8, exclude=("0",)), [x])
    float_compute_(model)
    ts.io.record_of(model).transforms[-1]["params"]["layers"] = ["0"]  # a float Conv1d
    ts.save(model, tmp_path / "m")
    with pytest.raises(ManifestError, match="not a quantized layer"):
        ts.load(tmp_path / "m", trust_code=True)


def test_codebook_float_form_uses_the_looked_up_weight_even_with_gradients(tmp_path: Path) -> None:
    from torchslim.quant.codebook import CodebookModule

    model, x = net(), torch.randn(5, 2, 16)
    ts.quantize_(model, ts.QuantConfig(bits=4, kind="codebook"))
    fc = model[3]
    assert isinstance(fc, CodebookModule) and has_quantized_layers(model)
    looked_up = model(x)
    assert float_compute_(model) == ["0", "3"] and not has_quantized_layers(model)
    assert fc.float_weight is not None and torch.equal(fc.float_weight, fc.weight)
    model.train()  # the codebook form looks weights up in training; the float form never does
    out = model(x)
    assert out.grad_fn is not None and fc.centroids.grad is None
    out.sum().backward()
    assert fc.centroids.grad is None  # the float weight is a plain tensor: no lookup in the graph
    torch.testing.assert_close(out, looked_up)
    model.eval()
    ts.save(model, tmp_path / "m")
    loaded = ts.load(tmp_path / "m", trust_code=True)
    assert all(m.compute == "float" for m in loaded.modules() if isinstance(m, CodebookModule))
    assert loaded[3].packed.dtype == torch.uint8  # the indices are what is stored
    torch.testing.assert_close(loaded(x), looked_up)
