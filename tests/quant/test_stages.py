from __future__ import annotations

import pytest

import torchslim as ts
from torchslim.errors import UserError
from torchslim.quant.modules import QuantLinear
from torchslim.recipe import parse_recipe


def test_recipe_block_maps_onto_config() -> None:
    recipe = parse_recipe(
        {
            "model": "zoo:tiny-digits",
            "stages": [{"quantize": {"bits": 8, "activations": "static", "calibration": {"batches": 4}}}],
        }
    )
    spec = recipe.stages[0][1]
    config = spec.config()  # type: ignore[attr-defined]
    assert config.activations == "static" and config.calibration == "minmax" and spec.calibration.batches == 4
    with pytest.raises(UserError, match="bits"):
        parse_recipe({"model": "zoo:tiny-digits", "stages": [{"quantize": {"bits": 1}}]})
    with pytest.raises(UserError, match="calibration"):
        parse_recipe(
            {"model": "zoo:tiny-digits", "stages": [{"quantize": {"calibration": {"method": "kl"}}}]}
        )


def test_pipeline_static_int8_onnxruntime(tmp_path) -> None:
    stage = {"bits": 8, "activations": "static", "exclude": ["fc2"], "calibration": {"batches": 2}}
    report = ts.run_recipe(
        {"model": "zoo:tiny-digits", "stages": [{"quantize": {**stage, "runtime": "onnxruntime"}}]},
        tmp_path / "out",
    )
    base, final = report["stages"]
    assert final["runtime"] == "onnxruntime" and not report["speedup_comparable"]
    assert final["baseline_latency_ms_same_runtime"] > 0 and final["speedup_same_runtime"] > 0
    assert final["kept_float"] == {"fc2": "excluded by glob"} and final["quantized_layers"] == 1
    assert final["accuracy"] >= base["accuracy"] - 0.02
    loaded = ts.load(tmp_path / "out" / "model")
    assert isinstance(loaded.fc1, QuantLinear)


def _spec(block: dict) -> object:
    return parse_recipe({"model": "zoo:tiny-digits", "stages": [{"quantize": block}]}).stages[0][1]


def test_stage_defaults_are_auto_and_rounding_is_the_old_name_of_method() -> None:
    spec = _spec({"bits": 4, "weights": "per_group"})
    config = spec.config()  # type: ignore[attr-defined]
    assert (spec.runtime, config.method, config.smoothing) == ("auto", "auto", "auto")  # type: ignore[attr-defined]
    assert spec.needs_data()  # type: ignore[attr-defined]  # 4 bits: GPTQ wants calibration data
    assert not _spec({"bits": 8}).needs_data()  # type: ignore[attr-defined]  # weight-only int8: none needed
    assert _spec({"bits": 8, "activations": "dynamic"}).needs_data()  # type: ignore[attr-defined]
    with pytest.warns(DeprecationWarning, match="rounding is deprecated"):
        assert _spec({"bits": 4, "rounding": "nearest"}).config().method == "rtn"  # type: ignore[attr-defined]
    with pytest.raises(UserError, match="give only method"):
        _spec({"bits": 4, "rounding": "gptq", "method": "awq"})
    assert _spec({"bits": 4, "method": "awq"}).config().method == "awq"  # type: ignore[attr-defined]
    assert _spec({"smoothing": 0.7}).config().smoothing == 0.7  # type: ignore[attr-defined]
    with pytest.raises(UserError, match="smoothing"):
        _spec({"smoothing": 1.5})
