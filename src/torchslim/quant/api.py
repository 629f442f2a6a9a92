"""`ts.quantize_`: the config's `kind` picks the technique (uniform integers or a k-means codebook)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch.nn as nn

from torchslim.config import QuantConfig
from torchslim.quant import ptq
from torchslim.quant.ptq import QuantResult
from torchslim.registry import Registry

KINDS: Registry[Callable[..., QuantResult]] = Registry("quantization kind")
KINDS.register("int", ptq.quantize_)


def quantize_(
    model: nn.Module, config: QuantConfig | None = None, data: Iterable[Any] | None = None, **options: Any
) -> QuantResult:
    """Quantize `model` in place and return what was quantized and what was kept in float.

    `options`: `rounding="nearest"|"gptq"` (error-compensating, Linear layers, needs `data`),
    `calibration_batches=N` (how many batches of `data` calibration reads).
    """
    config = config or QuantConfig()
    return KINDS.get(config.kind)(model, config, data, **options)
