"""The `auto` defaults of `QuantConfig`, resolved from what is at hand and from a short measurement.

- `method="auto"`: GPTQ for Linear layers of 4 bits or fewer when calibration data is given (at 4 bits
  round-to-nearest loses far more: MiniLM per_group g128 cosine 0.930 against 0.965), else round to nearest.
- `smoothing="auto"`: dynamic int8 of Linear layers is tried with each SmoothQuant alpha of
  `SMOOTHING_CHOICES` on a copy of the model, and the alpha whose output on one calibration batch is
  closest to the float model's wins (0 when smoothing does not help). Static activations keep 0: their
  grids are calibrated on the unsmoothed inputs, and the convolution nets they serve have few outliers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn

from torchslim.config import QuantConfig
from torchslim.data import call

GPTQ_MAX_BITS = 4
SMOOTHING_CHOICES = (0.0, 0.5, 0.7)
"""Alphas `smoothing="auto"` compares (0.5 is SmoothQuant's default; 0.7 wins on MiniLM)."""


def rounding_for(config: QuantConfig, bits: int, has_data: bool) -> str:
    """The rounding registered in `torchslim.quant.rounding.ROUNDING` for a layer of `bits` width."""
    if config.method == "gptq" or (config.method == "auto" and has_data and bits <= GPTQ_MAX_BITS):
        return "gptq"
    return "nearest"


def wants_smoothing_search(config: QuantConfig, model: nn.Module, has_data: bool) -> bool:
    return (
        config.smoothing == "auto"
        and config.activations == "dynamic"
        and has_data
        and any(isinstance(m, nn.Linear) for m in model.modules())
    )


def output_error(reference: Any, output: Any) -> float:
    """Relative squared error over every floating tensor of a model's output (tensors, tuples, dicts)."""
    refs, outs = _tensors(reference), _tensors(output)
    num = sum(float((r.float() - o.float()).pow(2).sum()) for r, o in zip(refs, outs, strict=True))
    den = sum(float(r.float().pow(2).sum()) for r in refs)
    return num / max(den, 1e-30)


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, dict):
        value = list(value.values())
    elif hasattr(value, "to_tuple"):  # transformers' ModelOutput
        value = list(value.to_tuple())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def choose_smoothing(
    model: nn.Module,
    config: QuantConfig,
    data: Iterable[Any],
    inputs: Any,
    quantize: Callable[[nn.Module, QuantConfig, Iterable[Any]], Any],
    choices: tuple[float, ...] = SMOOTHING_CHOICES,
) -> tuple[float, dict[str, float]]:
    """The alpha of `choices` whose quantized copy of `model` best reproduces its output on `inputs`.

    `quantize(copy, config_with_that_alpha, data)` quantizes a copy; `data` must be re-iterable."""
    batches = list(data)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = call(model, inputs)
            errors: dict[str, float] = {}
            for alpha in choices:
                trial = copy.deepcopy(model)
                quantize(trial, config.replace(smoothing=alpha), batches)
                errors[str(alpha)] = output_error(reference, call(trial.eval(), inputs))
    finally:
        model.train(was_training)
    best = min(choices, key=lambda a: (errors[str(a)], a))
    return best, errors
