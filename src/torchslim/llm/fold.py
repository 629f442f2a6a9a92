"""Per-input-channel scales (AWQ, SmoothQuant) folded into what produces a Linear's input.

A layer computing `x / s @ (W s)^T` gives the float layer's output; when `x` is the output of a
norm with a per-channel weight (RMSNorm, LayerNorm) or of a Linear whose output rows map one to one
onto the input channels, dividing that producer's weight (and bias) by `s` gives the quantized layer
`x / s` for free: the checkpoint then holds plain quantized Linears (what compressed-tensors, vLLM and
transformers run). `PRODUCERS` maps a consumer's name inside a decoder block to its producer's
(the Llama / Mistral / Qwen naming, as llm-compressor's AWQ mappings); layers reading one input share
one producer and so must share one scale. A consumer with no foldable producer keeps no scale.
"""

from __future__ import annotations

import torch
import torch.nn as nn

PRODUCERS = {
    "self_attn.q_proj": "input_layernorm",
    "self_attn.k_proj": "input_layernorm",
    "self_attn.v_proj": "input_layernorm",
    "self_attn.o_proj": "self_attn.v_proj",
    "mlp.gate_proj": "post_attention_layernorm",
    "mlp.up_proj": "post_attention_layernorm",
    "mlp.down_proj": "mlp.up_proj",
}
"""Consumer (relative to its block) -> the module whose output is its input, channel for channel."""


def producer_of(block: nn.Module, consumer: str) -> nn.Module | None:
    """The module of `block` whose weight can absorb `consumer`'s input scale, if any."""
    name = PRODUCERS.get(consumer)
    if name is None:
        return None
    try:
        producer = block.get_submodule(name)
        layer = block.get_submodule(consumer)
    except AttributeError:
        return None
    inputs = _in_features(layer)
    if _is_norm(producer):
        weight = getattr(producer, "weight", None)
        ok = isinstance(weight, torch.Tensor) and weight.shape == (inputs,)
        return producer if ok else None
    # a Linear producer: its output rows must be the consumer's inputs (GQA's v_proj -> o_proj is not)
    rows = _out_features(producer)
    w_scale = getattr(producer, "w_scale", None)
    if isinstance(w_scale, torch.Tensor) and w_scale.shape[0] != rows:
        return None  # one scale for the whole tensor: rows cannot be divided apart
    return producer if rows == inputs and _elementwise_path(consumer) else None


def _elementwise_path(consumer: str) -> bool:
    # o_proj reads softmax(.) @ v (linear in v's channels); down_proj reads act(gate) * up
    return consumer in ("self_attn.o_proj", "mlp.down_proj")


def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__
    return name.endswith("RMSNorm") or isinstance(module, nn.LayerNorm)


def _in_features(module: nn.Module) -> int:
    shape = getattr(module, "weight_shape", None)  # a QuantModule keeps the float layer's shape
    return int(shape[1]) if shape is not None else int(module.weight.shape[1])  # type: ignore[index]


def _out_features(module: nn.Module) -> int:
    shape = getattr(module, "weight_shape", None)
    weight = getattr(module, "weight", None)
    if shape is not None:
        return int(shape[0])
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) else -1


def fold(producer: nn.Module, s: torch.Tensor) -> None:
    """Divide `producer`'s output channels by `s` (a norm's weight, or a Linear's rows and bias; a
    quantized Linear's row scales, exactly: its integers do not change)."""
    with torch.no_grad():
        w_scale = getattr(producer, "w_scale", None)
        if isinstance(w_scale, torch.Tensor):  # QuantModule: rows of [rows, groups, 1] scales
            producer.w_scale = w_scale / s.reshape(-1, 1, 1).to(w_scale.dtype)
            producer.refresh()  # type: ignore[operator]
        else:
            weight = producer.weight
            assert isinstance(weight, torch.Tensor)
            div = s.to(weight.dtype)
            weight.div_(div if weight.dim() == 1 else div[:, None])
        bias = getattr(producer, "bias", None)
        if isinstance(bias, torch.Tensor):
            bias.div_(s.to(bias.dtype))
