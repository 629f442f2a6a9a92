"""The `auto` defaults of `QuantConfig`, resolved from what is at hand and from a short measurement.

- `method="auto"`: GPTQ for Linear layers of 4 bits or fewer when calibration data is given (at 4 bits
  round-to-nearest loses far more: MiniLM per_group g128 cosine 0.930 against 0.965), else round to nearest.
  AWQ is never the automatic choice: GPTQ already compensates what AWQ's scales protect, and the two
  combined (`awq+gptq`) is offered for models where measurement shows it pays. Nor is `gptq+tune`
  (GPTQ, then each block tuned for its output error, `torchslim.quant.tune`): on MiniLM's encoder it
  lowers every block's calibration output error by 15-36% yet the held-sentence cosine drops (int4 g128
  0.9872 against GPTQ's 0.9877, int3 0.9525 against 0.9533), so `AUTO_TUNES` stays off until it measures
  better.
- `symmetric=None`, `group_size=None`: groups of 64 at 4 bits and below (128 above); asymmetric grids
  at 3 bits and below, and for Linear and Embedding layers at 4 (`symmetric_for`).
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
LOW_BITS = 4
"""Widths at which no integer kernel runs the weights (so zero points are free) and groups pay."""
LOW_BITS_GROUP, GROUP = 64, 128


def group_size_for(config: QuantConfig, bits: int) -> int:
    """`group_size=None`: 64 at 4 bits and below (MiniLM 4-bit GPTQ asymmetric: cosine 0.9859 against
    0.9815 at 128, for 0.149x against 0.135x the fp32 size), 128 above."""
    if config.group_size is not None:
        return config.group_size
    return LOW_BITS_GROUP if bits <= LOW_BITS else GROUP


def symmetric_for(config: QuantConfig, bits: int, conv: bool = False) -> bool:
    """`symmetric=None`: asymmetric at 3 bits and below, and for Linear and Embedding layers at 4;
    symmetric otherwise (8 bits: the grid torchao's int8 matmuls take).

    Measured (output error to fp32): MiniLM 4-bit g64 GPTQ cosine 0.9859 asymmetric everywhere, 0.9825
    with symmetric embeddings, 0.9728 symmetric everywhere (g128); mnist1d-cnn's convolutions at 4 bits
    lose with a zero point (relative error 0.0059 against 0.0031 for the 5-tap first one) and win at 3."""
    if config.symmetric is not None:
        return config.symmetric
    return not (bits <= LOW_BITS - 1 or (bits <= LOW_BITS and not conv))


SMOOTHING_CHOICES = (0.0, 0.5, 0.7)
"""Alphas `smoothing="auto"` compares (0.5 is SmoothQuant's default; 0.7 wins on MiniLM)."""


def rounding_for(config: QuantConfig, bits: int, has_data: bool) -> str:
    """The rounding registered in `torchslim.quant.rounding.ROUNDING` for a layer of `bits` width
    (AWQ's scales are searched first, then `awq` rounds to nearest and `awq+gptq` with GPTQ)."""
    if config.method in ("gptq", "awq+gptq", "gptq+tune"):
        return "gptq"
    if config.method == "auto" and has_data and bits <= GPTQ_MAX_BITS:
        return "gptq"
    return "nearest"


AUTO_TUNES = False
"""Whether `auto` picks `gptq+tune` where it applies (see the module docstring: measured worse on MiniLM)."""


def tunes_blocks(config: QuantConfig, has_data: bool, only_block_linears: bool) -> bool:
    """Whether GPTQ is followed by block tuning: asked for, or (with `AUTO_TUNES`) `auto` at 4 bits and
    below with data where every selected layer is a Linear of the model's repeated blocks."""
    if config.method == "gptq+tune":
        return True
    tunable = has_data and config.bits <= GPTQ_MAX_BITS and only_block_linears
    return AUTO_TUNES and config.method == "auto" and tunable


def uses_awq(config: QuantConfig) -> bool:
    return config.method in ("awq", "awq+gptq")


def wants_smoothing_search(config: QuantConfig, model: nn.Module, has_data: bool) -> bool:
    return (
        config.smoothing == "auto"
        and not uses_awq(config)
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
