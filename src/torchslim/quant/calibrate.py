"""One calibration pass over the float model: activation observers and, for GPTQ, input Hessians."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from torchslim.data import call, limit, split
from torchslim.errors import UserError
from torchslim.quant.observers import Observer, make_observer


@dataclass
class Calibration:
    observers: dict[str, dict[str, Observer]] = field(default_factory=dict)
    """layer name -> {"in": observer, "out": observer}."""
    hessians: dict[str, torch.Tensor] = field(default_factory=dict)
    """layer name -> sum of x^T x over calibration inputs (Linear layers only)."""
    absmax: dict[str, torch.Tensor] = field(default_factory=dict)
    """layer name -> per-input-channel max |x| (Linear layers, for SmoothQuant)."""
    batches: int = 0


def check_finite(inputs: Any) -> None:
    """Calibration inputs must be finite: NaN ranges would silently poison every scale."""
    tensors = (
        inputs.values()
        if isinstance(inputs, dict)
        else inputs
        if isinstance(inputs, (tuple, list))
        else [inputs]
    )
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
            raise UserError("calibration data contains NaN or infinity")


def calibrate(
    model: nn.Module,
    layers: dict[str, nn.Module],
    data: Iterable[Any],
    *,
    method: str | None,
    hessian_for: Iterable[str] = (),
    absmax_for: Iterable[str] = (),
    batches: int | None = None,
) -> Calibration:
    """Run `data` through `model` (eval, no grad) with hooks on `layers`."""
    cal = Calibration()
    handles = []
    for name, mod in layers.items():
        if method is not None:
            cal.observers[name] = {"in": make_observer(method), "out": make_observer(method)}
        handles.append(
            mod.register_forward_hook(_hook(cal, name, name in set(hessian_for), name in set(absmax_for)))
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in limit(data, batches):
                inputs, _ = split(batch)
                check_finite(inputs)
                call(model, inputs)
                cal.batches += 1
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if cal.batches == 0:
        raise UserError("calibration data yielded no batches")
    return cal


def _hook(cal: Calibration, name: str, hessian: bool, absmax: bool) -> Any:
    def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        x = args[0]
        if name in cal.observers:
            cal.observers[name]["in"].update(x)
            cal.observers[name]["out"].update(out)
        if absmax:
            m = x.detach().abs().reshape(-1, x.shape[-1]).amax(0)
            cal.absmax[name] = torch.maximum(cal.absmax[name], m) if name in cal.absmax else m
        if hessian:
            flat = x.detach().reshape(-1, x.shape[-1]).float()  # fp32 matmul: 4x faster than fp64 here
            h = flat.T @ flat
            cal.hessians[name] = cal.hessians[name] + h if name in cal.hessians else h

    return hook
