from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.errors import UserError
from torchslim.quant.modules import QuantConv, QuantLinear
from torchslim.zoo.base import Task


def _calib(task: Task, n: int = 4) -> list:
    return [b for _, b in zip(range(n), task.train_loader(seed=1), strict=False)]


@pytest.mark.parametrize(
    ("config", "max_drop"),
    [
        (ts.QuantConfig(bits=8, activations=None), 0.01),
        (ts.QuantConfig(bits=8, activations="dynamic"), 0.01),
        (ts.QuantConfig(bits=8, activations="static", calibration="minmax"), 0.01),
        (ts.QuantConfig(bits=4, weights="per_group", group_size=16), 0.03),
    ],
)
def test_tiny_task_accuracy(tiny_task: Task, config: ts.QuantConfig, max_drop: float) -> None:
    model = tiny_task.model()
    before = tiny_task.evaluate(model)
    result = ts.quantize_(model, config, data=_calib(tiny_task))
    assert isinstance(model.fc1, QuantLinear) and set(result.quantized) == {"fc1", "fc2"}
    assert tiny_task.evaluate(model) >= before - max_drop


@pytest.mark.parametrize("method", ["minmax", "moving_average", "percentile", "mse", "entropy"])
def test_static_every_observer(tiny_task: Task, method: str) -> None:
    model = tiny_task.model()
    before = tiny_task.evaluate(model)
    ts.quantize_(model, ts.QuantConfig(activations="static", calibration=method), data=_calib(tiny_task))
    assert float(model.fc1.in_scale) > 0 and float(model.fc2.out_scale) > 0
    assert tiny_task.evaluate(model) >= before - 0.02


def test_save_load_packed(tiny_task: Task, tmp_path) -> None:
    model = tiny_task.model()
    fp32 = ts.io.saved_size(model)
    ts.quantize_(model, ts.QuantConfig(bits=4, weights="per_group", group_size=16, exclude=["fc2"]))
    ts.save(model, tmp_path / "m")
    loaded = ts.load(tmp_path / "m")
    assert isinstance(loaded.fc1, QuantLinear) and isinstance(loaded.fc2, nn.Linear)
    assert loaded.fc1.qweight.dtype == torch.uint8 and loaded.fc1.qweight.numel() == 64 * 32 // 2
    x = tiny_task.example_inputs
    assert torch.equal(loaded(x), model(x))
    # fc1 holds 2048 of 2378 weights: 4-bit packing plus fp32 group scales, beside safetensors headers
    assert ts.io.saved_size(loaded) < 0.45 * fp32


def test_static_conv_lenet_round_trip(lenet: nn.Module, tmp_path) -> None:
    ts.io.set_source(lenet, "factory", target="conftest:LeNet5")
    calib = [torch.randn(8, 1, 28, 28) for _ in range(3)]
    ref = lenet(calib[0])
    ts.quantize_(lenet, ts.QuantConfig(activations="static"), data=calib)
    assert isinstance(lenet.conv1, QuantConv)
    out = lenet(calib[0])
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.99
    ts.save(lenet, tmp_path / "m")
    assert torch.equal(ts.load(tmp_path / "m", trust_code=True)(calib[0]), out)


def test_gptq_beats_nearest_at_3_bits() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64))
    x = torch.randn(512, 64) @ torch.randn(64, 64)  # correlated inputs: where GPTQ helps
    ref = model(x)
    errs = {}
    for rounding in ("nearest", "gptq"):
        m = nn.Sequential(nn.Linear(64, 64))
        m.load_state_dict(model.state_dict())
        method = {"nearest": "rtn", "gptq": "gptq"}[rounding]
        ts.quantize_(m, ts.QuantConfig(bits=3, method=method), data=[x])  # type: ignore[arg-type]
        with torch.no_grad():
            errs[rounding] = float((m(x) - ref).pow(2).mean())
    assert errs["gptq"] < 0.7 * errs["nearest"]


