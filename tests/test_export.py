"""ONNX export: the batch axis stays dynamic whatever the example's batch size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.export import _widen

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _run(path: Path, *inputs: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return np.asarray(session.run(None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})[0])


def test_size_one_dynamic_axes_are_traced_at_size_two() -> None:
    x, tokens = torch.randn(1, 3), torch.ones(1, 1, dtype=torch.long)
    widened = _widen((x, tokens, 5), ({0: "batch"}, {0: "batch", 1: "sequence"}, None))
    assert widened[0].shape == (2, 3) and widened[1].shape == (2, 2) and widened[2] == 5
    assert torch.equal(widened[0][1], x[0])
    args = (torch.randn(4, 3),)
    assert _widen(args, ({0: "batch"},)) is args  # nothing to widen: the example itself is traced


@pytest.mark.slow
def test_batch_one_example_exports_a_dynamic_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    path = ts.export_onnx(net, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(_run(path, x), net(x).numpy(), rtol=1e-4, atol=1e-5)


def test_a_model_that_cannot_be_dynamic_exports_static_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = torch.onnx.export

    def pinned(*args: Any, **kwargs: Any) -> Any:  # as the exporter does for code that pins the batch
        if kwargs.get("dynamic_shapes") is not None:
            raise RuntimeError("Constraints violated (batch)!\nmore detail")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", pinned)
    net = nn.Linear(3, 2).eval()
    with pytest.warns(
        UserWarning, match=r"dynamic batch axis \(Constraints violated \(batch\)!\).*\(1, 3\) only"
    ):
        path = ts.export_onnx(net, torch.randn(1, 3), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3]


@pytest.mark.slow
def test_convnext_exports_from_a_batch_one_example(tmp_path: Path) -> None:
    """transformers' ConvNeXt failed with a batch-1 example ("Constraints violated (batch)")."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
    net = transformers.ConvNextForImageClassification(config).eval()
    path = ts.export_onnx(net, torch.randn(1, 3, 32, 32), tmp_path / "convnext.onnx")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(_run(path, x), net(x).logits.numpy(), rtol=1e-4, atol=1e-4)
