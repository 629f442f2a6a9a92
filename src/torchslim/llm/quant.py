"""RTN, GPTQ, AWQ and SmoothQuant for causal LMs, fed one decoder block at a time by the engine.

`LayerQuantizer` is the engine's `Method`: it accumulates each selected Linear's input Hessian
(layers reading one input tensor, q/k/v and gate/up, share one), and when the block's pass is done
swaps each Linear for a `QuantLinear` whose integers come from the config's rounding (RTN or GPTQ).
Per-input-channel scales are chosen for each group of layers reading one input, then folded into
the norm or Linear that produces it (`torchslim.llm.fold`): AWQ's searched scales (weight-only) or
SmoothQuant's `absmax^a / wmax^(1-a)` (dynamic activations). Layers with nothing to fold into get no
scale, so every quantized layer is a plain quantized Linear (what compressed-tensors stores).

`TuningQuantizer` (`method="gptq+tune"`) is the same, then tunes each whole block for its output error
(`torchslim.quant.tune`), which the engine calls with the uncompressed model's block outputs.

`quantize_layerwise` is `ts.quantize_` for a transformers causal LM (and for block tuning on any model
with a stack of repeated blocks, e.g. MiniLM's encoder): the blocks' Linears through the engine
(bounded memory with a `ShardStore`), and what `include` selects outside the blocks (the embeddings,
`lm_head`) rounded to nearest afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn

from torchslim import io
from torchslim.config import QuantConfig
from torchslim.errors import UserError
from torchslim.llm import engine
from torchslim.llm.fold import fold, producer_of
from torchslim.llm.layers import find_layers, linears
from torchslim.llm.stats import Hessian
from torchslim.quant import auto, awq, tune
from torchslim.quant.calibrate import Calibration
from torchslim.quant.ptq import (
    TRANSFORM,
    QuantResult,
    _quantize_layer,
    layer_params,
    layer_spec,
    select_layers,
    swap,
)
from torchslim.quant.rounding import ROUNDING

SMOOTHING_DEFAULT = 0.5
"""SmoothQuant's alpha when `smoothing="auto"` on the layer-by-layer path (the paper's default)."""


class LayerQuantizer:
    """The engine `Method` (see the module docstring); `quantized` collects each layer's parameters."""

    def __init__(self, model: nn.Module, config: QuantConfig, smoothing: float) -> None:
        self.model, self.config, self.smoothing = model, config, smoothing
        self.awq = auto.uses_awq(config)
        self.rounder = ROUNDING.get(auto.rounding_for(config, config.bits, has_data=True))
        self.hessians: dict[str, Hessian] = {}
        self.absmax: dict[int, torch.Tensor] = {}  # per shared Hessian (one input): max |x| per channel
        self.seen: tuple[torch.Tensor, Hessian] | None = None
        self.scales: dict[int, torch.Tensor | None] = {}  # per shared Hessian: the group's scale
        self.means: dict[int, torch.Tensor] = {}  # per shared Hessian: its mean, taken once
        self.quantized: dict[str, dict[str, Any]] = {}
        self.search: dict[str, Any] = {}
        self.stack = find_layers(model)
        gptq = auto.rounding_for(config, config.bits, True) == "gptq"
        self.needs_inputs = self.awq or smoothing > 0 or gptq  # RTN alone reads no inputs

    def _block_of(self, name: str) -> tuple[nn.Module, str]:
        """The decoder block holding the layer `name`, and the layer's name inside it."""
        rest = name[len(self.stack.path) + 1 :] if self.stack.path else name
        index, _, relative = rest.partition(".")
        return self.stack.layers[int(index)], relative

    def observe(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        if not self.needs_inputs:
            return
        if self.seen is not None and self.seen[0] is x:  # the very tensor another layer saw: counted once
            self.hessians.setdefault(name, self.seen[1])
            return
        h = self.hessians.setdefault(name, Hessian())
        h.update(x)
        if self.smoothing > 0:
            m = x.detach().abs().reshape(-1, x.shape[-1]).amax(0).float()
            old = self.absmax.get(id(h))
            self.absmax[id(h)] = m if old is None else torch.maximum(old, m)
        self.seen = (x, h)

    def apply(self, name: str, module: nn.Module) -> None:
        self.seen = None
        h = self.hessians.pop(name, None) or Hessian()
        key = id(h)
        if key not in self.means and h.total is not None:
            self.means[key] = h.take()
        hessian = self.means.get(key)
        block, relative = self._block_of(name)
        spec, activations = layer_spec(module, self.config)
        if key not in self.scales:
            group = [name] + [n for n, other in self.hessians.items() if other is h]
            self.scales[key] = self._group_scale(block, relative, group, hessian, spec, key)
        s = self.scales[key]
        weight = _weight(module)
        qmod = swap(self.model, name, module, spec, activations)
        if s is not None and hessian is not None:
            weight, hessian = weight * s[None, :], awq.scaled_hessian(hessian, s)
        self.rounder(qmod, weight, hessian)
        self.quantized[name] = {**layer_params(module, spec, activations), "smooth": False}
        if not any(other is h for other in self.hessians.values()):  # the group's last layer
            self.scales.pop(key, None), self.means.pop(key, None), self.absmax.pop(key, None)

    def _group_scale(
        self, block: nn.Module, relative: str, group: list[str], hessian: Any, spec: Any, key: int
    ) -> torch.Tensor | None:
        """The group's input scale, folded into its producer now (None: no scaling)."""
        if not (self.awq or self.smoothing > 0) or hessian is None:
            return None
        producer = producer_of(block, relative)
        if producer is None:
            return None
        weights = [_weight(self.model.get_submodule(n)) for n in group]
        if self.awq:
            s, alpha, _ = awq.search_scales(weights, hessian, spec)
            self.search[group[0]] = alpha
        else:
            s = smooth_scales(self.absmax[key], weights, self.smoothing)
        fold(producer, s)
        return s


class TuningQuantizer(LayerQuantizer):
    """GPTQ per Linear, then the block's offsets and scales tuned (an engine `BlockTuner`)."""

    def __init__(self, model: nn.Module, config: QuantConfig, smoothing: float) -> None:
        super().__init__(model, config, smoothing)
        self.needs_inputs = True
        self.tuned: dict[str, dict[str, Any]] = {}

    def refine(
        self, block: nn.Module, run: Callable[[int], torch.Tensor], targets: list[torch.Tensor]
    ) -> None:
        report = tune.tune_block(block, run, targets)
        if report is not None:
            index = next(i for i, b in enumerate(self.stack.layers) if b is block)
            self.tuned[self.stack.name(index)] = {
                "error_gptq": round(report.before, 6),
                "error_tuned": round(report.after, 6),
                "kept": report.kept,
            }


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight.detach().float()


def smooth_scales(absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """SmoothQuant: `max|x|^a / max|w|^(1-a)` per input channel, the weight max over the group."""
    wmax = torch.stack([w.abs().amax(0) for w in weights]).amax(0)
    return (absmax.clamp_min(1e-5) ** alpha / wmax.clamp_min(1e-5) ** (1 - alpha)).clamp_min(1e-5)


def is_causal_lm(model: nn.Module) -> bool:
    """A transformers causal LM (the models the layer-by-layer path is for)."""
    return any(c.__name__ == "PreTrainedModel" for c in type(model).__mro__) and type(
        model
    ).__name__.endswith("ForCausalLM")


def only_block_linears(model: nn.Module, config: QuantConfig) -> bool:
    """Every layer `config` selects is a Linear inside the model's stack of repeated blocks."""
    try:
        inside = block_linears(model)
    except UserError:  # no stack of repeated blocks
        return False
    selected, _ = select_layers(model, config)
    return bool(selected) and all(n in inside for n in selected)


def block_linears(model: nn.Module) -> dict[str, nn.Module]:
    stack = find_layers(model)
    return {
        f"{stack.name(i)}.{n}": m for i, block in enumerate(stack.layers) for n, m in linears(block).items()
    }


def quantize_layerwise(
    model: nn.Module,
    config: QuantConfig,
    data: Iterable[Any] | None,
    *,
    store: engine.LayerStore | None = None,
    calibration_batches: int | None = None,
) -> QuantResult:
    """Quantize a causal LM's block Linears through the engine (see the module docstring)."""
    if config.activations == "static" or config.kind != "int":
        raise UserError("layer-by-layer quantization takes weight-only or dynamic activations (kind int)")
    selected, kept = select_layers(model, config)
    inside = set(block_linears(model))
    targets = {n for n in selected if n in inside}
    if not targets:
        raise UserError("no Linear layer of the decoder blocks is selected; check include/exclude")
    outside = {n: m for n, m in selected.items() if n not in inside}
    tuning = auto.tunes_blocks(config, data is not None, not outside)
    # names only from here: a block's Linear held here would keep its float weight after the engine
    # swaps it for a QuantLinear and releases the block (a checkpoint's whole model in float, at the end)
    del selected
    if not config.include:  # embeddings and lm_head only when asked for (as llm-compressor)
        kept.update(dict.fromkeys(outside, "outside the decoder blocks (name it in include to quantize)"))
        outside = {}
    smoothing = _smoothing(config, data is not None)
    rtn = ROUNDING.get("nearest")
    result = QuantResult(kept_float=kept)
    if data is None:  # nothing to calibrate with: round to nearest, no engine
        _needs_no_data(config, smoothing)
        outside.update({n: model.get_submodule(n) for n in sorted(targets)})
        result.chosen = {"linear_rounding": {"nearest": len(targets)}}
    else:
        method = (TuningQuantizer if tuning else LayerQuantizer)(model, config, smoothing)
        run = engine.run(model, data, method, targets, store=store, batches=calibration_batches)
        result.quantized = dict(method.quantized)
        rounding = "gptq+tune" if tuning else auto.rounding_for(config, config.bits, True)
        result.chosen = {
            "linear_rounding": {rounding: len(targets)},
            **({"smoothing": smoothing} if smoothing else {}),
            **({"awq_alpha": method.search} if method.awq else {}),
            **({"block_tuning": method.tuned} if isinstance(method, TuningQuantizer) else {}),
            **run.notes(),
        }
    for name, mod in outside.items():
        result.quantized[name] = _quantize_layer(model, name, mod, config, Calibration(), rtn, 0.0)
    io.add_transform(model, TRANSFORM, {"layers": result.quantized})
    return result


def _needs_no_data(config: QuantConfig, smoothing: float) -> None:
    gptq = config.method in ("gptq", "awq+gptq", "gptq+tune")
    wanted = {"gptq": gptq, "awq": auto.uses_awq(config), "smoothing": smoothing > 0}
    needs = [k for k, v in wanted.items() if v]
    if needs:
        raise UserError(f"{', '.join(needs)} need calibration data")


def _smoothing(config: QuantConfig, has_data: bool) -> float:
    if config.smoothing == "auto":
        on = has_data and config.activations == "dynamic" and not auto.uses_awq(config)
        return SMOOTHING_DEFAULT if on else 0.0
    return float(config.smoothing)
