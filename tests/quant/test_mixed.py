from __future__ import annotations

import pytest

import torchslim as ts
from torchslim.errors import UserError
from torchslim.quant import CodebookModule
from torchslim.quant.mixed import allocate
from torchslim.quant.modules import QuantLinear
from torchslim.zoo.base import Task


def test_allocate_prefers_cheap_losses_and_meets_budget() -> None:
    costs = {
        "big": {8: 0.0, 4: 0.01, 2: 0.05},
        "small": {32: 0.0, 8: 0.2, 4: 0.5, 2: 1.0},
    }
    sizes = {"big": 1000, "small": 10}
    bits = allocate(costs, sizes, target=4.5 / 32)
    assert bits == {"big": 4, "small": 32}  # the sensitive small layer stays float, the big one pays
    assert sum(sizes[n] * b for n, b in bits.items()) <= 4.5 / 32 * 32 * 1010
    assert allocate(costs, sizes, target=0.07)["big"] == 2
    with pytest.raises(UserError, match="size_target"):
        allocate(costs, sizes, target=0.01)


def test_tiny_task_size_target(tiny_task: Task) -> None:
    model = tiny_task.model()
    before = tiny_task.evaluate(model)
    config = ts.QuantConfig(size_target=3.5 / 32, bit_choices=(8, 4, 3, 2))
    result = ts.quantize_(model, config, tiny_task.calibration_loader(4))
    assert set(result.bits) == {"fc1", "fc2"} and set(result.sensitivity["fc1"]) == {"8", "4", "3", "2"}
    sizes = {"fc1": 64 * 32, "fc2": 32 * 10}
    assert sum(sizes[n] * b for n, b in result.bits.items()) <= 3.5 * sum(sizes.values())
    assert result.sensitivity["fc1"]["2"] > result.sensitivity["fc1"]["8"]  # narrower grids hurt more
    assert isinstance(model.fc1, QuantLinear) and model.fc1.bits == result.bits["fc1"]
    assert result.notes()["bits"] == result.bits
    assert tiny_task.evaluate(model) >= before - 0.05


def test_float_choice_and_codebook_kind(tiny_task: Task) -> None:
    model = tiny_task.model()
    config = ts.QuantConfig(kind="codebook", size_target=0.3, bit_choices=(32, 4, 2))
    result = ts.quantize_(model, config, tiny_task.calibration_loader(4))
    # 30% of fp32 fits fc2 (320 weights) in float with fc1 (2048) at 4 bits; measured losses: fc1 4-bit
    # +0.0028, 2-bit +0.021; fc2 4-bit +0.0041, 2-bit +0.033
    assert result.bits == {"fc1": 4, "fc2": 32}
    assert result.kept_float == {"fc2": "kept in float by measured sensitivity"}
    assert isinstance(model.fc1, CodebookModule) and not isinstance(model.fc2, CodebookModule)


def test_recipe_notes_bits(tmp_path) -> None:
    stage = {"size_target": 0.125, "bit_choices": [8, 4, 2], "calibration": {"batches": 2}}
    report = ts.run_recipe({"model": "zoo:tiny-digits", "stages": [{"quantize": stage}]}, tmp_path / "out")
    final = report["stages"][-1]
    assert set(final["bits"]) == {"fc1", "fc2"} and final["quantized_layers"] == 2


def test_bad_inputs(tiny_task: Task) -> None:
    with pytest.raises(UserError, match="size_target"):
        ts.QuantConfig(size_target=1.5)
    with pytest.raises(UserError, match="bit_choices"):
        ts.QuantConfig(bit_choices=(16,))
    with pytest.raises(UserError, match="calibration data"):
        ts.quantize_(tiny_task.model(), ts.QuantConfig(size_target=0.2))
