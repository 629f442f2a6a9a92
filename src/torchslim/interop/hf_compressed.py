"""Quantized Linears in the compressed-tensors format (what transformers, vLLM and llm-compressor load).

The layout is llm-compressor 0.14's (compressed-tensors 0.20): `config.json` gains a
`quantization_config` with `quant_method: compressed-tensors`, `quantization_status: compressed` and
one `config_groups` entry per distinct scheme (`targets: ["Linear"]` and an `ignore` list of the
Linears kept in float when every quantized layer shares one scheme, else the layers' names). Tensors:
- weight-only (`pack-quantized`): `weight_packed` (int32, the signed values packed along the inputs,
  `32 / bits` to a word: `pack_to_int32`), `weight_scale` `[out, groups]` in the model's dtype,
  `weight_shape`, and for asymmetric grids `weight_zero_point` packed along the outputs;
- 8-bit weights with dynamic activations (`int-quantized`, W8A8): `weight` int8 and `weight_scale`
  `[out, 1]`; activations are quantized per token at run time (symmetric int8).
Our unsigned asymmetric values map to their signed grid by `v - 2**(bits-1)` (zero points alike), so
`(v - zero) * scale` is unchanged: the loaded weights equal ours exactly. A layer with an input scale
of its own (AWQ/SmoothQuant not folded into a producer) or quantized Embeddings/convolutions have no
compressed-tensors form: `representable` says why, and the `hf` writer falls back to float weights.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchslim.quant.modules import QuantLinear, QuantModule

FORMAT_VERSION = "0.20.1"
"""The compressed-tensors version whose layout this writes (llm-compressor 0.14's)."""


def save(model: nn.Module, dest: Path) -> dict[str, Any]:
    """`config.json` (with `quantization_config`), `model.safetensors` and the generation config of a
    transformers model whose quantized layers are all `representable`, into the directory `dest`."""
    from safetensors.torch import save_file

    config: Any = copy.deepcopy(model.config)
    config.quantization_config = quantization_config(model)
    config.architectures = [type(model).__name__]  # what save_pretrained records
    config.save_pretrained(str(dest))
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(str(dest))
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    save_file(state_dict(model, dtype), str(dest / "model.safetensors"), metadata={"format": "pt"})
    return {"format": "compressed-tensors", "quantized": sorted(quantized_layers(model))}


def quantized_layers(model: nn.Module) -> dict[str, QuantModule]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantModule)}


def representable(model: nn.Module) -> str | None:
    """None when every quantized layer has a compressed-tensors form, else why not."""
    if any(hasattr(m, "parametrizations") for m in model.modules()):
        return "the model has pruning masks (make them permanent first)"
    for name, mod in quantized_layers(model).items():
        if not isinstance(mod, QuantLinear):
            return f"{name} is a quantized {type(mod).__name__} (compressed-tensors stores Linears)"
        if hasattr(mod, "smooth"):
            return f"{name} divides its inputs by a scale of its own (not folded into a norm)"
        if mod.activations == "static" or (mod.activations == "dynamic" and mod.bits != 8):
            return f"{name}: {mod.activations} activations at {mod.bits} bits (W8A8 dynamic is stored)"
        if mod.spec.granularity == "per_tensor":
            return f"{name}: per_tensor weight scales (per_channel and per_group are stored)"
    return None


def scheme(mod: QuantModule) -> dict[str, Any]:
    """The `config_groups` entry of one layer (llm-compressor's field order and values)."""
    spec = mod.spec
    group = spec.granularity == "per_group"
    weights = {"dynamic": False, "group_size": spec.group_size if group else None, "num_bits": spec.bits,
               "observer": "memoryless_minmax", "strategy": "group" if group else "channel",
               "symmetric": spec.symmetric, "type": "int"}  # fmt: skip
    inputs = None
    if mod.activations == "dynamic":
        inputs = {"dynamic": True, "group_size": None, "num_bits": 8, "strategy": "token",
                  "symmetric": True, "type": "int"}  # fmt: skip
    fmt = "int-quantized" if inputs else "pack-quantized"
    return {"format": fmt, "input_activations": inputs, "output_activations": None, "weights": weights}


def quantization_config(model: nn.Module) -> dict[str, Any]:
    layers = quantized_layers(model)
    by_scheme: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for name, mod in layers.items():
        entry = scheme(mod)
        by_scheme.setdefault(repr(sorted(entry.items(), key=str)), (entry, []))[1].append(name)
    groups: dict[str, Any] = {}
    ignore: list[str] = []
    if len(by_scheme) == 1:
        entry, _ = next(iter(by_scheme.values()))
        groups["group_0"] = {**entry, "targets": ["Linear"]}
        ignore = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    else:
        for i, (entry, names) in enumerate(by_scheme.values()):
            groups[f"group_{i}"] = {**entry, "targets": sorted(names)}
    formats = {g["format"] for g in groups.values()}
    return {"config_groups": groups, "format": formats.pop() if len(formats) == 1 else "mixed-precision",
            "global_compression_ratio": None, "ignore": sorted(ignore), "kv_cache_scheme": None,
            "quant_method": "compressed-tensors", "quantization_status": "compressed",
            "sparsity_config": {}, "transform_config": {}, "version": FORMAT_VERSION}  # fmt: skip


def layer_tensors(prefix: str, mod: QuantModule, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One quantized Linear's tensors, named `prefix.weight_packed` etc. (see the module docstring)."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    v = mod.quantized_values()
    offset = 0 if v.zero is None else 1 << (v.bits - 1)
    values = (v.values - offset).to(torch.int8)
    out = {f"{prefix}.weight_scale": v.scale.to(dtype).contiguous()}
    if mod.activations == "dynamic":
        out[f"{prefix}.weight"] = values.contiguous()
    else:
        out[f"{prefix}.weight_packed"] = pack_to_int32(values, v.bits)
        out[f"{prefix}.weight_shape"] = torch.tensor(tuple(v.values.shape), dtype=torch.int64)
        if v.zero is not None:
            zero = (v.zero - offset).to(torch.int8)
            out[f"{prefix}.weight_zero_point"] = pack_to_int32(zero, v.bits, packed_dim=0)
    if mod.bias is not None:
        out[f"{prefix}.bias"] = mod.bias.detach().to(dtype).contiguous()
    return out


def state_dict(model: nn.Module, dtype: torch.dtype, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of `model` as a compressed-tensors checkpoint holds it (tied copies once)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in _entries(model, prefix, dtype):
        if isinstance(value, dict):
            out.update(value)
            continue
        if value.data_ptr() in seen:
            continue  # a tied weight (lm_head = embed_tokens): transformers re-ties it on load
        seen.add(value.data_ptr())
        cast = value.to(dtype) if value.is_floating_point() else value
        out[key] = cast.detach().contiguous()
    return out


def _entries(model: nn.Module, prefix: str, dtype: torch.dtype) -> Iterator[tuple[str, Any]]:
    """(key, tensor) of each float tensor, (prefix, dict of tensors) of each quantized layer."""
    inside: list[str] = []
    for name, mod in model.named_modules():
        if any(name.startswith(q) for q in inside):
            continue
        full = f"{prefix}{name}." if name else prefix
        if isinstance(mod, QuantModule):
            inside.append(name + ".")
            yield full, layer_tensors(full[:-1], mod, dtype)
            continue
        skip = mod._non_persistent_buffers_set
        for attr, t in [*mod._parameters.items(), *mod._buffers.items()]:
            if t is not None and attr not in skip:
                yield f"{full}{attr}", t
