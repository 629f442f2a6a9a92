"""Static int8 CNNs export so that onnxruntime fuses them as fully as its own quantize_static output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchslim as ts
from torchslim.quant import flow
from torchslim.quant.modules import QuantConv


class Net(nn.Module):
    """Conv-BN-ReLU-MaxPool, Conv-BN-ReLU, Flatten, Linear-ReLU-Linear: the zoo CNNs' patterns."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.fc1, self.fc2 = nn.Linear(16 * 3 * 3, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = F.relu(self.bn2(self.conv2(x))).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


def _net() -> tuple[Net, list[torch.Tensor]]:
    torch.manual_seed(0)
    net = Net()
    for bn in (net.bn1, net.bn2):  # non-trivial statistics, as after training
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return net.eval(), [torch.randn(8, 1, 12, 12) for _ in range(4)]


def test_batchnorm_folds_exactly_in_float() -> None:
    net, data = _net()
    ref = net(data[0])
    folded = flow.fold_batchnorm(net, {"conv1": net.conv1, "conv2": net.conv2}, data[0])
    assert folded == {"conv1": "bn1", "conv2": "bn2"} and isinstance(net.bn1, nn.Identity)
    torch.testing.assert_close(net(data[0]), ref, atol=1e-5, rtol=1e-5)


def test_no_fold_or_shared_grid_when_the_output_goes_elsewhere() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn, self.conv2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.conv2(F.relu(self.bn(y))) + y  # conv's output also feeds the addition

    model, x = Residual().eval(), torch.randn(2, 4, 5, 5)
    result = ts.quantize_(model, ts.QuantConfig(activations="static"), data=[x])
    assert isinstance(model.bn, nn.BatchNorm2d) and "folded_bn" not in result.quantized["conv"]
    assert "out_grid" not in result.quantized["conv"]


def test_static_cnn_graph_fuses_like_onnxruntime_quantizer(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from torchslim.metrics.runtimes import ort_feed, ort_session

    net, data = _net()
    ref = net(data[0])
    result = ts.quantize_(net, ts.QuantConfig(bits=8, activations="static"), data=data)
    assert {n: p.get("out_grid") for n, p in result.quantized.items()} == {
        "conv1": "conv2",  # through ReLU and MaxPool
        "conv2": "fc1",  # through ReLU and flatten
        "fc1": "fc2",
        "fc2": None,
    }
    assert result.quantized["conv1"]["folded_bn"] == "bn1" and isinstance(net.conv1, QuantConv)
    assert net.conv1.out_scale == net.conv2.in_scale and int(net.conv1.out_zero) == 0  # ReLU: zero point 0
    out = net(data[0])
    assert F.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.99

    path = ts.export_onnx(net, data[0], tmp_path / "q.onnx")
    exported = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "BatchNormalization" not in exported
    session = ort_session(path)  # and what onnxruntime actually runs:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert ops.count("QLinearConv") == 2 and ops.count("QGemm") == 2, ops
    assert not {"Conv", "Gemm", "MatMul", "Relu", "MaxPool", "BatchNormalization"} & set(ops), ops
    assert ops.count("DequantizeLinear") == 1 and ops[-1] == "DequantizeLinear", ops  # only the output
    got = session.run(None, ort_feed(session, data[0]))[0]
    np.testing.assert_allclose(got, out.detach().numpy(), atol=0.05 * float(out.detach().abs().max()))

    ts.io.set_source(net, "factory", target=f"{__name__}:_fresh")
    ts.save(net, tmp_path / "m")
    loaded = ts.load(
        tmp_path / "m", trust_code=True
    )  # the fold replays: Identity in place of BatchNorm, conv with bias
    assert isinstance(loaded.bn1, nn.Identity) and torch.equal(loaded(data[0]), out)


def _fresh() -> Net:
    return _net()[0]
