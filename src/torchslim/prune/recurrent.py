"""Structural pruning of recurrent layers: nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell lose hidden units.

One hidden unit `j` is the rows `j, H+j, 2H+j, ...` of every gate block (4 for an LSTM, 3 for a GRU)
of each input-to-hidden and hidden-to-hidden weight and bias, column `j` of each hidden-to-hidden
weight (the recurrence feeds the unit back), the next layer's input column(s) in a multi-layer module,
and channel `j` of the output and state, so whatever consumes the output is narrowed with it. The
tensor sides (roles) the graph records:
- `out`: gate rows, positions tiled once per gate block (a cut keeps whole units);
- `hidden`: the hidden-to-hidden weights' columns;
- `next`: layers 1.. input columns (one copy of the units per direction);
- `in`: the first layer's input columns (whatever produced the input is cut there).
torch's modules hold one `hidden_size` for every layer and direction, so all of them share one set of
units: unit `j` goes from every layer at once. A state passed in from outside (a model input) keeps the
units whole; a state carried from one cell call to the next (an unrolled loop) unifies them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from torchslim.prune.graph import Chan
from torchslim.prune.layers import LayerRule, register_layer

if TYPE_CHECKING:
    from torchslim.prune.flow import Analyzer, Out

_WEIGHT = re.compile(r"^(weight|bias)_(ih|hh)(_l(\d+))?(_reverse)?$")


def gates(module: nn.Module) -> int:
    return 4 if isinstance(module, (nn.LSTM, nn.LSTMCell)) else 3


def role_dims(module: nn.Module, role: str) -> dict[str, int]:
    """Tensor name -> pruned dim for one role (see the module docstring)."""
    out: dict[str, int] = {}
    for name, _ in module.named_parameters(recurse=False):
        m = _WEIGHT.match(name)
        if m is None:
            continue
        kind, side, layer = m.group(1), m.group(2), int(m.group(4) or 0)
        if role == "out":
            out[name] = 0
        elif (
            (role == "hidden" and kind == "weight" and side == "hh")
            or (role == "next" and kind == "weight" and side == "ih" and layer > 0)
            or (role == "in" and kind == "weight" and side == "ih" and layer == 0)
        ):
            out[name] = 1
    return out


def set_role(module: Any, role: str, n: int) -> None:
    if role == "out":
        module.hidden_size = n // gates(module)
    elif role == "in":
        module.input_size = n
    if isinstance(module, nn.RNNBase):
        module._init_flat_weights()


def _state_chans(an: Analyzer, n: fx.Node) -> list[tuple[Chan | None, int]]:
    """The state argument (`hx`) flattened to one entry per tensor: (its channels or None, its ndim)."""
    raw = n.args[1] if len(n.args) > 1 else n.kwargs.get("hx")
    found: list[Any] = []
    fx.node.map_aggregate(raw, lambda a: found.append(a) or a)  # type: ignore[func-returns-value]
    out: list[tuple[Chan | None, int]] = []
    for a in found:
        value, c = an.value(a), an.chan.get(a) if isinstance(a, fx.Node) else None
        values = list(value) if isinstance(value, (tuple, list)) else [value]
        chans = c if isinstance(c, list) else [c] * len(values)
        for v, ch in zip(values, chans, strict=False):
            if isinstance(v, torch.Tensor):
                out.append((ch if isinstance(ch, Chan) else None, v.ndim))
    return out


def recurrent_flow(an: Analyzer, n: fx.Node, module: nn.Module, out: Any) -> Out:
    path = str(n.target)
    x = n.args[0] if n.args else n.kwargs["input"]
    xv = an.value(x)
    hidden, g = int(module.hidden_size), gates(module)  # type: ignore[arg-type]
    dirs = 2 if getattr(module, "bidirectional", False) else 1
    layers = int(getattr(module, "num_layers", 1))
    prior = an.records.get((path, "out"))
    units = prior[:hidden] if prior is not None else an.uf.new(hidden, produced=True)
    an.record((path, "out"), np.tile(units, g))
    an.record((path, "hidden"), units)
    if layers > 1:
        an.record((path, "next"), np.tile(units, dirs))
    an.record((path, "in"), an.ids_at(x, xv.ndim - 1))
    for c, ndim in _state_chans(an, n):
        if c is not None and len(c.ids) == hidden and c.dim == ndim - 1:
            an.uf.union(units, c.ids)  # the state carried over from a previous call
        else:
            an.freeze(units)  # a state from outside (or one we do not follow) keeps the units
            if c is not None:
                an.freeze(c.ids)
    if path in an.protected:
        an.freeze(units)
    return _outputs(module, out, units, dirs)


def _outputs(module: nn.Module, out: Any, units: np.ndarray, dirs: int) -> Out:
    def state(t: torch.Tensor) -> Chan:
        return Chan(units, t.ndim - 1)

    if isinstance(module, nn.GRUCell):
        return state(out)
    if isinstance(module, nn.LSTMCell):
        return [state(out[0]), state(out[1])]
    seq, h = out
    first = Chan(np.tile(units, dirs), seq.ndim - 1)
    return [first, [state(h[0]), state(h[1])]] if isinstance(module, nn.LSTM) else [first, state(h)]


register_layer(
    "LSTM",
    "GRU",
    "LSTMCell",
    "GRUCell",
    rule=LayerRule(
        out_dims=lambda m: role_dims(m, "out"),
        in_dims=lambda m: role_dims(m, "in"),
        act_dim=-1,
        kind=lambda m: "opaque" if getattr(m, "proj_size", 0) else "producer",
        role_dims=role_dims,
        set_role=set_role,
        flow=recurrent_flow,
    ),
)
