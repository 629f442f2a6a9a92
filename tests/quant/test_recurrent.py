from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import torchslim as ts
from recurrent_models import MODELS, Sequence, X
from recurrent_models import build as _build
from torchslim.export import export_onnx
from torchslim.quant.modules import QuantLinear
from torchslim.quant.recurrent import QuantCell, QuantRNN


def _sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean()))


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("activations", [None, "dynamic"])
def test_quantized_close_and_reloads(name: str, activations: str | None, tmp_path) -> None:
    model = _build(name)
    ref = model(X).detach()
    result = ts.quantize_(model, ts.QuantConfig(bits=8, weights="per_channel", activations=activations))
    layer = model.rnn if hasattr(model, "rnn") else model.cell
    assert isinstance(layer, QuantCell if "cell" in name else QuantRNN)
    assert result.quantized[("rnn" if hasattr(model, "rnn") else "cell")]["activations"] == activations
    children = layer.children_quant()
    assert children and all(q.qweight.dtype == torch.uint8 for q in children.values())
    out = model(X).detach()
    # measured 41-57 dB: int8 per gate row, dynamic activations a few dB lower
    assert _sqnr(ref, out) > 35
    ts.save(model, tmp_path / "m")
    loaded = ts.load(tmp_path / "m")
    assert torch.equal(loaded(X), out)
    float_layer = MODELS[name]().get_submodule("rnn" if hasattr(model, "rnn") else "cell")
    weights = sum(p.numel() for n, p in float_layer.named_parameters() if n.startswith("weight"))
    assert sum(q.qweight.numel() for q in children.values()) == weights  # one byte a weight
    assert ts.io.saved_size(loaded) < 0.6 * ts.io.saved_size(MODELS[name]())  # tiny: headers, scales count


def test_per_gate_row_scales() -> None:
    model = _build("lstm2")
    ts.quantize_(model, ts.QuantConfig(bits=8, weights="per_channel", activations=None))
    ih = model.rnn.ih_l1
    assert isinstance(ih, QuantLinear) and ih.w_scale.shape == (64, 1, 1)  # 4 gates x 16 units
    assert ih.bias is not None and torch.equal(
        model.rnn.hh_l1.int_weight().abs().amax(1), torch.full((64,), 127)
    )


def test_static_config_quantizes_recurrent_dynamic() -> None:
    model = _build("lstm-cell")
    result = ts.quantize_(model, ts.QuantConfig(activations="static"), data=[X, X])
    assert result.quantized["cell"]["activations"] == "dynamic"
    assert result.quantized["fc"]["activations"] == "static"


def test_qat_and_projection_keep_recurrent_float() -> None:
    model = _build("lstm2")
    result = ts.quantize_(model, ts.QuantConfig(), qat=True)
    assert isinstance(model.rnn, nn.LSTM) and "post-training only" in result.kept_float["rnn"]
    proj = Sequence(nn.LSTM, proj_size=8)
    result = ts.quantize_(proj, ts.QuantConfig(activations=None))
    assert isinstance(proj.rnn, nn.LSTM) and "proj_size" in result.kept_float["rnn"]


def test_float_compute_matches_int(tmp_path) -> None:
    model = _build("gru-bi")
    ts.quantize_(model, ts.QuantConfig(activations=None))
    out = model(X)
    ts.quant.float_compute_(model)
    assert torch.allclose(model(X), out, atol=1e-6)


def _onnx_matches(name: str, activations: str | None, tmp_path) -> list[str]:
    import onnx
    import onnxruntime as ort

    model = _build(name)
    ts.quantize_(model, ts.QuantConfig(bits=8, activations=activations))
    path = export_onnx(model, (X,), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: X.numpy()})[0]
    np.testing.assert_allclose(got, model(X).detach().numpy(), atol=2e-3)
    return sorted({n.op_type for n in onnx.load(str(path)).graph.node})


def test_onnx_lstm_weight_only(tmp_path) -> None:
    ops = _onnx_matches("lstm2", None, tmp_path)
    assert "LSTM" in ops and "DequantizeLinear" in ops


def test_onnx_cell_dynamic(tmp_path) -> None:
    ops = _onnx_matches("lstm-cell", "dynamic", tmp_path)
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "activations"),
    [("gru-bi", None), ("gru-bi", "dynamic"), ("lstm2", "dynamic"), ("gru-cell", None)],
)
def test_onnx_every_kind(name: str, activations: str | None, tmp_path) -> None:
    ops = _onnx_matches(name, activations, tmp_path)
    assert ("MatMulInteger" in ops) == (activations == "dynamic")
