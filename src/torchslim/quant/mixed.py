"""Mixed precision: per-layer bit widths chosen from measured sensitivity to meet a size target.

For each selected layer and each width in `QuantConfig.bit_choices`, only that layer's weight is
replaced by its quantized-and-restored value (the technique's own rounding: integer grid or codebook)
and the loss on calibration data is measured; its increase over the float model is the layer's
predicted cost at that width. Costs are taken as additive across layers (the usual first-order
assumption of HAWQ/HAQ-style allocation). A greedy pass lowers, step by step, the width that saves the
most bits per unit of added loss until the weights fit `size_target` x their fp32 bits, then raises
widths again where the spare budget lowers the predicted loss. Width 32 means "keep in float": with
it among the choices, the most sensitive layers (often the first and last) stay float when affordable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from torchslim.config import QuantConfig
from torchslim.data import call, limit, split
from torchslim.errors import UserError
from torchslim.quant import ptq
from torchslim.quant.codebook import cluster
from torchslim.quant.primitives import dequantize_weight, quantize_weight
from torchslim.quant.ptq import QuantResult
from torchslim.registry import Registry

FLOAT = 32
MAX_BATCHES = 16
Simulate = Callable[[nn.Module, torch.Tensor, int, QuantConfig], torch.Tensor]
"""`simulate(layer, float_weight, bits, config) -> the weight after quantizing and restoring it`."""
SIMULATE: Registry[Simulate] = Registry("quantization kind (mixed precision)")


@SIMULATE.register("int")
def _int(mod: nn.Module, w: torch.Tensor, bits: int, config: QuantConfig) -> torch.Tensor:
    spec, _ = ptq.layer_spec(mod, config, bits)
    return dequantize_weight(*quantize_weight(w, spec), spec)


@SIMULATE.register("codebook")
def _codebook(mod: nn.Module, w: torch.Tensor, bits: int, config: QuantConfig) -> torch.Tensor:
    centroids, index, _ = cluster(w, bits)
    return centroids[index]


def _storage(mod: nn.Module) -> torch.Tensor:
    """The tensor holding the weight's values (under a pruning mask: its `original`)."""
    if parametrize.is_parametrized(mod, "weight"):
        return mod.parametrizations["weight"].original  # type: ignore[union-attr,index]
    weight = mod.weight
    assert isinstance(weight, torch.Tensor)
    return weight


@torch.no_grad()
def mean_loss(model: nn.Module, batches: list[Any], loss: Callable[..., torch.Tensor]) -> float:
    total = 0.0
    for batch in batches:
        inputs, target = split(batch)
        total += float(loss(call(model, inputs), target))
    return total / len(batches)


@torch.no_grad()
def scan(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batches: list[Any],
    loss: Callable[..., torch.Tensor],
    config: QuantConfig,
) -> dict[str, dict[int, float]]:
    """Loss increase when only one layer is quantized, per layer and width (0.0 for float)."""
    simulate = SIMULATE.get(config.kind)
    was_training = model.training
    model.eval()
    base = mean_loss(model, batches, loss)
    costs: dict[str, dict[int, float]] = {}
    for name, mod in layers.items():
        store = _storage(mod)
        saved = store.detach().clone()
        weight = mod.weight
        assert isinstance(weight, torch.Tensor)
        costs[name] = {FLOAT: 0.0} if FLOAT in config.bit_choices else {}
        for bits in sorted(b for b in config.bit_choices if b != FLOAT):
            store.copy_(simulate(mod, weight.detach(), bits, config))  # pruned zeros stay zero in both kinds
            costs[name][bits] = mean_loss(model, batches, loss) - base
            store.copy_(saved)
    model.train(was_training)
    return costs


def allocate(costs: dict[str, dict[int, float]], sizes: dict[str, int], target: float) -> dict[str, int]:
    """Widths whose total bits fit `target` x fp32 with the least summed predicted loss (greedy)."""
    choice = {n: max(c) for n, c in costs.items()}
    budget = target * FLOAT * sum(sizes.values())

    def used() -> float:
        return sum(sizes[n] * choice[n] for n in sizes)

    while used() > budget:  # lower the width that costs the least loss per bit saved
        moves = [
            ((c[b] - c[choice[n]]) / (sizes[n] * (choice[n] - b)), n, b)
            for n, c in costs.items()
            for b in c
            if b < choice[n]
        ]
        if not moves:
            raise UserError(f"size_target {target} is below what the narrowest bit_choices reach")
        _, name, bits = min(moves)
        choice[name] = bits
    while True:  # spend what is left where it lowers the predicted loss most
        ups = [
            (c[b] - c[choice[n]], n, b)
            for n, c in costs.items()
            for b in c
            if b > choice[n] and used() + sizes[n] * (b - choice[n]) <= budget and c[b] < c[choice[n]]
        ]
        if not ups:
            return choice
        _, name, bits = min(ups)
        choice[name] = bits


def quantize_mixed(
    model: nn.Module,
    config: QuantConfig,
    data: Iterable[Any] | None,
    run: Callable[..., QuantResult],
    *,
    loss: Callable[..., torch.Tensor] | None = None,
    **options: Any,
) -> QuantResult:
    """Scan sensitivity, allocate widths for `config.size_target`, then quantize with `run` at them."""
    assert config.size_target is not None
    if data is None:
        raise UserError("size_target (mixed precision) needs calibration data with targets to measure loss")
    batches = list(limit(data, MAX_BATCHES))
    if not batches or split(batches[0])[1] is None:
        raise UserError("size_target (mixed precision) needs batches of (inputs, target)")
    layers, _ = ptq.select_layers(model, config)
    if not layers:
        raise UserError(
            "no quantizable layer selected (Linear, Conv1d, Conv2d, Embedding); check include/exclude"
        )
    costs = scan(model, layers, batches, loss or F.cross_entropy, config)
    sizes = {n: _storage(m).numel() for n, m in layers.items()}
    bits = allocate(costs, sizes, config.size_target)
    floats = tuple(n for n, b in bits.items() if b == FLOAT)
    if len(floats) == len(layers):
        return QuantResult(kept_float={n: "kept in float by measured sensitivity" for n in floats}, bits=bits)
    plain = config.replace(size_target=None, exclude=(*config.exclude, *floats))
    result = run(model, plain, data, layer_bits={n: b for n, b in bits.items() if b != FLOAT}, **options)
    result.kept_float.update({n: "kept in float by measured sensitivity" for n in floats})
    result.bits = bits
    result.sensitivity = {n: {str(b): round(v, 6) for b, v in c.items()} for n, c in costs.items()}
    return result
