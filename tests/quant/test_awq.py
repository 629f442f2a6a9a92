"""AWQ's searched input scales, and each method's output error against round-to-nearest on one layer."""

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.errors import UserError
from torchslim.quant import awq
from torchslim.quant.modules import QuantModule
from torchslim.quant.primitives import WeightSpec


def _outlier_layer() -> tuple[nn.Sequential, torch.Tensor]:
    """A Linear whose inputs have one outlier channel (x50), as LLM activations do."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 64))
    x = torch.randn(512, 128)
    x[:, 3] *= 50.0
    return model, x


def _error(method: str, bits: int = 4, weights: str = "per_channel") -> float:
    model, x = _outlier_layer()
    with torch.no_grad():
        ref = model(x)
    config = ts.QuantConfig(bits=bits, weights=weights, group_size=32, symmetric=True, method=method)  # type: ignore[arg-type]
    ts.quantize_(model, config, data=[x])
    with torch.no_grad():
        return float((model(x) - ref).pow(2).sum() / ref.pow(2).sum())


@pytest.mark.parametrize(("bits", "weights"), [(4, "per_channel"), (3, "per_group")])
def test_every_method_beats_round_to_nearest_on_an_outlier_channel(bits: int, weights: str) -> None:
    errors = {m: _error(m, bits, weights) for m in ("rtn", "gptq", "awq", "awq+gptq")}
    assert errors["awq"] < 0.9 * errors["rtn"]
    assert errors["gptq"] < 0.9 * errors["rtn"]
    assert errors["awq+gptq"] < errors["rtn"]


def test_awq_scales_never_lose_to_no_scaling_and_raise_the_outlier_channel() -> None:
    model, x = _outlier_layer()
    w, h = model[0].weight.detach(), x.T @ x
    spec = WeightSpec(4, "per_channel", symmetric=True)
    s, alpha, errors = awq.search_scales([w], h, spec)
    assert alpha is not None and errors[str(alpha)] < errors["none"]
    assert min(errors.values()) == pytest.approx(errors[str(alpha)])
    assert int(s.argmax()) == 3


def test_awq_stores_the_scale_as_the_layer_input_scale_and_values_reconstruct_the_weight() -> None:
    model, x = _outlier_layer()
    ts.quantize_(model, ts.QuantConfig(bits=4, weights="per_group", group_size=32, method="awq"), data=[x])
    layer = model[0]
    assert isinstance(layer, QuantModule)
    v = layer.quantized_values()
    assert v.input_scale is not None and v.zero is not None and v.group_size == 32
    assert v.values.shape == (64, 128) and v.scale.shape == (64, 4)
    assert int(v.values.min()) >= v.qmin and int(v.values.max()) <= v.qmax
    g = torch.arange(128) // v.group_size
    w = (v.values - v.zero[:, g]).float() * v.scale[:, g]
    assert torch.equal(w, layer.weight)


def test_rounding_is_a_deprecated_alias_and_refused_beside_another_method() -> None:
    model, x = _outlier_layer()
    with pytest.warns(DeprecationWarning, match="method"):
        ts.quantize_(model, ts.QuantConfig(bits=4), data=[x], rounding="nearest")
    model, x = _outlier_layer()
    with pytest.raises(UserError, match="give only method"), pytest.warns(DeprecationWarning):
        ts.quantize_(model, ts.QuantConfig(bits=4, method="awq"), data=[x], rounding="gptq")
    with pytest.raises(UserError, match="AWQ"):
        ts.QuantConfig(method="awq", smoothing=0.5)
    with pytest.raises(UserError, match="awq need calibration data"):
        ts.quantize_(_outlier_layer()[0], ts.QuantConfig(bits=4, method="awq"))
