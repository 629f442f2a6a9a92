"""The LSTM and GRU recurrences written over Linear layers, for quantized recurrent modules.

Gate order is torch's (LSTM: input, forget, cell, output; GRU: reset, update, new), so the Linear
children hold torch's weights as they are. Calling the children (rather than one fused kernel) is what
lets each step's input and hidden state be quantized: in ONNX every step is a DynamicQuantizeLinear ->
MatMulInteger pair over the int8 weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from torchslim.quant.recurrent import QuantCell, QuantRNN


def lstm_step(
    ih: nn.Module, hh: nn.Module, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    i, f, g, o = (ih(x) + hh(h)).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_step(ih: nn.Module, hh: nn.Module, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    xr, xz, xn = ih(x).chunk(3, dim=-1)
    hr, hz, hn = hh(h).chunk(3, dim=-1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


def cell_step(cell: QuantCell, x: torch.Tensor, hx: Any) -> Any:
    """nn.LSTMCell / nn.GRUCell semantics: batched or unbatched input, zero state when `hx` is None."""
    unbatched = x.dim() == 1
    x = x.unsqueeze(0) if unbatched else x
    zeros = x.new_zeros(x.shape[0], cell.hidden_size)
    if cell.mode == "LSTMCell":
        h, c = (zeros, zeros) if hx is None else hx
        if unbatched:
            h, c = h.unsqueeze(0), c.unsqueeze(0)
        h, c = lstm_step(cell.ih, cell.hh, x, h, c)
        return (h.squeeze(0), c.squeeze(0)) if unbatched else (h, c)
    h = zeros if hx is None else (hx.unsqueeze(0) if unbatched else hx)
    h = gru_step(cell.ih, cell.hh, x, h)
    return h.squeeze(0) if unbatched else h


def run_sequence(rnn: QuantRNN, x: torch.Tensor, hx: Any) -> Any:
    """nn.LSTM / nn.GRU semantics (layers, directions, batch_first, unbatched input) over the children."""
    unbatched = x.dim() == 2
    x = x.unsqueeze(1) if unbatched else (x.transpose(0, 1) if rnn.batch_first else x)  # -> [T, B, in]
    dirs = 2 if rnn.bidirectional else 1
    lstm = rnn.mode == "LSTM"
    h0, c0 = _initial_state(rnn, x, hx, dirs, unbatched)
    hs, cs = [], []
    for layer in range(rnn.num_layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            suffix = f"l{layer}" + ("_reverse" if d else "")
            ih, hh = getattr(rnn, f"ih_{suffix}"), getattr(rnn, f"hh_{suffix}")
            seq, h, c = _direction(ih, hh, x, h0[k], c0[k] if lstm else None, reverse=bool(d))
            outs.append(seq)
            hs.append(h)
            cs.append(c)
        x = torch.cat(outs, dim=-1) if dirs > 1 else outs[0]
    out = x.squeeze(1) if unbatched else (x.transpose(0, 1) if rnn.batch_first else x)
    h_n = torch.stack(hs)
    h_n = h_n.squeeze(1) if unbatched else h_n
    if not lstm:
        return out, h_n
    c_n = torch.stack(cs)  # type: ignore[arg-type]
    return out, (h_n, c_n.squeeze(1) if unbatched else c_n)


def _initial_state(
    rnn: QuantRNN, x: torch.Tensor, hx: Any, dirs: int, unbatched: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    zeros = x.new_zeros(rnn.num_layers * dirs, x.shape[1], rnn.hidden_size)
    if hx is None:
        return zeros, zeros
    h, c = hx if rnn.mode == "LSTM" else (hx, zeros)
    if unbatched:
        h, c = h.unsqueeze(1), (c.unsqueeze(1) if rnn.mode == "LSTM" else c)
    return h, c


def _direction(
    ih: nn.Module, hh: nn.Module, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None, reverse: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    out: list[torch.Tensor] = [x[0]] * x.shape[0]
    for t in steps:
        if c is None:
            h = gru_step(ih, hh, x[t], h)
        else:
            h, c = lstm_step(ih, hh, x[t], h, c)
        out[t] = h
    return torch.stack(out), h, c
