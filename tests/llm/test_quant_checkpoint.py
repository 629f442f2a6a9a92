"""Quantizing a checkpoint on disk one block at a time: the output is a compressed-tensors checkpoint
that from_pretrained loads and that computes what in-memory quantization of the same weights gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tiny_hf
import torchslim as ts
from torchslim.errors import UserError
from torchslim.llm.quant_checkpoint import quantize_checkpoint


def _data() -> list[tuple[torch.Tensor, None]]:
    return tiny_hf.token_batches(3, (2, 16), seed=4)


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    import transformers

    torch.manual_seed(0)
    sizes = {"vocab_size": 64, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32}  # fmt: skip
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**sizes)).to(torch.bfloat16).eval()
    model.save_pretrained(tmp_path / "src", max_shard_size="40KB")  # several shards
    return tmp_path / "src"


def test_checkpoint_quantized_from_disk_matches_in_memory_quantization(source: Path, tmp_path: Path) -> None:
    import transformers

    config = ts.QuantConfig(bits=4, weights="per_group", group_size=16, symmetric=True, method="gptq")
    result = quantize_checkpoint(source, tmp_path / "out", config, _data())
    assert result.chosen["engine"] == "layer-by-layer" and len(result.quantized) == 14
    written = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert written["format"] == "pack-quantized" and written["ignore"] == ["lm_head"]
    stored = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.layers.0.mlp.up_proj.weight" not in stored  # the float weight is not copied as well
    assert "model.layers.0.mlp.up_proj.weight_packed" in stored
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32)
    memory = transformers.AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32).eval()
    ts.quantize_(memory, config, data=_data())
    ids = _data()[0][0]
    with torch.no_grad():
        a, b = loaded.eval()(ids).logits, memory(ids).logits
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
    assert cos > 0.999  # the same integers; scales stored in the checkpoint's bf16


def test_checkpoint_quantization_refuses_what_it_cannot_write(source: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="dynamic activations with 8-bit"):
        quantize_checkpoint(source, tmp_path / "o", ts.QuantConfig(bits=4, activations="dynamic"), _data())
    with pytest.raises(UserError, match="must not be the source"):
        quantize_checkpoint(source, source, ts.QuantConfig(bits=4), _data())


def test_no_float_layer_outlives_its_block(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each Linear swapped for a QuantLinear is freed with its block (held, it kept its float weight:
    the whole model in float32 by the last block of a checkpoint larger than memory)."""
    import gc
    import weakref

    from torchslim.llm import engine, quant

    swapped: list[weakref.ref[torch.nn.Module]] = []
    alive_after_block: list[int] = []
    swap = quant.swap

    def recording_swap(model: torch.nn.Module, name: str, module: torch.nn.Module, *args: object) -> object:
        swapped.append(weakref.ref(module))
        return swap(model, name, module, *args)  # type: ignore[arg-type]

    def after_block() -> None:
        gc.collect()
        alive_after_block.append(sum(ref() is not None for ref in swapped))

    monkeypatch.setattr(quant, "swap", recording_swap)
    monkeypatch.setattr(engine, "return_freed_memory", after_block)
    config = ts.QuantConfig(bits=4, weights="per_group", group_size=16, symmetric=True, method="rtn")
    quantize_checkpoint(source, tmp_path / "out", config, _data())
    assert len(swapped) == 14 and alive_after_block == [0, 0]
