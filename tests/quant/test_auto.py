"""The `auto` defaults: GPTQ at 4 bits and below when data is given; smoothing where it measures better."""

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.errors import UserError
from torchslim.quant import auto


def _linear_and_inputs(seed: int = 0) -> tuple[nn.Sequential, torch.Tensor]:
    torch.manual_seed(seed)
    x = torch.randn(512, 64) @ torch.randn(64, 64)  # correlated inputs: where GPTQ helps
    return nn.Sequential(nn.Linear(64, 64)), x


def _error(config: ts.QuantConfig, data: list | None, **options: object) -> tuple[float, dict]:
    model, x = _linear_and_inputs()
    ref = model(x).detach()
    result = ts.quantize_(model, config, data, **options)
    with torch.no_grad():
        return float((model(x) - ref).pow(2).mean()), result.notes()


@pytest.mark.parametrize(
    ("method", "bits", "has_data", "expected"),
    [
        ("auto", 4, True, "gptq"),
        ("auto", 3, True, "gptq"),
        ("auto", 8, True, "nearest"),
        ("auto", 4, False, "nearest"),
        ("rtn", 4, True, "nearest"),
        ("gptq", 8, True, "gptq"),
    ],
)
def test_rounding_for(method: str, bits: int, has_data: bool, expected: str) -> None:
    config = ts.QuantConfig(bits=bits, method=method)  # type: ignore[arg-type]
    assert auto.rounding_for(config, bits, has_data) == expected


def test_default_4_bit_with_data_is_gptq_and_beats_round_to_nearest() -> None:
    _, x = _linear_and_inputs()
    config = ts.QuantConfig(bits=4, weights="per_group", group_size=16)
    default, notes = _error(config, [x])
    rtn, rtn_notes = _error(config.replace(method="rtn"), [x])
    assert notes["linear_rounding"] == {"gptq": 1} and rtn_notes["linear_rounding"] == {"nearest": 1}
    assert default < 0.8 * rtn
    no_data, no_data_notes = _error(config, None)  # nothing to compensate with: plain rounding, no error
    assert no_data_notes["linear_rounding"] == {"nearest": 1} and no_data == pytest.approx(rtn)


def test_rounding_keyword_is_the_old_name_of_method() -> None:
    _, x = _linear_and_inputs()
    config = ts.QuantConfig(bits=4, weights="per_group", group_size=16)
    with pytest.warns(DeprecationWarning):
        assert _error(config, [x], rounding="nearest")[1]["linear_rounding"] == {"nearest": 1}
    with pytest.raises(UserError, match="rounding"), pytest.warns(DeprecationWarning):
        _error(config, [x], rounding="stochastic")
    with pytest.raises(UserError, match="gptq need calibration data"):
        _error(config.replace(method="gptq"), None)


def _outliers(scale: float) -> tuple[nn.Sequential, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(256, 64)
    x[:, 3] *= scale  # one outlier channel, as after LayerNorm in BERT
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)), x


def test_dynamic_int8_smooths_outliers_when_that_measures_better() -> None:
    model, x = _outliers(60.0)
    result = ts.quantize_(model, ts.QuantConfig(activations="dynamic"), [x])
    errors = result.chosen["smoothing_output_error"]
    assert set(errors) == {str(a) for a in auto.SMOOTHING_CHOICES}
    assert result.chosen["smoothing"] > 0 and errors[str(result.chosen["smoothing"])] < 0.5 * errors["0.0"]
    assert result.quantized["0"]["smooth"] is True
    # the float weight a writer reads (hf output, metrics) acts on the raw input: smoothing folded back
    layer = model[0]
    weight = dict(layer.effective_weights())["weight"]
    assert not torch.allclose(layer.smooth, torch.ones_like(layer.smooth))
    layer.set_compute("float")
    with torch.no_grad():
        assert torch.allclose(nn.functional.linear(x, weight, layer.bias), layer(x), atol=1e-4)


def test_smoothing_auto_is_off_without_data_and_for_static_activations() -> None:
    model, x = _outliers(60.0)
    result = ts.quantize_(model, ts.QuantConfig(activations="dynamic"))
    assert "smoothing" not in result.chosen and result.quantized["0"]["smooth"] is False
    model, x = _outliers(60.0)
    result = ts.quantize_(model, ts.QuantConfig(activations="static"), [x])
    assert "smoothing" not in result.chosen and result.quantized["0"]["smooth"] is False


