"""The `hf` output of a quantized causal LM in the compressed-tensors format: transformers'
`from_pretrained` loads it and computes our quantized model's logits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import torchslim as ts
from torchslim.interop import hf_compressed
from torchslim.interop.hf import write_hf


def _llama() -> Any:
    import transformers

    torch.manual_seed(0)
    sizes = {"vocab_size": 64, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32}  # fmt: skip
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**sizes)).eval()


def _data() -> list[Any]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 64, (2, 16), generator=gen), None) for _ in range(3)]


def _reload(model: Any, tmp_path: Path, decompress: bool = False) -> tuple[Any, dict[str, Any]]:
    """`decompress`: transformers 5.24 with compressed-tensors 0.20.1 runs asymmetric pack-quantized
    layers compressed only after a size check that fails (llm-compressor's own W4A16_ASYM checkpoints
    alike): such checkpoints load with `CompressedTensorsConfig(run_compressed=False)`."""
    import transformers

    dest = write_hf(model, None, tmp_path)
    config = json.loads((dest / "config.json").read_text())["quantization_config"]
    extra = (
        {"quantization_config": transformers.CompressedTensorsConfig(run_compressed=False)}
        if decompress
        else {}
    )
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(dest), dtype=torch.float32, **extra)
    return loaded.eval(), config


@pytest.mark.parametrize(
    ("bits", "weights", "symmetric", "method"),
    [
        (4, "per_group", False, "gptq"),
        (4, "per_group", True, "awq"),
        (3, "per_channel", True, "rtn"),
        (8, "per_channel", True, "rtn"),
    ],
)
def test_weight_only_round_trip_through_from_pretrained(
    tmp_path: Path, bits: int, weights: str, symmetric: bool, method: str
) -> None:
    model = _llama()
    config = ts.QuantConfig(bits=bits, weights=weights, group_size=16, symmetric=symmetric, method=method)  # type: ignore[arg-type]
    ts.quantize_(model, config, data=_data())
    back, qc = _reload(model, tmp_path, decompress=not symmetric)
    group = qc["config_groups"]["group_0"]
    assert qc["format"] == "pack-quantized" and qc["ignore"] == ["lm_head"]
    assert group["weights"]["num_bits"] == bits and group["weights"]["symmetric"] == symmetric
    ids = _data()[0][0]
    with torch.no_grad():
        ours, theirs = model(ids).logits, back(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5)
    w = back.model.layers[0].mlp.down_proj
    ref = model.model.layers[0].mlp.down_proj.weight
    loaded = getattr(w, "weight", None)
    if loaded is not None and loaded.is_floating_point():  # decompressed on load: our weights exactly
        assert torch.equal(loaded, ref)


def test_four_bit_checkpoint_is_about_a_quarter_of_fp16(tmp_path: Path) -> None:
    model = _llama()
    ts.quantize_(
        model, ts.QuantConfig(bits=4, weights="per_group", group_size=32, symmetric=True, method="rtn")
    )
    dest = write_hf(model, None, tmp_path)
    from safetensors import safe_open

    with safe_open(str(dest / "model.safetensors"), "pt") as f:
        packed = f.get_tensor("model.layers.0.mlp.up_proj.weight_packed")
    assert packed.dtype == torch.int32 and packed.numel() * 4 == 128 * 64 // 2  # two values a byte


def test_w8a8_dynamic_round_trip(tmp_path: Path) -> None:
    model = _llama()
    ts.quantize_(model, ts.QuantConfig(bits=8, activations="dynamic"), data=_data())
    back, qc = _reload(model, tmp_path)
    assert qc["format"] == "int-quantized"
    assert qc["config_groups"]["group_0"]["input_activations"]["strategy"] == "token"
    ids = _data()[0][0]
    with torch.no_grad():
        ours, theirs = model(ids).logits, back(ids).logits
    cos = torch.nn.functional.cosine_similarity(ours.flatten(), theirs.flatten(), dim=0)
    assert cos > 0.999  # activation grids differ (ours per tensor, theirs per token); weights are equal


def test_layers_without_a_compressed_tensors_form_fall_back_to_float(tmp_path: Path) -> None:
    model = _llama()
    ts.quantize_(
        model, ts.QuantConfig(bits=4, method="rtn", include=("model.embed_tokens", "model.layers.*"))
    )
    assert "Embedding" in (hf_compressed.representable(model) or "")
    dest = write_hf(model, None, tmp_path)
    notes = json.loads((dest / "torchslim.json").read_text())
    assert "not written" in notes["compressed_tensors"]
    assert "quantization_config" not in json.loads((dest / "config.json").read_text())


@pytest.mark.parametrize(("bits", "symmetric"), [(2, False), (3, False), (4, True), (4, False), (8, True)])
def test_layer_tensors_unpack_to_our_integers_exactly(bits: int, symmetric: bool) -> None:
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    from torchslim.quant.modules import QuantLinear
    from torchslim.quant.primitives import WeightSpec

    torch.manual_seed(0)
    layer = QuantLinear(torch.nn.Linear(64, 24), WeightSpec(bits, "per_group", 16, symmetric), None)
    layer.set_weight(torch.randn(24, 64))
    tensors = hf_compressed.layer_tensors("x", layer, torch.float32)
    v = layer.quantized_values()
    offset = 0 if symmetric else 1 << (bits - 1)
    values = unpack_from_int32(tensors["x.weight_packed"], bits, torch.Size((24, 64)))
    assert torch.equal(values.to(torch.int32) + offset, v.values)
    if not symmetric:
        assert v.zero is not None
        zero = unpack_from_int32(tensors["x.weight_zero_point"], bits, torch.Size((24, 4)), packed_dim=0)
        assert torch.equal(zero.to(torch.int32) + offset, v.zero)
