"""The `hf` output carries the checkpoint's tokenizer / processor files, copied only when safe."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import torchslim as ts
from tiny_hf import bert, vit
from torchslim.interop import EXPORTERS, hf_files
from torchslim.interop.hf import load_pretrained

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s"]


def bert_checkpoint(path: Path) -> Path:
    """A tiny BERT with its own WordPiece tokenizer, as `save_pretrained` writes them."""
    torch.manual_seed(0)
    bert().save_pretrained(path)
    transformers.BertTokenizerFast(vocab={t: i for i, t in enumerate(VOCAB)}).save_pretrained(path)
    return path


def test_tokenizer_files_follow_the_model_through_prune_save_load(tmp_path: Path) -> None:
    ckpt = bert_checkpoint(tmp_path / "ckpt")
    model = load_pretrained(ckpt)  # what `model: hf:PATH` does
    x = torch.randint(0, 11, (2, 8))
    ts.prune_(model, ts.ChannelConfig(ratio=0.5, exclude=("*.attention",)), example_inputs=x)
    ts.save(model, tmp_path / "ts")  # the stages of a run save and reload the model
    path = EXPORTERS.get("hf")(ts.load(tmp_path / "ts"), x, tmp_path)
    notes = json.loads((path / "torchslim.json").read_text())["tokenizer_files"]
    assert notes["from"] == str(ckpt) and "not_copied" not in notes
    written = {p.name for p in ckpt.iterdir()} & set(hf_files.FILES)
    assert set(notes["copied"]) == written and {"tokenizer.json", "tokenizer_config.json"} <= written
    source = transformers.AutoTokenizer.from_pretrained(ckpt)
    copied = transformers.AutoTokenizer.from_pretrained(path)
    assert copied("the cats sat")["input_ids"] == source("the cats sat")["input_ids"] == [2, 5, 6, 10, 7, 3]


def test_image_processor_is_copied(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vit().save_pretrained(tmp_path / "ckpt")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "ckpt")
    model = load_pretrained(tmp_path / "ckpt")
    path = EXPORTERS.get("hf")(model, torch.randn(1, 3, 32, 32), tmp_path)
    processor = transformers.AutoImageProcessor.from_pretrained(path)
    assert processor.size == {"height": 32, "width": 32}


def test_a_model_not_from_a_local_directory_copies_nothing(tmp_path: Path) -> None:
    model = bert()
    model.config.name_or_path = "google-bert/bert-base-uncased"  # a hub id: nothing is downloaded
    path = EXPORTERS.get("hf")(model, torch.randint(0, 64, (1, 4)), tmp_path)
    assert not (path / "torchslim.json").exists() and not (path / "vocab.txt").exists()


def test_only_regular_files_inside_the_checkpoint_within_the_size_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dest, outside = tmp_path / "src", tmp_path / "dest", tmp_path / "secret.txt"
    src.mkdir(), dest.mkdir()
    outside.write_text("not the tokenizer's")
    (src / "tokenizer.json").write_text("{}")
    (src / "vocab.txt").symlink_to(outside)  # a link out of the checkpoint
    (src / "merges.txt").symlink_to(src / "missing")
    os.mkfifo(src / "vocab.json")  # would block a plain open()
    (src / "tokenizer.model").mkdir()
    (src / "spiece.model").write_bytes(b"x" * 101)
    (src / "special_tokens_map.json").symlink_to("tokenizer.json")  # a link inside is fine
    (src / "unrelated.bin").write_text("not a tokenizer file name")
    monkeypatch.setattr(hf_files, "MAX_FILE_BYTES", 100)
    notes = hf_files.copy_files(src, dest)
    assert notes["copied"] == ["tokenizer.json", "special_tokens_map.json"]
    assert notes["not_copied"] == {
        "vocab.txt": "a link out of the checkpoint directory",
        "vocab.json": "not a regular file",
        "merges.txt": "a link that leads nowhere",
        "tokenizer.model": "not a regular file",
        "spiece.model": "larger than 100 bytes",
    }
    assert sorted(p.name for p in dest.iterdir()) == ["special_tokens_map.json", "tokenizer.json"]
    assert not (dest / "special_tokens_map.json").is_symlink()


def test_hub_cache_snapshot_links_into_its_blobs(tmp_path: Path) -> None:
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc123").write_text('{"model_max_length": 8}')
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "tokenizer_config.json").symlink_to("../../blobs/abc123")
    (snapshot / "vocab.txt").symlink_to(tmp_path / "elsewhere.txt")
    (tmp_path / "elsewhere.txt").write_text("x")
    dest = tmp_path / "dest"
    dest.mkdir()
    notes = hf_files.copy_files(snapshot, dest)
    assert notes["copied"] == ["tokenizer_config.json"]
    assert notes["not_copied"] == {"vocab.txt": "a link out of the checkpoint directory"}
    assert json.loads((dest / "tokenizer_config.json").read_text()) == {"model_max_length": 8}
