"""The MXNet Gluon LeNet (exported by MXNet's own ONNX exporter, see tests/fixtures/README.md):
imported, it matches MXNet; compressed with a shipped recipe, it still runs in onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import torchslim as ts
from torchslim.cli import main
from torchslim.interop import import_model

ort = pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "mxnet_lenet.onnx"
REFERENCE = np.load(ROOT / "tests" / "fixtures" / "mxnet_lenet_reference.npz")


def test_import_matches_mxnet_outputs_and_accuracy() -> None:
    model = import_model(FIXTURE)
    with torch.no_grad():
        out = model(torch.from_numpy(REFERENCE["inputs"])).numpy()
    assert np.abs(out - REFERENCE["outputs"]).max() < 1e-4
    assert ts.zoo.get("lenet5-digits").evaluate(model) == pytest.approx(
        float(REFERENCE["accuracy"]), abs=1e-9
    )


def _onnx_accuracy(path: Path) -> float:
    data = ts.zoo.get("lenet5-digits").data
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits = session.run(None, {name: data["x_test"].numpy()})[0]
    return float((logits.argmax(1) == data["y_test"].numpy()).mean())


def test_compress_channel_prune_int8_to_onnx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the shipped recipe names the fixture relative to the repository
    out = tmp_path / "run"
    assert main(["compress", "recipes/mxnet-lenet.yaml", "--out", str(out), "--quiet"]) == 0
    dense = float(REFERENCE["accuracy"])
    assert _onnx_accuracy(out / "model.onnx") >= dense - 0.01
    stages = json.loads((out / "report.json").read_text())["stages"]
    assert stages[-1]["params"] < 0.3 * stages[0]["params"]  # half the channels of every layer
    assert stages[-1]["size_bytes"] < 0.1 * stages[0]["size_bytes"]
