"""`prune: {kind: width}` then `distill: {tokens: N}` in a recipe on an hf: checkpoint and a text task:
the distill stage stops at the token budget and the `hf` output reloads with the pruned config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import torchslim as ts
from torchslim.errors import UserError
from torchslim.recipe import load_recipe

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

SENTENCES = ["Return the sum of a and b.", "Open the file and read every line.",
             "Close the socket when the peer is gone.", "Parse the header and return a mapping."]  # fmt: skip


def test_width_recipe_validates(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("model: zoo:llama-pydocs\nstages:\n  - prune: {kind: width, heads: 4}\n"
                    "  - distill: {tokens: 1000, max_steps: 3}\n")  # fmt: skip
    recipe = load_recipe(path)
    assert recipe.stages[1][1].tokens == 1000 and recipe.stages[0][1].heads == 4
    path.write_text("model: zoo:llama-pydocs\nstages:\n  - prune: {kind: width}\n")
    with pytest.raises(UserError, match="at least one of heads"):
        load_recipe(path)


@pytest.mark.slow  # a whole run: every stage saved, loaded and measured
def test_minitron_recipe_on_hf_checkpoint(tmp_path: Path) -> None:
    import transformers

    from torchslim.zoo.text.tokenizer import train, wrap

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(str(tmp_path / "ckpt"))
    wrap(train(SENTENCES * 4, 300)).save_pretrained(str(tmp_path / "ckpt"))
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"doc{i}.txt").write_text(" ".join(SENTENCES[i % 4 :] + SENTENCES[: i % 4]) * 3)
    recipe = {
        "model": f"hf:{tmp_path / 'ckpt'}",
        "task": {"text": str(docs / "*.txt"), "tokenizer": str(tmp_path / "ckpt"), "window": 16},
        "stages": [
            {"prune": {"kind": "width", "heads": 2, "kv_heads": 1, "intermediate": 32, "batches": 2}},
            {"distill": {"tokens": 48, "batch_size": 2, "lr": 3e-3, "epochs": 5}},
        ],
        "output": {"formats": ["torchslim", "hf"]},
    }
    report = ts.run_recipe(recipe, tmp_path / "out")
    history = report["stages"][-1]["history"]
    assert len(history) == 1  # 48 tokens in batches of 2 x 16: 2 steps, inside the first of 5 epochs
    again = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out" / "hf")).eval()
    assert (again.config.num_attention_heads, again.config.num_key_value_heads) == (2, 1)
    assert again.config.intermediate_size == 32 and again.config.head_dim == 8
    final = ts.load(tmp_path / "out" / "model")
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(again(input_ids=ids).logits, final(input_ids=ids).logits, atol=1e-5)
