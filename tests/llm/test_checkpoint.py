"""Pruning a checkpoint on disk, one block resident at a time: the output reloads with from_pretrained
and holds what in-memory pruning of the same weights gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tiny_hf
import torchslim as ts
from torchslim.errors import UserError
from torchslim.llm.checkpoint import open_checkpoint, prune_checkpoint


def _data() -> list[tuple[torch.Tensor, None]]:
    return tiny_hf.token_batches(3, (2, 16), seed=4)


@pytest.fixture()
def checkpoint(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = tiny_hf.llama().to(torch.bfloat16).eval()
    model.save_pretrained(tmp_path / "src", max_shard_size="20KB")  # several shards
    return model, tmp_path / "src"


def test_open_checkpoint_allocates_no_block_weights(checkpoint: tuple[torch.nn.Module, Path]) -> None:
    _, path = checkpoint
    model = open_checkpoint(path)
    assert all(p.is_meta for p in model.parameters())
    assert not model.model.rotary_emb.inv_freq.is_meta  # computed, as transformers does


def test_pruned_checkpoint_reloads_and_matches_in_memory_pruning(
    checkpoint: tuple[torch.nn.Module, Path], tmp_path: Path
) -> None:
    import transformers

    model, path = checkpoint
    config = ts.SparsityConfig(importance="sparsegpt", pattern="2:4")
    rep = prune_checkpoint(path, tmp_path / "out", config, _data())
    assert rep.extra["blocks"] == 2 and rep.extra["peak_rss_mb"] > 0
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3  # one shard per block + the rest
    out = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert out.dtype == torch.bfloat16
    reference = tiny_hf.llama().eval()
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    ts.prune_(reference, config, data=_data())
    ts.make_permanent(reference)
    for name, w in out.named_parameters():
        want = reference.get_parameter(name).to(torch.bfloat16)
        if ".layers." in name and name.endswith("proj.weight"):
            assert torch.equal(w == 0, want == 0), name
            assert ((w != 0).reshape(w.shape[0], -1, 4).sum(-1) == 2).all(), name
        torch.testing.assert_close(w, want, rtol=0.02, atol=1e-3)


def test_output_must_differ_from_the_source(checkpoint: tuple[torch.nn.Module, Path]) -> None:
    _, path = checkpoint
    with pytest.raises(UserError, match="must not be the source"):
        prune_checkpoint(path, path, ts.SparsityConfig(sparsity=0.5, importance="wanda"), _data())
