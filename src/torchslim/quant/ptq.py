"""Post-training quantization: choose layers, calibrate, round weights, swap in quantized modules.

The swap is recorded as the `quantize` transform (layer name -> how it was quantized), which
`ts.load` replays on the freshly built float model before loading the packed integers and scales.
Static activations (the onnxruntime QDQ path) also fold BatchNorms into the per-channel convolutions
they follow and give each layer boundary one grid (see `flow`), so onnxruntime fuses the whole chain.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
import torch.nn as nn
from pydantic import Field

from torchslim import io, safe
from torchslim.config import QuantConfig
from torchslim.data import split
from torchslim.errors import ManifestError, UserError
from torchslim.manifest import TRANSFORM_PARAMS, ModulePath, Name, Strict
from torchslim.quant import auto, awq, conv1d, flow, recurrent
from torchslim.quant.calibrate import Calibration, calibrate
from torchslim.quant.modules import HANDLERS, WEIGHTED, QuantModule
from torchslim.quant.primitives import WeightSpec, check_bits
from torchslim.quant.rounding import ROUNDING
from torchslim.targeting import is_selected

TRANSFORM = "quantize"
AWQ = -1.0
"""`_quantize_layer`'s alpha for "search AWQ scales" (SmoothQuant alphas are in [0, 1])."""


@dataclass
class QuantResult:
    """What `quantize_` did: quantized layers, and layers kept in float with the reason."""

    quantized: dict[str, dict[str, Any]] = field(default_factory=dict)
    kept_float: dict[str, str] = field(default_factory=dict)
    bits: dict[str, int] = field(default_factory=dict)
    """Mixed precision: the width chosen per layer (32: kept in float)."""
    sensitivity: dict[str, dict[str, float]] = field(default_factory=dict)
    """Mixed precision: per layer, the measured loss increase at each width."""
    chosen: dict[str, Any] = field(default_factory=dict)
    """What the `auto` defaults resolved to (rounding per method, smoothing and the errors compared)."""

    def notes(self) -> dict[str, Any]:
        out = {"quantized_layers": len(self.quantized), "kept_float": self.kept_float, **self.chosen}
        return out | ({"bits": self.bits, "sensitivity": self.sensitivity} if self.bits else {})


