"""Quantized ONNX graphs in: QDQ and QLinear* models become torchslim quantized layers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchslim as ts
from torchslim.interop import import_model
from torchslim.interop.onnx_import import convert
from torchslim.quant.modules import QuantConv, QuantLinear, QuantModule

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
helper, TP, numpy_helper = onnx.helper, onnx.TensorProto, onnx.numpy_helper
node = helper.make_node
rng = np.random.default_rng(0)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3), nn.Conv2d(8, 16, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(16 * 5 * 5, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x)).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


def _ort(path_or_model: Any, *feeds: np.ndarray, fuse: bool = True) -> np.ndarray:
    """onnxruntime's output; `fuse=False` runs the graph as written (no QLinear fusion): onnxruntime's
    x86 u8s8 kernels without VNNI saturate pairs of products on full-range int8 weights."""
    data = path_or_model if isinstance(path_or_model, str) else path_or_model.SerializeToString()
    options = ort.SessionOptions()
    if not fuse:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return np.asarray(session.run(None, dict(zip(names, feeds, strict=True)))[0])


def _quantized(activations: str | None) -> tuple[Net, torch.Tensor]:
    torch.manual_seed(0)
    net, data = Net().eval(), [torch.randn(4, 1, 12, 12) for _ in range(3)]
    ts.quantize_(net, ts.QuantConfig(bits=8, activations=activations), data=data)
    return net, data[0]


def _layers(model: nn.Module) -> dict[str, QuantModule]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantModule)}


def _same_integers(a: QuantModule, b: QuantModule) -> None:
    assert type(a) is type(b) and a.activations == b.activations
    assert torch.equal(a.int_weight(), b.int_weight())
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    if a.activations == "static":
        for name in ("in_scale", "in_zero", "out_scale", "out_zero"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.fixture(scope="module")
def static_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Net, torch.Tensor, Path]:
    net, x = _quantized("static")
    path = ts.export_onnx(net, x, tmp_path_factory.mktemp("q") / "static.onnx")
    return net, x, path


def test_static_int8_export_imports_as_the_same_quantized_layers(
    static_export: tuple[Net, torch.Tensor, Path],
) -> None:
    net, x, path = static_export
    imported = import_model(path)
    layers = _layers(imported)
    assert sorted(layers) == ["conv1", "conv2", "fc1", "fc2"]  # named after the exported weights
    for name, layer in layers.items():
        _same_integers(getattr(net, name), layer)
    with torch.no_grad():
        ours, original = imported(x).numpy(), net(x).numpy()
    np.testing.assert_allclose(ours, _ort(str(path), x.numpy()), rtol=0, atol=1e-6)  # what the file computes
    # the file holds the bias on the int32 grid (input scale x weight scale), the eager layer in float:
    # a sum rounded a hair differently may land one output step away
    step = float(net.fc2.out_scale)
    assert np.abs(ours - original).max() <= step * 1.001
    assert np.mean(ours == original) > 0.8


@pytest.mark.slow
def test_static_int8_round_trip_saves_reloads_and_exports_the_same_file(
    static_export: tuple[Net, torch.Tensor, Path], tmp_path: Path
) -> None:
    _, x, path = static_export
    imported = import_model(path)
    saved = ts.save(imported, tmp_path / "m")
    reloaded = ts.load(saved)
    with torch.no_grad():
        assert torch.equal(reloaded(x), imported(x))
    for name, layer in _layers(reloaded).items():
        _same_integers(_layers(imported)[name], layer)
    again = ts.export_onnx(reloaded, x, tmp_path / "again.onnx")
    np.testing.assert_array_equal(_ort(str(again), x.numpy()), _ort(str(path), x.numpy()))


@pytest.mark.slow
def test_weight_only_int8_export_round_trips(tmp_path: Path) -> None:
    net, x = _quantized(None)
    path = ts.export_onnx(net, x, tmp_path / "w8.onnx")
    imported = import_model(path)
    for name, layer in _layers(imported).items():
        _same_integers(getattr(net, name), layer)
    with torch.no_grad():
        torch.testing.assert_close(imported(x), net(x), rtol=1e-5, atol=1e-5)


def _qdq_conv(weight: np.ndarray, zero: np.ndarray) -> Any:
    """Q/DQ around a conv whose weight is DequantizeLinear of int8 with per-channel zero points."""
    inits = {
        "xs": np.array(0.05, np.float32),
        "xz": np.array(128, np.uint8),
        "w": weight,
        "ws": np.abs(rng.standard_normal(weight.shape[0])).astype(np.float32) * 0.01 + 0.01,
        "wz": zero,
        "ys": np.array(0.02, np.float32),
        "yz": np.array(100, np.uint8),
    }
    nodes = [
        node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
        node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
        node("QuantizeLinear", ["c", "ys", "yz"], ["cq"]),
        node("DequantizeLinear", ["cq", "ys", "yz"], ["y"]),
    ]
    return _graph(nodes, {"x": [2, 3, 6, 6]}, inits)


def _graph(nodes: list[Any], inputs: dict[str, list[int]], inits: dict[str, np.ndarray], out: int = 1) -> Any:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(k, TP.FLOAT, s) for k, s in inputs.items()],
        [helper.make_tensor_value_info("y", out, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("grid", ["symmetric", "full int8 range, zero points"])
def test_qdq_conv_becomes_a_static_quantized_conv(grid: str) -> None:
    weight = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    zero = np.zeros(4, np.int8)
    if grid != "symmetric":  # -128 and nonzero zero points: stored on the uint8 grid, same values
        weight[0, 0, 0, 0], zero = -128, np.array([0, 3, -5, 1], np.int8)
    model = _qdq_conv(weight, zero)
    module = convert(model)
    (layer,) = _layers(module).values()
    assert isinstance(layer, QuantConv) and layer.activations == "static"
    assert layer.spec.symmetric == (grid == "symmetric")
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _ort(model, x, fuse=False), rtol=0, atol=1e-6)


def test_qlinear_conv_and_matmul_match_onnxruntime_integers() -> None:
    inits = {
        "xs": np.array(0.04, np.float32),
        "xz": np.array(120, np.uint8),
        "w": rng.integers(-63, 64, (4, 2, 3, 3)).astype(np.int8),  # no int16 saturation (see _ort)
        "ws": np.array([0.01, 0.02, 0.015, 0.03], np.float32),
        "wz": np.zeros(4, np.int8),
        "cs": np.array(0.05, np.float32),
        "cz": np.array(128, np.uint8),
        "bias": rng.integers(-500, 500, 4).astype(np.int32),
        "m": rng.integers(-63, 64, (4, 3)).astype(np.int8),
        "ms": np.array(0.02, np.float32),
        "mz": np.array(0, np.int8),
        "ys": np.array(0.1, np.float32),
        "yz": np.array(128, np.uint8),
    }
    nodes = [
        node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        node(
            "QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "cs", "cz", "bias"], ["cq"], pads=[1, 1, 1, 1]
        ),
        node("Transpose", ["cq"], ["t"], perm=[0, 2, 3, 1]),
        node("QLinearMatMul", ["t", "cs", "cz", "m", "ms", "mz", "ys", "yz"], ["y"]),
    ]
    model = _graph(nodes, {"x": [2, 2, 5, 5]}, inits, out=TP.UINT8)
    module = convert(model)
    assert sorted(type(m).__name__ for m in _layers(module).values()) == ["QuantConv", "QuantLinear"]
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    expected = _ort(model, x)
    assert got.dtype == np.uint8
    diff = np.abs(got.astype(np.int32) - expected.astype(np.int32))
    assert diff.max() <= 1 and np.mean(diff == 0) > 0.95  # integer kernels round the requantization apart


def test_dynamic_quantize_and_integer_matmul_match_onnxruntime() -> None:
    inits = {"w": rng.integers(-63, 64, (6, 4)).astype(np.int8), "s": np.array(0.01, np.float32)}  # see _ort
    nodes = [
        node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        node("MatMulInteger", ["xq", "w", "xz"], ["acc"]),
        node("Cast", ["acc"], ["f"], to=TP.FLOAT),
        node("Mul", ["xs", "s"], ["scale"]),
        node("Mul", ["f", "scale"], ["y"]),
    ]
    model = _graph(nodes, {"x": [3, 6]}, inits)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    with torch.no_grad():
        got = convert(model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _ort(model, x), rtol=1e-6, atol=1e-6)


def test_quantized_linear_layers_are_kept_as_quantlinear(
    static_export: tuple[Net, torch.Tensor, Path],
) -> None:
    _, _, path = static_export
    kinds = {n: type(m) for n, m in _layers(import_model(path)).items()}
    assert kinds == {"conv1": QuantConv, "conv2": QuantConv, "fc1": QuantLinear, "fc2": QuantLinear}
