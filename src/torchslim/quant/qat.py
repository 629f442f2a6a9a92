"""Quantization-aware training: fake-quant wrappers that train like any module, then `convert_` to integers.

`prepare_qat` wraps each selected float layer in `FakeQuant`. Its forward pass rounds the weight onto
the very grid it will be stored on (per-tensor/channel/group min/max scales, recomputed every step so
the grid follows the weights) and, for static activations, the layer's input and output onto 8-bit
grids whose ranges are calibrated first and then tracked as a moving average while training. Rounding
passes gradients straight through (STE), so the ordinary `finetune`/`distill` stages teach the float
weights to sit well on the grid. Pruning masks stay on the wrapped layer: 0 is on every grid, so
pruned weights stay exactly zero. `convert_` swaps each wrapper for the integer module PTQ builds
(packed storage, ONNX export), with the same grid and the tracked activation ranges.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

from torchslim import io, safe
from torchslim.config import QuantConfig
from torchslim.errors import UserError
from torchslim.manifest import TRANSFORM_PARAMS
from torchslim.quant import ptq
from torchslim.quant.calibrate import calibrate
from torchslim.quant.geometry import SIZES, geometry_of
from torchslim.quant.modules import ACT_BITS, ACT_QMAX, ACT_QMIN
from torchslim.quant.primitives import WeightSpec, fake_quantize, grouped, qparams_from_range, weight_qparams
from torchslim.quant.ptq import QuantResult
from torchslim.quant.rounding import nearest

TRANSFORM = "quantize_qat"
MOMENTUM = 0.01  # activation ranges: slow moving average of per-batch extremes (PyTorch's QAT default)


class FakeQuant(nn.Module):
    """A float layer whose weight (and optionally activations) are fake-quantized in the forward pass."""

    wraps_layer = True  # `ptq.unwrap` finds the float layer inside
    quantized_layer = True  # PTQ leaves it (and its inner layer) alone
    in_range: torch.Tensor
    out_range: torch.Tensor

    def __init__(self, layer: nn.Module, spec: WeightSpec, activations: str | None) -> None:
        super().__init__()
        self.layer, self.spec, self.activations = layer, spec, activations
        self.geometry = geometry_of(layer)
        if activations == "static":  # [lo, hi]; filled by calibration or by loading
            self.register_buffer("in_range", torch.zeros(2))
            self.register_buffer("out_range", torch.zeros(2))

    def fake_weight(self) -> torch.Tensor:
        w = self.layer.weight
        assert isinstance(w, torch.Tensor)
        scale, zero = weight_qparams(w, self.spec)  # detached: the grid follows w, gradients do not
        q = fake_quantize(grouped(w, self.spec), scale, zero.float(), self.spec.qmin, self.spec.qmax)
        return q.reshape(w.shape)

    def __getattr__(self, name: str) -> Any:
        if name in SIZES:  # the wrapped layer's current sizes (`in_features`, ...), as on the float layer
            return getattr(self.layer, name)
        return super().__getattr__(name)

    @property
    def weight(self) -> torch.Tensor:
        """The fake-quantized weight, an attribute like the wrapped layer's (`.dtype`, `.shape` work)."""
        return self.fake_weight()

    def effective_weights(self) -> list[tuple[str, torch.Tensor]]:
        bias = self.layer.bias if isinstance(self.layer.bias, torch.Tensor) else None
        return [("weight", self.fake_weight())] + ([("bias", bias)] if bias is not None else [])

    def _act(self, x: torch.Tensor, which: str) -> torch.Tensor:
        if self.activations == "dynamic" and which == "in":
            lo, hi = x.detach().amin(), x.detach().amax()
        elif self.activations == "static":
            rng: torch.Tensor = getattr(self, f"{which}_range")
            if self.training:
                batch = torch.stack([x.detach().amin(), x.detach().amax()])
                rng.lerp_(batch, MOMENTUM)
            lo, hi = rng[0], rng[1]
        else:
            return x
        scale, zero = qparams_from_range(lo, hi, ACT_BITS, symmetric=False)
        return fake_quantize(x, scale, zero.float(), ACT_QMIN, ACT_QMAX)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.layer.bias if isinstance(self.layer.bias, torch.Tensor) else None
        return self._act(self.geometry(self._act(x, "in"), self.fake_weight(), bias), "out")

    def extra_repr(self) -> str:
        s = self.spec
        return f"bits={s.bits}, {s.granularity}, activations={self.activations}"