def test_quant_config_checks_method_and_smoothing() -> None:
    with pytest.raises(UserError, match="method"):
        ts.QuantConfig(method="stochastic")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="smoothing"):
        ts.QuantConfig(smoothing=1.5)
    assert ts.QuantConfig.from_dict(ts.QuantConfig(smoothing=0.5).to_dict()).smoothing == 0.5


def _grids(config: ts.QuantConfig, data: list | None) -> dict[str, tuple[bool, int, str]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 128, 8), nn.Linear(8, 8))
    result = ts.quantize_(model, config, data)
    return {n: (p["symmetric"], p["group_size"], p["granularity"]) for n, p in result.quantized.items()}


@pytest.mark.parametrize(
    ("bits", "has_data", "expected"),
    [
        # at 4 bits Linear layers get asymmetric groups of 64 (the 8-input one falls back to per_channel:
        # 64 does not divide 8), the convolution keeps a symmetric grid; at 3 bits all are asymmetric
        (
            4,
            True,
            {"0": (True, 64, "per_channel"), "2": (False, 64, "per_group"), "3": (False, 64, "per_channel")},
        ),
        (
            4,
            False,
            {"0": (True, 64, "per_channel"), "2": (False, 64, "per_group"), "3": (False, 64, "per_channel")},
        ),
        (
            3,
            False,
            {"0": (False, 64, "per_channel"), "2": (False, 64, "per_group"), "3": (False, 64, "per_channel")},
        ),
        (
            8,
            True,
            {
                "0": (True, 128, "per_channel"),
                "2": (True, 128, "per_group"),
                "3": (True, 128, "per_channel"),
            },
        ),
    ],
)
def test_default_grids_by_width_and_rounding(bits: int, has_data: bool, expected: dict) -> None:
    x = torch.randn(16, 2, 130)
    assert _grids(ts.QuantConfig(bits=bits, weights="per_group"), [x] if has_data else None) == expected


def test_explicit_grid_settings_win_over_the_auto_ones() -> None:
    grids = _grids(
        ts.QuantConfig(bits=4, weights="per_group", group_size=32, symmetric=True), [torch.randn(4, 2, 130)]
    )
    assert grids["2"] == (True, 32, "per_group")


def test_default_4_bit_groups_beat_the_old_symmetric_g128_default() -> None:
    torch.manual_seed(0)
    x = (torch.randn(256, 256) @ torch.randn(256, 256)) * torch.rand(256) * 3  # correlated, uneven channels
    errors = {}
    for label, config in {
        "default": ts.QuantConfig(bits=4, weights="per_group"),
        "old": ts.QuantConfig(bits=4, weights="per_group", group_size=128, symmetric=True),
    }.items():
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(256, 64))
        model[0].weight.data += 0.05  # skewed groups: where a zero point pays
        ref = model(x).detach()
        ts.quantize_(model, config, [x])
        with torch.no_grad():
            errors[label] = float((model(x) - ref).pow(2).mean() / ref.pow(2).mean())
    assert errors["default"] < 0.7 * errors["old"]


def _bert() -> nn.Module:
    import transformers

    torch.manual_seed(0)
    sizes = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 64, "max_position_embeddings": 32}  # fmt: skip
    config = transformers.BertConfig(**sizes)
    return transformers.BertModel(config, add_pooling_layer=False).eval()


@pytest.mark.parametrize("auto_tunes", [False, True])
def test_block_tuning_runs_on_an_encoder_stack_and_auto_picks_it_only_when_enabled(
    auto_tunes: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auto, "AUTO_TUNES", auto_tunes)
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randint(0, 64, (2, 12), generator=gen),) for _ in range(3)]
    blocks = ts.QuantConfig(bits=4, weights="per_group", group_size=16, include=("encoder.layer.*",))
    tuned = ts.quantize_(_bert(), blocks.replace(method="gptq+tune"), data)
    assert tuned.chosen["linear_rounding"] == {"gptq+tune": 12}
    assert set(tuned.chosen["block_tuning"]) == {"encoder.layer.0", "encoder.layer.1"}
    result = ts.quantize_(_bert(), blocks, data)
    assert result.chosen["linear_rounding"] == ({"gptq+tune": 12} if auto_tunes else {"gptq": 12})
    everything = ts.quantize_(_bert(), blocks.replace(include=()), data)  # embeddings too: one pass, GPTQ
    assert everything.chosen["linear_rounding"] == {"gptq": 12} and "block_tuning" not in everything.chosen