def select_layers(
    model: nn.Module, config: QuantConfig, with_recurrent: bool = False
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Layers to quantize and layers kept in float (excluded by glob, or of a type we cannot quantize).

    Selected GPT-2 `Conv1D` layers become the nn.Linear they are first (recorded; see `conv1d`).
    Recurrent layers are chosen only `with_recurrent` (post-training integer quantization)."""
    conv1d.linearize_(model, config.include, config.exclude)
    chosen: dict[str, nn.Module] = {}
    kept: dict[str, str] = {}
    wrapped: list[str] = []
    for name, mod in model.named_modules():
        if getattr(mod, "quantized_layer", False) or isinstance(mod, (QuantModule, recurrent.QuantRecurrent)):
            wrapped.append(name + ".")  # already quantized (or fake-quantized): leave it and its insides
            continue
        if not isinstance(mod, WEIGHTED) or any(name.startswith(w) for w in wrapped):
            continue
        if not is_selected(name, config.include, config.exclude):
            kept[name] = "excluded by glob"
        elif handler_name(mod) is None:
            kept[name] = f"{type(mod).__name__} cannot be quantized yet (skipped)"
        elif recurrent.is_recurrent(mod) and not with_recurrent:
            kept[name] = (
                f"{type(mod).__name__}: recurrent layers are quantized by kind 'int' post-training only"
            )
        elif _unsupported(mod):
            kept[name] = f"{type(mod).__name__} with {_unsupported(mod)} cannot be quantized yet (skipped)"
        else:
            chosen[name] = mod
    return chosen, kept


def handler_name(mod: nn.Module) -> str | None:
    """The registered float type `mod` is (pruning's parametrize makes a subclass `ParametrizedLinear`)."""
    known = (HANDLERS, recurrent.RECURRENT)
    return next((c.__name__ for c in type(mod).__mro__ if any(c.__name__ in r for r in known)), None)


def unwrap(mod: nn.Module) -> nn.Module:
    """The float layer inside a fake-quant wrapper (QAT), else `mod` itself."""
    inner = getattr(mod, "layer", None) if getattr(mod, "wraps_layer", False) else None
    return inner if isinstance(inner, nn.Module) else mod


def _unsupported(mod: nn.Module) -> str | None:
    if isinstance(mod, (nn.Conv1d, nn.Conv2d)) and (
        mod.padding_mode != "zeros" or isinstance(mod.padding, str)
    ):
        return "non-zero or string padding"
    return recurrent.unsupported(mod)


def layer_spec(mod: nn.Module, config: QuantConfig, bits: int | None = None) -> tuple[WeightSpec, str | None]:
    """Spec for one layer; per_group falls back to per_channel when the inputs do not divide evenly."""
    granularity = config.weights
    bits = bits or config.bits
    conv = isinstance(mod, (nn.Conv1d, nn.Conv2d))
    group_size, symmetric = auto.group_size_for(config, bits), auto.symmetric_for(config, bits, conv)
    inputs = _weight(mod)[0].numel()
    if granularity == "per_group" and inputs % group_size:
        granularity = "per_channel"
    activations: str | None = None if isinstance(mod, nn.Embedding) else config.activations
    if recurrent.is_recurrent(mod):
        activations = recurrent.activations_for(activations)
    reduce = config.reduce_range
    if reduce is None:
        reduce = activations is not None and bits == 8 and config.kind == "int"
    return WeightSpec(bits, granularity, group_size, symmetric, reduce), activations


def quantize_(
    model: nn.Module,
    config: QuantConfig,
    data: Iterable[Any] | None = None,
    *,
    rounding: str | None = None,
    smoothing: float | str | None = None,
    calibration_batches: int | None = None,
    layer_bits: dict[str, int] | None = None,
) -> QuantResult:
    """Quantize `model` in place. Static activations, GPTQ and SmoothQuant need calibration `data`.

    `config.method` and `config.smoothing` pick the rounding and the SmoothQuant alpha (see
    `torchslim.quant.auto` for what `auto` resolves to); `rounding="nearest"|"gptq"` and `smoothing=alpha`
    given here override them (`rounding` is the old name of `method`). `layer_bits` (mixed precision)
    overrides `config.bits` per layer name.
    """
    check_bits(config.bits)
    config = _overrides(config, rounding, smoothing)
    if layer_bits is None and (_layerwise(model, config, data) or _tuned(model, config, data)):
        from torchslim.llm.quant import quantize_layerwise

        return quantize_layerwise(model, config, data, calibration_batches=calibration_batches)
    layers, kept = select_layers(model, config, with_recurrent=True)
    if not layers:
        raise UserError(
            "no quantizable layer selected (Linear, Conv1d, Conv2d, Embedding, LSTM, GRU and cells);"
            " check include/exclude"
        )
    rnn = {n: m for n, m in layers.items() if recurrent.is_recurrent(m)}
    layers = {n: m for n, m in layers.items() if n not in rnn}
    data, first = _peek(data)
    has_data = first is not None
    recurrent_params = _quantize_recurrent(model, config, rnn, layer_bits)  # weights only: no calibration
    if not layers:
        io.add_transform(model, TRANSFORM, {"layers": recurrent_params})
        return QuantResult(quantized=recurrent_params, kept_float=kept)
    chosen: dict[str, Any] = {}
    if auto.wants_smoothing_search(config, model, has_data):
        data = list(data or [])
        chosen = _search_smoothing(model, config, data, first, calibration_batches, layer_bits)
    smoothing = float(chosen.get("smoothing", 0.0 if config.smoothing == "auto" else config.smoothing))
    bits_of = {n: (layer_bits or {}).get(n) or config.bits for n in layers}
    rounders = {n: auto.rounding_for(config, bits_of[n], has_data) for n in layers}
    linear = [n for n, m in layers.items() if isinstance(m, nn.Linear)]
    use_awq = auto.uses_awq(config)
    needs = {"static activations": config.activations == "static", "gptq": config.method == "gptq"}
    needs["awq"], needs["smoothing"] = use_awq, smoothing > 0
    if any(needs.values()) and not has_data:
        raise UserError(f"{', '.join(k for k, v in needs.items() if v)} need calibration data")
    needs["gptq"] = any(rounders[n] == "gptq" for n in linear) or use_awq
    chosen["linear_rounding"] = {
        r: sum(rounders[n] == r for n in linear) for r in sorted({rounders[n] for n in linear})
    }
    static = config.activations == "static" and first is not None
    folded = _fold(model, layers, config, layer_bits, first) if static else {}
    cal = Calibration()
    if any(needs.values()):
        method = config.calibration if config.activations == "static" else None
        cal = calibrate(
            model,
            layers,
            data or [],
            method=method,
            batches=calibration_batches,
            hessian_for=linear if needs["gptq"] else [],
            absmax_for=linear if needs["smoothing"] else [],
        )
    result = QuantResult(quantized=recurrent_params, kept_float=kept, chosen=chosen)
    for name, mod in layers.items():
        rounder = ROUNDING.get(rounders[name])
        bits = (layer_bits or {}).get(name)
        alpha = smoothing if not use_awq else AWQ if isinstance(mod, nn.Linear) else 0.0
        result.quantized[name] = _quantize_layer(model, name, mod, config, cal, rounder, alpha, bits)
        if name in folded:
            result.quantized[name]["folded_bn"] = folded[name]
    if static:
        qmods = {n: model.get_submodule(n) for n in layers}
        for name, nxt in flow.share_boundaries(model, qmods, first).items():
            result.quantized[name]["out_grid"] = nxt
    io.add_transform(model, TRANSFORM, {"layers": result.quantized})
    return result


def _quantize_recurrent(
    model: nn.Module,
    config: QuantConfig,
    rnn: dict[str, nn.Module],
    layer_bits: dict[str, int] | None,
) -> dict[str, dict[str, Any]]:
    """Swap in the quantized recurrent layers (see `recurrent`); their recorded parameters."""
    out: dict[str, dict[str, Any]] = {}
    for name, mod in rnn.items():
        spec, activations = layer_spec(mod, config, (layer_bits or {}).get(name))
        swap(model, name, mod, spec, activations)
        out[name] = layer_params(mod, spec, activations)
    return out


def _layerwise(model: nn.Module, config: QuantConfig, data: Iterable[Any] | None) -> bool:
    """A causal LM (weight-only or dynamic activations) is quantized one decoder block at a time."""
    from torchslim.llm.quant import is_causal_lm

    return config.kind == "int" and config.activations != "static" and is_causal_lm(model)


def _tuned(model: nn.Module, config: QuantConfig, data: Iterable[Any] | None) -> bool:
    """Block tuning (`gptq+tune`, or `auto` where it applies) runs through the layer-by-layer engine."""
    if config.kind != "int" or config.activations is not None or config.method not in ("auto", "gptq+tune"):
        return False
    from torchslim.llm.quant import only_block_linears

    return auto.tunes_blocks(config, data is not None, only_block_linears(model, config))


def _search_smoothing(
    model: nn.Module,
    config: QuantConfig,
    data: list[Any],
    inputs: Any,
    calibration_batches: int | None,
    layer_bits: dict[str, int] | None,
) -> dict[str, Any]:
    """`smoothing="auto"`: the SmoothQuant alpha measured best on a calibration batch (see `auto`)."""

    def trial(m: nn.Module, c: QuantConfig, d: Iterable[Any]) -> Any:
        return quantize_(m, c, d, calibration_batches=calibration_batches, layer_bits=layer_bits)

    alpha, errors = auto.choose_smoothing(model, config, data, inputs, trial)
    return {"smoothing": alpha, "smoothing_output_error": errors}


def _overrides(config: QuantConfig, rounding: str | None, smoothing: float | str | None) -> QuantConfig:
    """`rounding=` (the old name of `QuantConfig.method`) and `smoothing=` keyword overrides."""
    if rounding is not None:
        warnings.warn(
            "rounding= is deprecated: use QuantConfig(method=...)", DeprecationWarning, stacklevel=3
        )
        methods = {"nearest": "rtn", "rtn": "rtn", "gptq": "gptq", "auto": "auto"}
        if rounding not in methods:
            raise UserError(f"rounding: must be nearest|gptq (now QuantConfig.method), got {rounding!r}")
        if config.method not in ("auto", methods[rounding]):
            raise UserError(f"rounding={rounding!r} and method={config.method!r}: give only method")
        config = config.replace(method=methods[rounding])
    return config if smoothing is None else config.replace(smoothing=smoothing)


def _peek(data: Iterable[Any] | None) -> tuple[Iterable[Any] | None, Any]:
    """`data` unchanged for the caller (even a one-shot iterator) and the inputs of its first batch."""
    if data is None:
        return None, None
    it = iter(data)
    first = next(it, None)
    return itertools.chain([] if first is None else [first], it), None if first is None else split(first)[0]


def _fold(
    model: nn.Module, layers: dict[str, nn.Module], config: QuantConfig, bits: dict[str, int] | None, x: Any
) -> dict[str, str]:
    """Fold BatchNorms into the per-channel static convolutions they follow (see `flow`)."""
    convs = {
        n: m
        for n, m in layers.items()
        if isinstance(m, (nn.Conv1d, nn.Conv2d))
        and layer_spec(m, config, (bits or {}).get(n))[0].granularity == "per_channel"
    }
    return flow.fold_batchnorm(model, convs, x)


def _quantize_layer(
    model: nn.Module,
    name: str,
    mod: nn.Module,
    config: QuantConfig,
    cal: Calibration,
    rounder: Any,
    alpha: float,
    bits: int | None = None,
) -> dict[str, Any]:
    spec, activations = layer_spec(mod, config, bits)
    weight, hessian = _weight(mod).detach(), cal.hessians.get(name)
    smooth = cal.absmax.get(name) if alpha > 0 else None
    s: torch.Tensor | None = None
    if alpha == AWQ:
        s = awq.search_scales([weight], hessian, spec)[0] if hessian is not None else None
    elif smooth is not None:
        s = (smooth.clamp_min(1e-5) ** alpha / weight.abs().amax(0).clamp_min(1e-5) ** (1 - alpha)).clamp_min(
            1e-5
        )
    qmod = swap(model, name, mod, spec, activations, s is not None)
    if s is not None:
        qmod.smooth = s.float()
        weight = weight * s  # x / s @ (w * s)^T == x @ w^T
        hessian = hessian / s[:, None] / s[None, :] if hessian is not None else None
    rounder(qmod, weight, hessian)
    if activations == "static":
        for which, obs in cal.observers[name].items():
            lo, hi = obs.range(8, symmetric=False)
            if which == "in" and s is not None:  # observer saw x, layer quantizes x / s: a safe bound
                lo, hi = lo / float(qmod.smooth.min()), hi / float(qmod.smooth.min())
            qmod.set_activation_range(which, lo, hi)
    return {**layer_params(mod, spec, activations), "smooth": s is not None}


def swap(
    model: nn.Module,
    name: str,
    mod: nn.Module,
    spec: WeightSpec,
    activations: str | None,
    smooth: bool = False,
) -> QuantModule:
    extra = {"smooth": True} if smooth else {}
    mod = unwrap(mod)
    kind = handler_name(mod) or type(mod).__name__
    if kind in recurrent.RECURRENT:
        qmod: Any = recurrent.RECURRENT.get(kind)(mod, spec, activations)
    else:
        qmod = HANDLERS.get(kind)(mod, spec, activations, **extra)  # type: ignore[arg-type]
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, qmod)
    return qmod


def _weight(mod: nn.Module) -> torch.Tensor:
    if recurrent.is_recurrent(mod):
        return recurrent.first_weight(mod)
    weight = mod.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def layer_params(mod: nn.Module, spec: WeightSpec, activations: str | None) -> dict[str, Any]:
    return {
        "type": handler_name(mod),
        "bits": spec.bits,
        "granularity": spec.granularity,
        "group_size": spec.group_size,
        "symmetric": spec.symmetric,
        "reduce_range": spec.reduce_range,
        "activations": activations,
    }


def replayed_spec(p: dict[str, Any]) -> WeightSpec:
    """The spec a saved layer was quantized with (`reduce_range` absent in older manifests)."""
    return WeightSpec(
        p["bits"], p["granularity"], p["group_size"], p["symmetric"], bool(p.get("reduce_range", False))
    )


class QuantLayer(Strict):
    """One quantized layer as recorded (`layer_params`), validated before replay."""

    type: Name | None = None
    bits: Annotated[int, Field(ge=2, le=8)]
    granularity: Literal["per_tensor", "per_channel", "per_group"]
    group_size: Annotated[int, Field(ge=1, le=1 << 20)]
    symmetric: bool
    activations: Literal["dynamic", "static"] | None = None
    smooth: bool = False
    folded_bn: ModulePath | None = None
    out_grid: ModulePath | None = None
    reduce_range: bool = False


@TRANSFORM_PARAMS.register(TRANSFORM)
class QuantParams(Strict):
    layers: dict[ModulePath, QuantLayer]


@io.TRANSFORMS.register(TRANSFORM)
def _replay(model: nn.Module, params: dict[str, Any]) -> nn.Module:
    """Swap the recorded layers for empty quantized ones; packed values load afterwards."""
    for name, p in params["layers"].items():
        spec = replayed_spec(p)
        if p.get("folded_bn"):  # the BatchNorm lives in the weights and bias now
            safe.submodule(model, p["folded_bn"], TRANSFORM)
            flow.replace(model, p["folded_bn"], nn.Identity())
            conv = safe.submodule(model, name, TRANSFORM)
            if not isinstance(getattr(conv, "weight", None), torch.Tensor):
                raise ManifestError(f"{TRANSFORM}: layer {name!r} has no weight to fold a BatchNorm into")
            if conv.bias is None:
                conv.bias = nn.Parameter(torch.zeros(conv.weight.shape[0]))
        swap(
            model,
            name,
            safe.submodule(model, name, TRANSFORM),
            spec,
            p["activations"],
            p.get("smooth", False),
        )
    return model
