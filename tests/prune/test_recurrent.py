"""Recurrent hidden units pruned as one group with the gate rows, the recurrence and the consumers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from recurrent_models import MODELS, X, build
from torchslim.prune.channel import dependency_graph

DROP = [1, 4, 6, 9, 10, 15]  # hidden units given zero weights: the ones magnitude must choose


def _layer(model: nn.Module) -> nn.Module:
    return model.rnn if hasattr(model, "rnn") else model.cell


def _zero_units(model: nn.Module, units: list[int]) -> None:
    """Silence hidden units: every gate row, recurrent column and next-layer column of them, and the
    consumer's columns. Their output is exactly 0 at every step (gates at sigmoid(0), candidate 0)."""
    layer, hidden = _layer(model), _layer(model).hidden_size
    with torch.no_grad():
        for name, p in layer.named_parameters():
            rows = [g * hidden + j for g in range(p.shape[0] // hidden) for j in units]
            p[rows] = 0
            if name.startswith("weight_hh") or (name.startswith("weight_ih") and "_l0" not in name):
                copies = p.shape[1] // hidden
                p[:, [c * hidden + j for c in range(copies) for j in units]] = 0
        copies = model.fc.in_features // hidden
        model.fc.weight[:, [c * hidden + j for c in range(copies) for j in units]] = 0


@pytest.mark.parametrize("name", list(MODELS))
def test_group_spans_gates_recurrence_and_consumer(name: str) -> None:
    model = build(name)
    graph = dependency_graph(model, X, ts.ChannelConfig(ratio=0.5))
    path = "rnn" if hasattr(model, "rnn") else "cell"
    (group,) = [g for g in graph.groups if g.name == path]
    gates = 4 if "lstm" in name else 3
    assert group.units == 16 and len(group.positions[(path, "out")]) == 16 * gates
    assert (path, "hidden") in group.positions and ("fc", "in") in group.positions
    assert (path, "next") in group.positions if name == "lstm2" else True


@pytest.mark.parametrize("name", list(MODELS))
def test_zeroed_units_are_the_ones_cut_and_output_is_unchanged(name: str, tmp_path) -> None:
    model = build(name)
    _zero_units(model, DROP)
    ref = model(X)
    keep = [j for j in range(16) if j not in DROP]
    layer = _layer(model)
    kept_hh = layer.get_parameter(next(n for n, _ in layer.named_parameters() if "weight_hh" in n))
    expect_hh = kept_hh.detach()[:, keep]
    report = ts.prune_(model, ts.ChannelConfig(ratio=6 / 16, importance="l1"), example_inputs=X)
    assert report.units_removed == len(DROP)
    layer = _layer(model)
    assert layer.hidden_size == 10 and model.fc.in_features == model.fc.weight.shape[1]
    hh = layer.get_parameter(next(n for n, _ in layer.named_parameters() if "weight_hh" in n))
    gates = hh.shape[0] // 10
    rows = [g * 16 + j for g in range(gates) for j in keep]
    assert torch.equal(hh, expect_hh[rows])  # exactly the kept units, every gate block, rows and columns
    out = model(X)
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-6)
    ts.save(model, tmp_path / "m")
    loaded = ts.load(tmp_path / "m")
    assert _layer(loaded).hidden_size == 10 and torch.equal(loaded(X), out)


def test_state_from_outside_keeps_units() -> None:
    class Stateful(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell, self.fc = nn.GRUCell(8, 16), nn.Linear(16, 4)

        def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            return self.fc(self.cell(x, h))

    graph = dependency_graph(Stateful(), (X[:, 0], torch.zeros(2, 16)), ts.ChannelConfig(ratio=0.5))
    assert not [g for g in graph.groups if g.name == "cell"]


def test_input_channels_cut_with_their_producer() -> None:
    class Front(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj, self.rnn, self.fc = (
                nn.Linear(8, 12),
                nn.LSTM(12, 16, batch_first=True),
                nn.Linear(16, 4),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.rnn(torch.relu(self.proj(x)))[0])

    torch.manual_seed(0)
    model = Front()
    ts.prune_(model, ts.ChannelConfig(ratio=0.5), example_inputs=X)
    assert (
        model.proj.out_features == 6 and model.rnn.input_size == 6 and model.rnn.weight_ih_l0.shape == (32, 6)
    )
    assert model.rnn.hidden_size == 8 and model(X).shape == (2, 6, 4)
