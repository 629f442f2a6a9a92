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
from torchslim.quant import CodebookModule
from torchslim.quant.codebook import cluster, kmeans_1d
from torchslim.quant.primitives import sqnr_db
from torchslim.zoo.base import Task


def test_kmeans_linear_init_and_known_clusters() -> None:
    values = torch.tensor([-1.0, -0.9, -1.1, 2.0, 2.1, 1.9, 0.5])
    centroids, idx = kmeans_1d(values, 3)
    assert centroids.tolist() == pytest.approx([-1.0, 0.5, 2.0])
    assert idx.tolist() == [0, 0, 0, 2, 2, 2, 1]
    w = torch.randn(64, 64)
    c4, i4 = kmeans_1d(w, 16)
    assert sqnr_db(w.flatten(), c4[i4]) > 18  # Lloyd-Max 4-bit on a Gaussian is about 20 dB
    assert torch.equal(c4, c4.sort().values)


def test_pruned_zeros_get_fixed_index_zero() -> None:
    torch.manual_seed(0)
    w = torch.randn(32, 32)
    w[torch.rand(32, 32) < 0.9] = 0.0
    centroids, idx, has_zero = cluster(w, 4)
    assert has_zero and float(centroids[0]) == 0.0
    assert bool((idx[w == 0] == 0).all()) and bool((idx[w != 0] != 0).all())
    assert bool((centroids[idx] == 0).eq(w == 0).all())  # zeros exact, and no nonzero weight became 0
    _, _, dense = cluster(torch.randn(8, 8), 2)
    assert not dense


def test_tiny_task_accuracy_size_and_round_trip(tiny_task: Task, tmp_path) -> None:
    model = tiny_task.model()
    before, fp32 = tiny_task.evaluate(model), ts.io.saved_size(model)
    result = ts.quantize_(model, ts.QuantConfig(kind="codebook", bits=4))
    assert isinstance(model.fc1, CodebookModule) and set(result.quantized) == {"fc1", "fc2"}
    assert model.fc1.packed.dtype == torch.uint8 and model.fc1.packed.numel() == 64 * 32 // 2
    assert tiny_task.evaluate(model) >= before - 0.01
    ts.save(model, tmp_path / "m")
    loaded = ts.load(tmp_path / "m")
    x = tiny_task.example_inputs
    assert isinstance(loaded.fc1, CodebookModule) and torch.equal(loaded(x), model(x))
    assert ts.io.disk_size(tmp_path / "m") < 0.3 * fp32  # 4-bit indices, biases in fp32, the manifest


def test_centroid_finetune_sums_gradients_keeps_zero_and_assignments(tiny_task: Task) -> None:
    model = tiny_task.model()
    ts.prune_(model, ts.SparsityConfig(sparsity=0.9))
    ts.quantize_(model, ts.QuantConfig(kind="codebook", bits=3))
    fc1 = model.fc1
    packed, zeros = fc1.packed.clone(), fc1.weight == 0
    weight = fc1.weight
    weight.retain_grad()

    class SameTensor(CodebookModule):  # the forward uses this very tensor, so its grad is kept
        @property
        def weight(self) -> torch.Tensor:
            return weight

    fc1.__class__ = SameTensor
    loss = F.cross_entropy(model(tiny_task.example_inputs), torch.arange(16) % 10)
    loss.backward()
    fc1.__class__ = CodebookModule
    assert fc1.centroids.grad is not None and weight.grad is not None
    expected = torch.zeros(8).scatter_add_(0, fc1.index.flatten(), weight.grad.flatten())
    expected[0] = 0.0  # the fixed zero centroid gets no gradient
    assert torch.allclose(fc1.centroids.grad, expected, atol=1e-6)

    def loss_fn(m: nn.Module, x: Any, y: Any) -> torch.Tensor:
        return F.cross_entropy(call(m, x), y)

    before = tiny_task.evaluate(model)
    fit(model, lambda e: tiny_task.train_loader(seed=e), loss_fn, epochs=2, lr=1e-3)
    assert torch.equal(fc1.packed, packed) and bool((fc1.weight[zeros] == 0).all())
    assert tiny_task.evaluate(model) >= before - 0.01


def test_onnx_export_matches(tiny_task: Task, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = tiny_task.model()
    ts.quantize_(model, ts.QuantConfig(kind="codebook", bits=3))
    x = tiny_task.example_inputs
    path = ts.export_onnx(model, x, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path))
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(out), model(x), atol=1e-5)


def test_recipe_codebook_after_pruning(tmp_path) -> None:
    stages = [
        {"prune": {"kind": "unstructured", "sparsity": 0.7}},
        {"quantize": {"kind": "codebook", "bits": 4}},
        {"finetune": {"epochs": 1, "lr": 0.001}},
    ]
    report = ts.run_recipe({"model": "zoo:tiny-digits", "stages": stages}, tmp_path / "out")
    _, pruned, coded, tuned = report["stages"]
    assert coded["quantized_layers"] == 2 and coded["nonzero_params"] == pruned["nonzero_params"]
    # measured: pruned 0.605 (no fine-tune here), codebook 0.602, centroids tuned 0.615; 6147 -> 2842 bytes
    assert coded["accuracy"] >= pruned["accuracy"] - 0.02 and tuned["accuracy"] >= coded["accuracy"]
    assert coded["size_bytes"] < 0.5 * pruned["size_bytes"] and tuned["size_bytes"] == coded["size_bytes"]


def test_bad_inputs(tiny_task: Task) -> None:
    with pytest.raises(UserError, match="2..8"):
        ts.QuantConfig(kind="codebook", bits=9)
    with pytest.raises(UserError, match="weights only"):
        ts.quantize_(tiny_task.model(), ts.QuantConfig(kind="codebook", activations="dynamic"))
