from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchslim as ts
from torchslim.data import call
from torchslim.distill.trainer import fit
from torchslim.errors import UserError
from torchslim.quant import FakeQuant, convert_
from torchslim.quant.modules import QuantLinear
from torchslim.recipe import parse_recipe
from torchslim.zoo.base import Task


def _train(model: nn.Module, task: Task, epochs: int = 2) -> None:
    def loss(m: nn.Module, x: Any, y: Any) -> torch.Tensor:
        return F.cross_entropy(call(m, x), y)

    fit(model, lambda e: task.train_loader(seed=e), loss, epochs=epochs, lr=1e-3)


def _narrow(task: Task) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """An 8-unit MLP: small enough that 4-bit rounding costs accuracy (the 32-unit one does not mind)."""
    torch.manual_seed(0)
    model = task.make(width=0.25)
    task.train_baseline(model)  # type: ignore[attr-defined]
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def test_qat_4bit_recovers_more_than_ptq(tiny_task: Task) -> None:
    fp, state = _narrow(tiny_task)
    acc_fp = tiny_task.evaluate(fp.eval())
    # the symmetric grid of the old default, where PTQ loses (the asymmetric 4-bit default loses less)
    config = ts.QuantConfig(bits=4, weights="per_tensor", symmetric=True)
    ptq = tiny_task.make(width=0.25)
    ptq.load_state_dict(state)
    ts.quantize_(ptq, config)
    qat = tiny_task.make(width=0.25)
    qat.load_state_dict(state)
    ts.quantize_(qat, config, qat=True)
    assert isinstance(qat.fc1, FakeQuant)
    _train(qat, tiny_task)
    fake = qat(tiny_task.example_inputs)
    convert_(qat)
    assert isinstance(qat.fc1, QuantLinear) and qat.fc1.bits == 4
    assert torch.allclose(qat(tiny_task.example_inputs), fake, atol=1e-5)  # trained grid == stored grid
    acc_ptq, acc_qat = tiny_task.evaluate(ptq), tiny_task.evaluate(qat)
    # measured: fp32 0.733, PTQ 0.683, QAT 0.741
    assert acc_ptq <= acc_fp - 0.03 and acc_qat >= acc_ptq + 0.04 and acc_qat >= acc_fp - 0.01


@pytest.mark.slow
def test_qat_2bit_beats_finetune_then_ptq(tiny_task: Task) -> None:
    """The gain is QAT's, not extra training's: the same training in float, then PTQ, does much worse."""
    config = ts.QuantConfig(bits=2)
    qat, control = tiny_task.model(), tiny_task.model()
    ts.quantize_(qat, config, qat=True)
    _train(qat, tiny_task, epochs=3)
    convert_(qat)
    _train(control, tiny_task, epochs=3)
    ts.quantize_(control, config)
    # measured: QAT 0.844, float fine-tune + PTQ 0.683
    assert tiny_task.evaluate(qat) >= tiny_task.evaluate(control) + 0.1


def test_static_activations_and_save_load_both_forms(tiny_task: Task, tmp_path) -> None:
    model = tiny_task.model()
    calib = tiny_task.calibration_loader(2)
    ts.quantize_(model, ts.QuantConfig(bits=4, activations="static"), calib, qat=True)
    lo, hi = model.fc1.out_range.tolist()
    assert lo < 0 < hi
    model.train()
    model(tiny_task.example_inputs * 10)  # training forward moves the tracked range
    assert model.fc1.out_range[1] > hi
    model.eval()
    x = tiny_task.example_inputs
    ts.save(model, tmp_path / "fq")
    loaded = ts.load(tmp_path / "fq")
    assert isinstance(loaded.fc1, FakeQuant) and torch.equal(loaded(x), model(x))
    convert_(loaded)
    assert float(loaded.fc1.out_scale) == pytest.approx(float(model.fc1.out_range.diff()) / 255, rel=1e-4)
    ts.save(loaded, tmp_path / "int")
    again = ts.load(tmp_path / "int")
    assert isinstance(again.fc1, QuantLinear) and torch.equal(again(x), loaded(x))
    assert ts.io.disk_size(tmp_path / "int") < 0.5 * ts.io.disk_size(tmp_path / "fq")


def test_qat_keeps_pruned_weights_zero(tiny_task: Task, tmp_path) -> None:
    model = tiny_task.model()
    ts.prune_(model, ts.SparsityConfig(sparsity=0.8, scope="layer"))
    ts.quantize_(model, ts.QuantConfig(bits=4), qat=True)
    _train(model, tiny_task, epochs=1)
    ts.save(model, tmp_path / "m")
    loaded = ts.load(tmp_path / "m")  # masks replay first, then the wrappers
    pruned = ~model.fc1.layer.parametrizations.weight[0].mask
    assert float(pruned.float().mean()) == pytest.approx(0.8, abs=0.01)
    convert_(loaded)
    assert bool((loaded.fc1.weight[pruned] == 0).all())


def test_recipe_qat_then_convert(tmp_path) -> None:
    stages = [
        {"quantize": {"bits": 4, "qat": True}},
        {"finetune": {"epochs": 1}},
        {"quantize": {"convert": True}},
    ]
    report = ts.run_recipe({"model": "zoo:tiny-digits", "stages": stages}, tmp_path / "out")
    base, *_, final = report["stages"]
    assert final["converted"] and final["quantized_layers"] == 2
    assert final["size_bytes"] < 0.35 * base["size_bytes"] and final["accuracy"] >= base["accuracy"] - 0.02
    assert isinstance(ts.load(tmp_path / "out" / "model").fc1, QuantLinear)


def test_bad_inputs(tiny_task: Task) -> None:
    with pytest.raises(UserError, match="fake-quant"):
        convert_(tiny_task.model())
    with pytest.raises(UserError, match="codebook"):
        ts.quantize_(tiny_task.model(), ts.QuantConfig(kind="codebook"), qat=True)
    with pytest.raises(UserError, match="calibration data"):
        ts.quantize_(tiny_task.model(), ts.QuantConfig(activations="static"), qat=True)
    with pytest.raises(UserError, match="convert"):
        parse_recipe({"model": "zoo:tiny-digits", "stages": [{"quantize": {"convert": True, "bits": 4}}]})