def test_bad_inputs(tiny_task: Task) -> None:
    with pytest.raises(UserError, match="2..8"):
        ts.QuantConfig(bits=9)
    with pytest.raises(UserError, match="calibration data"):
        ts.quantize_(tiny_task.model(), ts.QuantConfig(activations="static"))
    with pytest.raises(UserError, match="NaN or infinity"):
        ts.quantize_(
            tiny_task.model(), ts.QuantConfig(activations="static"), data=[torch.full((4, 64), torch.nan)]
        )
    with pytest.raises(UserError, match="no quantizable layer"):
        ts.quantize_(nn.Sequential(nn.ReLU()), ts.QuantConfig())
    with pytest.raises(UserError, match="no quantizable layer"):
        ts.quantize_(tiny_task.model(), ts.QuantConfig(exclude=["fc*"]))


def test_unsupported_layer_is_named() -> None:
    model = nn.Sequential(nn.Conv3d(1, 2, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 1, 4, 4, 4))
    result = ts.quantize_(model, ts.QuantConfig())
    assert "Conv3d" in result.kept_float["0"] and "2" in result.quantized


def test_smoothquant_dynamic_beats_plain_on_outlier_channels() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = torch.randn(256, 64)
    x[:, 3] *= 60.0  # one outlier channel, as after LayerNorm in BERT
    ref = lin(x).detach()
    errs = {}
    for alpha in (0.0, 0.7):
        m = nn.Sequential(nn.Linear(64, 32))
        m[0].load_state_dict(lin.state_dict())
        ts.quantize_(m, ts.QuantConfig(activations="dynamic"), data=[x], smoothing=alpha)
        with torch.no_grad():
            errs[alpha] = float((m(x) - ref).pow(2).mean())
    assert errs[0.7] < 0.5 * errs[0.0]


def test_embedding_int4_gather_matches_full_table(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(100, 32))
    ts.io.set_source(model, "factory", target="torch.nn:Identity")  # only the record is needed here
    ts.quantize_(model, ts.QuantConfig(bits=4, weights="per_group", group_size=16))
    ids = torch.randint(0, 100, (3, 7))
    full = model[0].weight[ids]
    assert torch.equal(model(ids), full)  # gathering packed rows == indexing the dequantized table
    assert model[0].qweight.numel() == 100 * 32 // 2


@pytest.mark.parametrize(
    ("config", "qmax"),
    [
        (ts.QuantConfig(activations="static"), 63),  # integer kernels: half grid by default
        (ts.QuantConfig(activations="dynamic"), 63),
        (ts.QuantConfig(activations=None), 127),  # weight-only keeps the full grid
        (ts.QuantConfig(activations="static", reduce_range=False), 127),
    ],
)
def test_reduce_range_default_and_round_trip(tiny_task: Task, tmp_path, config, qmax: int) -> None:
    model = tiny_task.model()
    ts.quantize_(model, config, data=_calib(tiny_task))
    q = model.fc1.int_weight()
    assert int(q.abs().max()) == qmax  # the row maxima land on the grid's end
    ts.save(model, tmp_path / "m")
    loaded = ts.load(tmp_path / "m")
    assert loaded.fc1.spec.qmax == qmax and torch.equal(loaded.fc1.int_weight(), q)


@pytest.mark.parametrize("kind", ["int", "codebook"])
def test_quantized_layers_keep_the_float_layers_attributes(kind: str) -> None:
    """`weight` is a tensor attribute (dequantized) and the size attributes stay: code written for the
    float layers (transformers reads `layer.weight.dtype`, `linear.out_features`) runs on them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 6), nn.Conv1d(6, 4, 3))
    floats = [m.weight.detach().clone() for m in model]
    ts.quantize_(model, ts.QuantConfig(kind=kind, bits=8, weights="per_channel", activations=None))
    sizes = [("num_embeddings", 10, "embedding_dim", 8), ("in_features", 8, "out_features", 6)]
    sizes.append(("in_channels", 6, "out_channels", 4))
    for layer, (a, va, b, vb), ref in zip(model, sizes, floats, strict=True):
        assert not isinstance(layer, (nn.Embedding, nn.Linear, nn.Conv1d))  # replaced
        assert (getattr(layer, a), getattr(layer, b)) == (va, vb)
        w = layer.weight.detach()
        assert isinstance(w, torch.Tensor) and w.dtype == torch.float32 and w.shape == ref.shape
        assert 0 < float((w - ref).abs().max()) < 0.02 * float(ref.abs().max())  # on the grid, near
