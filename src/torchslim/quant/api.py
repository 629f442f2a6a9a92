"""`ts.quantize_`: the config's `kind` (and `qat`) picks the technique through the `KINDS` registry.

- `int`: uniform integer grids, post-training (`ptq`); `int+qat`: fake-quant layers to train, then
  `convert_` them to integers (`qat`);
- `codebook`: k-means weight sharing with trainable centroids (`codebook`).
With `QuantConfig.size_target` set, `mixed` first measures each layer's sensitivity and picks per-layer
bit widths, then calls the same technique with them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch.nn as nn

from torchslim.config import QuantConfig
from torchslim.errors import UserError
from torchslim.quant import codebook, mixed, ptq, qat
from torchslim.quant.ptq import QuantResult
from torchslim.registry import Registry

KINDS: Registry[Callable[..., QuantResult]] = Registry("quantization kind")
KINDS.register("int", ptq.quantize_)
KINDS.register("int+qat", qat.prepare_qat)
KINDS.register("codebook", codebook.quantize_)


def technique(config: QuantConfig, qat: bool) -> Callable[..., QuantResult]:
    if qat and config.kind == "codebook":
        raise UserError("qat: codebook layers train their centroids directly; use qat with kind 'int'")
    return KINDS.get(config.kind + ("+qat" if qat else ""))


def quantize_(
    model: nn.Module,
    config: QuantConfig | None = None,
    data: Iterable[Any] | None = None,
    *,
    qat: bool = False,
    **options: Any,
) -> QuantResult:
    """Quantize `model` in place and return what was quantized and what was kept in float.

    `qat=True`: insert fake-quant layers (train the model, then `torchslim.quant.convert_(model)`).
    `options`: `rounding="nearest"|"gptq"` (error-compensating, Linear layers, needs `data`),
    `calibration_batches=N` (how many batches of `data` calibration reads), `smoothing=alpha`,
    `loss=fn(output, target)` (mixed precision's sensitivity measure; default cross-entropy).
    """
    config = config or QuantConfig()
    run = technique(config, qat)
    if config.size_target is not None:
        return mixed.quantize_mixed(model, config, data, run, **options)
    options.pop("loss", None)
    return run(model, config, data, **options)