def prepare_qat(
    model: nn.Module,
    config: QuantConfig,
    data: Iterable[Any] | None = None,
    *,
    calibration_batches: int | None = None,
    layer_bits: dict[str, int] | None = None,
) -> QuantResult:
    """Wrap the selected layers in `FakeQuant` (in place); static activations need calibration `data`."""
    layers, kept = ptq.select_layers(model, config)
    if not layers:
        raise UserError(
            "no quantizable layer selected (Linear, Conv1d, Conv2d, Embedding); check include/exclude"
        )
    if config.activations == "static" and data is None:
        raise UserError("static activations need calibration data to initialise their ranges")
    cal = None
    if config.activations == "static":
        assert data is not None
        cal = calibrate(model, layers, data, method=config.calibration, batches=calibration_batches)
    result = QuantResult(kept_float=kept)
    for name, mod in layers.items():
        spec, activations = ptq.layer_spec(mod, config, (layer_bits or {}).get(name))
        fq = _wrap(model, name, mod, spec, activations)
        if cal is not None and activations == "static":
            for which, obs in cal.observers[name].items():
                getattr(fq, f"{which}_range").copy_(torch.tensor(obs.range(ACT_BITS, symmetric=False)))
        result.quantized[name] = ptq.layer_params(mod, spec, activations)
    io.add_transform(model, TRANSFORM, {"layers": result.quantized})
    return result


def _wrap(
    model: nn.Module, name: str, mod: nn.Module, spec: WeightSpec, activations: str | None
) -> FakeQuant:
    fq = FakeQuant(mod, spec, activations)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, fq)
    return fq


def fake_quant_layers(model: nn.Module) -> dict[str, FakeQuant]:
    return {n: m for n, m in model.named_modules() if isinstance(m, FakeQuant)}


@torch.no_grad()
def convert_(model: nn.Module) -> QuantResult:
    """Replace every `FakeQuant` by its integer module (packed weights; tracked ranges for activations)."""
    wrappers = fake_quant_layers(model)
    if not wrappers:
        raise UserError("convert: the model has no fake-quant layers (insert them with qat=True first)")
    result = QuantResult()
    for name, fq in wrappers.items():
        qmod = ptq.swap(model, name, fq, fq.spec, fq.activations)
        weight = fq.layer.weight
        assert isinstance(weight, torch.Tensor)
        nearest(qmod, weight.detach(), None)  # the grid FakeQuant trained on: same min/max scales
        if fq.activations == "static":
            for which in ("in", "out"):
                lo, hi = getattr(fq, f"{which}_range").tolist()
                qmod.set_activation_range(which, lo, hi)
        result.quantized[name] = ptq.layer_params(fq.layer, fq.spec, fq.activations)
    io.add_transform(model, ptq.TRANSFORM, {"layers": result.quantized})
    return result


TRANSFORM_PARAMS.register(TRANSFORM, ptq.QuantParams)


@io.TRANSFORMS.register(TRANSFORM)
def _replay(model: nn.Module, params: dict[str, Any]) -> nn.Module:
    """Wrap the recorded layers again (their float weights, masks and ranges load afterwards)."""
    for name, p in params["layers"].items():
        spec = ptq.replayed_spec(p)
        _wrap(model, name, safe.submodule(model, name, TRANSFORM), spec, p["activations"])
    return model
