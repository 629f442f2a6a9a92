import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.cli import main
from torchslim.errors import UserError
from torchslim.inspect_model import inspect_model, parse_shape


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))


def test_macs_and_effective_macs_under_unstructured_sparsity() -> None:
    model = _net()
    x = torch.zeros(1, 3, 8, 8)
    dense = inspect_model(model, x)
    conv, fc = 8 * 3 * 9 * 36, 288 * 4
    assert dense["macs"] == conv + fc == dense["effective_macs"]
    ts.prune_(model, ts.SparsityConfig(sparsity=0.75, scope="layer"))
    sparse = inspect_model(model, x)
    assert sparse["macs"] == conv + fc
    assert sparse["effective_macs"] == pytest.approx(0.25 * (conv + fc), rel=0.01)
    assert [r["effective_macs"] for r in sparse["layers"]] == [round(conv * 0.25), round(fc * 0.25)]


def test_no_example_inputs_means_no_macs() -> None:
    result = inspect_model(_net(), None)
    assert result["macs"] is None and result["params"] == 8 * 3 * 9 + 8 + 288 * 4 + 4


def test_parse_shape() -> None:
    assert parse_shape("1,3,224,224") == parse_shape("1x3x224x224") == (1, 3, 224, 224)
    with pytest.raises(UserError, match="positive"):
        parse_shape("1,0")
    with pytest.raises(UserError, match="comma-separated"):
        parse_shape("a,b")


def test_cli_inspect_any_model_with_input_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _net()
    ts.prune_(model, ts.SparsityConfig(sparsity=0.5, scope="layer"))
    ts.save(model, tmp_path / "m", factory="tests.test_inspect_model:_net")
    assert main(["inspect", str(tmp_path / "m"), "--input-shape", "1,3,8,8", "--json", "--trust-code"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["macs"] == 8 * 3 * 9 * 36 + 288 * 4
    assert result["effective_macs"] == pytest.approx(result["macs"] / 2, rel=0.01)
    assert (
        main(["inspect", str(tmp_path / "m"), "--input-shape", "1,5,8,8", "--trust-code"]) == 2
    )  # a bad shape: one line
    assert "forward failed" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "m"), "--input-shape", "1,3,8,8", "--trust-code"]) == 0
    assert "effective MACs" in capsys.readouterr().out
