"""Quantized recurrent layers: nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell with int8 weight matrices.

Each weight matrix (input-to-hidden and hidden-to-hidden, per layer and direction) becomes a child
`QuantLinear` holding its bias: rows are gate units, so `per_channel` means one scale per gate row, and
saving, loading, `compute="float"` and the ONNX lowering of Linear all apply to it unchanged.

- weight-only (`activations=None`): the float recurrent kernel (torch's fused LSTM/GRU; in ONNX the
  `LSTM`/`GRU` operator) on the weights dequantized, so the deployed op is the runtime's own;
- `dynamic`: the recurrence is unrolled over the quantized Linear children, so each step's input and
  hidden state are quantized on their own range (ONNX: DynamicQuantizeLinear -> MatMulInteger per
  step, integer kernels in onnxruntime). Cells are always computed this way (they are one step).
onnxruntime has no static int8 LSTM/GRU kernel, so `static` configs quantize recurrent layers
`dynamic`; the choice is recorded per layer like any other.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.func import functional_call

from torchslim.quant.modules import QuantLinear, QuantModule
from torchslim.quant.primitives import WeightSpec
from torchslim.registry import Registry

SEQUENCE = (nn.LSTM, nn.GRU)
CELLS = (nn.LSTMCell, nn.GRUCell)
TYPES = SEQUENCE + CELLS


def is_recurrent(mod: nn.Module) -> bool:
    return isinstance(mod, TYPES)


def first_weight(mod: nn.Module) -> torch.Tensor:
    """The first input-to-hidden weight: what per-group sizing and spec choices look at."""
    w = getattr(mod, "weight_ih_l0", None)
    w = w if w is not None else mod.weight_ih
    assert isinstance(w, torch.Tensor)
    return w


def unsupported(mod: nn.Module) -> str | None:
    if isinstance(mod, nn.LSTM) and mod.proj_size:
        return "proj_size"
    return None


def activations_for(activations: str | None) -> str | None:
    return "dynamic" if activations == "static" else activations


def _linear(
    weight: torch.Tensor, bias: torch.Tensor | None, spec: WeightSpec, act: str | None
) -> QuantLinear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    lin.weight = nn.Parameter(weight.detach().clone())
    if bias is not None:
        lin.bias = nn.Parameter(bias.detach().clone())
    q = QuantLinear(lin, spec, act)
    q.set_weight(weight.detach().float())
    return q


class QuantRecurrent(nn.Module):
    """Shared storage: one QuantLinear per weight matrix, named like the float weight without `weight_`."""

    def __init__(self, float_mod: nn.Module, spec: WeightSpec, activations: str | None) -> None:
        super().__init__()
        self.spec, self.activations = spec, activations_for(activations)
        self.mode = type(float_mod).__name__
        self.input_size, self.hidden_size = int(float_mod.input_size), int(float_mod.hidden_size)  # type: ignore[arg-type]
        self.has_bias = bool(getattr(float_mod, "bias", True))
        self.gates = 4 if isinstance(float_mod, (nn.LSTM, nn.LSTMCell)) else 3
        act = self.activations if self.activations == "dynamic" else None
        for name, w in float_mod.named_parameters():
            if name.startswith("weight_"):
                suffix = name[len("weight_") :]
                bias = getattr(float_mod, f"bias_{suffix}", None) if self.has_bias else None
                self.add_module(suffix, _linear(w, bias, spec, act))

    def children_quant(self) -> dict[str, QuantLinear]:
        return {n: m for n, m in self.named_children() if isinstance(m, QuantLinear)}

    def extra_repr(self) -> str:
        return (
            f"{self.mode}({self.input_size}, {self.hidden_size}), bits={self.spec.bits}, {self.activations}"
        )


def _weight(q: QuantModule) -> torch.Tensor:
    """The weight the float kernel runs on: dequantized once (`compute="float"`), per call, or in ONNX a
    DequantizeLinear on the int8 initializer."""
    if q.float_weight is not None:
        return q.float_weight
    c = q.export_constants if torch.onnx.is_in_onnx_export() else {}  # made before tracing
    if c.get("per_row"):
        from torchslim.quant.backends.onnx_ops import dequantize_linear

        return dequantize_linear(c["w"], c["w_scale"], c["w_zero"], axis=0)
    return q.weight


class QuantRNN(QuantRecurrent):
    """nn.LSTM / nn.GRU (any layers, directions, batch_first) with quantized weights."""

    def __init__(self, float_mod: nn.LSTM | nn.GRU, spec: WeightSpec, activations: str | None) -> None:
        super().__init__(float_mod, spec, activations)
        self.num_layers, self.batch_first = float_mod.num_layers, float_mod.batch_first
        self.bidirectional = float_mod.bidirectional
        kind = type(float_mod)
        self.__dict__["template"] = kind(  # not a submodule: its (meta) weights are never state
            self.input_size,
            self.hidden_size,
            num_layers=self.num_layers,
            bias=self.has_bias,
            batch_first=self.batch_first,
            bidirectional=self.bidirectional,
            device="meta",
        )

    def forward(self, x: torch.Tensor, hx: Any = None) -> Any:
        if self.activations == "dynamic":
            from torchslim.quant.unrolled import run_sequence

            return run_sequence(self, x, hx)
        params: dict[str, torch.Tensor] = {}
        for suffix, q in self.children_quant().items():
            params[f"weight_{suffix}"] = _weight(q)
            if q.bias is not None:
                params[f"bias_{suffix}"] = q.bias
        template: nn.Module = self.__dict__["template"]
        template.train(self.training)
        args = (x,) if hx is None else (x, hx)
        return functional_call(template, params, args)


class QuantCell(QuantRecurrent):
    """nn.LSTMCell / nn.GRUCell: one step over the two quantized Linear children `ih` and `hh`."""

    ih: QuantLinear
    hh: QuantLinear

    def forward(self, x: torch.Tensor, hx: Any = None) -> Any:
        from torchslim.quant.unrolled import cell_step

        return cell_step(self, x, hx)


RECURRENT: Registry[type[QuantRecurrent]] = Registry("quantizable recurrent layer type")
RECURRENT.register("LSTM", QuantRNN)
RECURRENT.register("GRU", QuantRNN)
RECURRENT.register("LSTMCell", QuantCell)
RECURRENT.register("GRUCell", QuantCell)
