"""`model: hf:PATH` for causal LMs (sharded, bf16, refusals) and the tokenizer in the `hf` output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from tiny_hf import llama
from torchslim.interop import EXPORTERS
from torchslim.resolve import resolve_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

TOKENS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))


def logits(model: nn.Module, x: torch.Tensor = TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=x).logits


def tiny_tokenizer() -> object:
    """A byte-level BPE trained on a few strings (its ids are not run through the tiny model)."""
    from torchslim.zoo.text.tokenizer import train, wrap

    return wrap(train(["Return the sum of a and b.", "Open the file and read it."] * 4, 64))


def checkpoint(tmp_path: Path, **save: object) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = llama().eval()
    path = tmp_path / "ckpt"
    model.save_pretrained(str(path), **save)
    return model, path


def test_sharded_checkpoint_loads_with_identical_logits(tmp_path: Path) -> None:
    model, path = checkpoint(tmp_path, max_shard_size="20KB")
    assert (path / "model.safetensors.index.json").is_file() and not (path / "model.safetensors").exists()
    again = resolve_model(f"hf:{path}")
    assert type(again).__name__ == "LlamaForCausalLM" and not again.training
    assert torch.equal(logits(again), logits(model))


def test_bf16_checkpoint_loads_as_float32(tmp_path: Path) -> None:
    model, path = checkpoint(tmp_path)
    model.to(torch.bfloat16).save_pretrained(str(path))
    again = resolve_model(f"hf:{path}")
    assert {p.dtype for p in again.parameters()} == {torch.float32}
    assert torch.equal(again.model.embed_tokens.weight, model.model.embed_tokens.weight.float())


def test_without_architectures_a_causal_lm_by_model_type(tmp_path: Path) -> None:
    model, path = checkpoint(tmp_path)
    config = json.loads((path / "config.json").read_text())
    del config["architectures"]
    (path / "config.json").write_text(json.dumps(config))
    again = resolve_model(f"hf:{path}")
    assert type(again).__name__ == "LlamaForCausalLM"
    assert torch.equal(logits(again), logits(model))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda p: _config(p, auto_map={"AutoModelForCausalLM": "m.py:M"}), "custom code .*remote_code"),
        (lambda p: _config(p, architectures=["NoSuchForCausalLM"]), "no class 'NoSuchForCausalLM'"),
        (lambda p: _config(p, architectures=None, model_type="nosuch"), "model_type 'nosuch' is not one"),
        (lambda p: (p / "config.json").write_text("{not json"), "config.json is not JSON"),
        (lambda p: (p / "model.safetensors").rename(p / "pytorch_model.bin"), r"bin \(pickle\)"),
        (lambda p: (p / "model.safetensors").unlink(), "no model.safetensors"),
        (lambda p: (p / "model.safetensors").write_bytes(b"\x08"), "could not load it"),
    ],
)
def test_refusals_are_user_errors(tmp_path: Path, edit: object, match: str) -> None:
    _, path = checkpoint(tmp_path)
    edit(path)  # type: ignore[operator]
    with pytest.raises(ts.UserError, match=match):
        resolve_model(f"hf:{path}")


def _config(path: Path, **fields: object) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(fields)
    (path / "config.json").write_text(json.dumps(config))


def test_hf_output_copies_the_tokenizer_and_reloads_pruned(tmp_path: Path) -> None:
    _, path = checkpoint(tmp_path)
    tok = tiny_tokenizer()
    tok.save_pretrained(str(path))  # type: ignore[attr-defined]
    model = resolve_model(f"hf:{path}")
    ts.prune_(model, ts.ChannelConfig(ratio=0.5), example_inputs=TOKENS)
    out = EXPORTERS.get("hf")(model, TOKENS, tmp_path / "out")
    assert (out / "tokenizer.json").read_bytes() == (path / "tokenizer.json").read_bytes()
    again = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert (again.config.num_attention_heads, again.config.num_key_value_heads) == (2, 1)
    assert again.config.intermediate_size == 32
    assert torch.equal(logits(again), logits(model))
    reloaded_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    text = "Return the file."
    assert reloaded_tok(text)["input_ids"] == tok(text)["input_ids"]  # type: ignore[operator]


def test_hf_output_without_a_tokenizer_writes_the_model_only(tmp_path: Path) -> None:
    model, _ = checkpoint(tmp_path)
    out = EXPORTERS.get("hf")(model, TOKENS, tmp_path / "out")
    assert not (out / "tokenizer.json").exists()
    assert torch.equal(logits(transformers.AutoModelForCausalLM.from_pretrained(str(out))), logits(model))


SMALL = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
ARCHITECTURES = {
    "Qwen2ForCausalLM": ("Qwen2Config", {**SMALL, "num_attention_heads": 4, "num_key_value_heads": 2}),
    "MistralForCausalLM": ("MistralConfig", {**SMALL, "num_attention_heads": 4, "num_key_value_heads": 1}),
    "Phi3ForCausalLM": (
        "Phi3Config",
        {**SMALL, "num_attention_heads": 4, "num_key_value_heads": 2, "pad_token_id": 0},
    ),
    "GPT2LMHeadModel": ("GPT2Config", {"vocab_size": 64, "n_embd": 32, "n_layer": 2, "n_head": 4}),
}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_other_causal_lms_load_and_write_back(arch: str, tmp_path: Path) -> None:
    config_class, fields = ARCHITECTURES[arch]
    torch.manual_seed(0)
    model = getattr(transformers, arch)(getattr(transformers, config_class)(**fields)).eval()
    model.save_pretrained(str(tmp_path / "ckpt"))
    loaded = resolve_model(f"hf:{tmp_path / 'ckpt'}")
    assert type(loaded).__name__ == arch and torch.equal(logits(loaded), logits(model))
    out = EXPORTERS.get("hf")(loaded, TOKENS, tmp_path / "out")
    again = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert type(again).__name__ == arch and torch.equal(logits(again), logits(model))
