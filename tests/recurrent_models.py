"""Tiny recurrent models (LSTM/GRU, layers and directions, unrolled cells) for quant and prune tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

import torchslim as ts


class Sequence(nn.Module):
    def __init__(self, kind: type[nn.LSTM] | type[nn.GRU] = nn.LSTM, **options: object) -> None:
        super().__init__()
        self.rnn = kind(8, 16, batch_first=True, **options)  # type: ignore[arg-type]
        self.fc = nn.Linear(16 * (2 if options.get("bidirectional") else 1), 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.fc(y)


class Cells(nn.Module):
    def __init__(self, kind: type[nn.LSTMCell] | type[nn.GRUCell] = nn.LSTMCell) -> None:
        super().__init__()
        self.cell, self.fc, self.lstm = kind(8, 16), nn.Linear(16, 4), kind is nn.LSTMCell

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state, outs = None, []
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
            outs.append(self.fc(state[0] if self.lstm else state))
        return torch.stack(outs, 1)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "lstm2": lambda: Sequence(nn.LSTM, num_layers=2),
    "gru-bi": lambda: Sequence(nn.GRU, bidirectional=True),
    "lstm-cell": lambda: Cells(nn.LSTMCell),
    "gru-cell": lambda: Cells(nn.GRUCell),
}
for _name, _factory in MODELS.items():
    ts.register_model(f"test-recurrent-{_name}", _factory, replace=True)


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    ts.io.set_source(model, "registered", name=f"test-recurrent-{name}", kwargs={})
    return model


X = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(1))
