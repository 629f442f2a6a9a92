"""`task: {text: GLOB, tokenizer: DIR, metric: perplexity}`: user text files as a causal-LM task."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

import torchslim as ts
from tiny_hf import llama
from torchslim.recipe import load_recipe
from torchslim.tasks import lm
from torchslim.tasks.resolve import resolve_task
from torchslim.tasks.text import TextTask

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

VOCAB = 300  # byte-level BPE: 256 bytes, the end token and a few merges
SENTENCES = [
    "Return the sum of a and b.",
    "Open the file and read every line.",
    "Close the socket when the peer is gone.",
    "Parse the header and return a mapping.",
]


@pytest.fixture
def tok_dir(tmp_path: Path) -> Path:
    from torchslim.zoo.text.tokenizer import train, wrap

    path = tmp_path / "tok"
    wrap(train(SENTENCES * 4, VOCAB)).save_pretrained(str(path))
    return path


def tiny_lm(vocab: int = VOCAB) -> torch.nn.Module:
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config)


def write_docs(root: Path, n: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"doc{i:02d}.txt").write_text(" ".join(SENTENCES[i % 4 :] + SENTENCES[: i % 4]) * 3)
    return root


def task_of(spec: dict[str, object]) -> TextTask:
    task = resolve_task(spec)
    assert isinstance(task, TextTask)
    return task


def test_files_split_by_file_and_scored_like_the_zoo_task(tmp_path: Path, tok_dir: Path) -> None:
    docs = write_docs(tmp_path / "docs", 10)
    task = task_of(
        {"text": str(docs / "*.txt"), "tokenizer": str(tok_dir), "window": 16, "test_fraction": 0.2}
    )
    assert task.metric == "perplexity" and not task.higher_is_better and task.name == "docs"
    assert task.info["windows"]["test"] > 0 and task.info["windows"]["train"] > task.info["windows"]["test"]
    torch.manual_seed(0)
    model = tiny_lm().eval()
    assert math.isclose(task.evaluate(model), lm.perplexity(model, task.chunks["test"]), rel_tol=1e-5)
    assert 1 < task.evaluate(model) < 1000
    inputs, target = next(iter(task.train_loader(seed=0)))
    assert inputs["input_ids"].shape == (8, 16) and torch.equal(inputs["input_ids"], target)
    assert (target[:, 0] == task.tokenizer.bos_token_id).all()
    assert float(task.loss(model(**inputs), target).detach()) > 0
    assert len(task.calibration_loader(batches=2)) == 2
    assert task.perplexity(model, ["Return the file."]) > 1
    with pytest.raises(ts.UserError, match="does not fit the model's 64-entry vocabulary"):
        task.evaluate(llama())


def test_a_directory_and_one_file(tmp_path: Path, tok_dir: Path) -> None:
    docs = write_docs(tmp_path / "docs", 1)
    by_dir = task_of({"text": str(docs), "tokenizer": str(tok_dir), "window": 8})
    by_file = task_of({"text": str(docs / "doc00.txt"), "tokenizer": str(tok_dir), "window": 8})
    assert by_dir.info == by_file.info  # one file: its last windows are the test split
    n = sum(by_dir.info["windows"].values())
    assert by_dir.info["windows"]["test"] == max(1, round(0.1 * n))


def test_explicit_splits(tmp_path: Path, tok_dir: Path) -> None:
    docs = write_docs(tmp_path / "docs", 3)
    spec = {"train": str(docs / "doc00.txt"), "test": str(docs / "doc01.txt"), "val": str(docs / "doc02.txt")}
    task = task_of({"text": spec, "tokenizer": str(tok_dir), "window": 16})
    assert set(task.chunks) == {"train", "test", "val"}
    assert task.validate(tiny_lm().eval(), 0.1) > 1


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"text": "nothing/*.txt"}, "no text files match 'nothing/\\*.txt'"),
        ({"text": "BAD"}, "not UTF-8 text"),
        ({"text": "TINY"}, "too little"),
        ({"text": "DOCS", "tokenizer": "no-such-dir"}, "cannot load a tokenizer"),
    ],
)
def test_bad_text_is_a_user_error(tmp_path: Path, tok_dir: Path, spec: dict[str, str], match: str) -> None:
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe")
    (tmp_path / "tiny.txt").write_text("a")
    names = {"BAD": str(tmp_path / "bad.txt"), "TINY": str(tmp_path / "tiny.txt"), "DOCS": str(tmp_path)}
    full = {"tokenizer": str(tok_dir), "window": 16, **spec}
    full["text"] = names.get(full["text"], full["text"])
    with pytest.raises(ts.UserError, match=match):
        resolve_task(full)


def test_recipe_validates_the_text_mapping(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: zoo:llama-pydocs\ntask:\n  text: docs/*.txt\n  tokenizer: tok\n  windw: 8\n")
    with pytest.raises(ts.UserError, match=r"line 5: task\.windw: unknown key; did you mean window"):
        load_recipe(recipe)
    recipe.write_text("model: zoo:llama-pydocs\ntask: {text: docs/*.txt, tokenizer: tok, metric: accuracy}\n")
    with pytest.raises(ts.UserError, match="task.metric"):
        load_recipe(recipe)


@pytest.mark.slow  # a whole run on an hf: checkpoint: every stage saved, loaded, measured
def test_recipe_on_hf_checkpoint_and_text_task(tmp_path: Path, tok_dir: Path) -> None:
    import transformers

    torch.manual_seed(0)
    tiny_lm().save_pretrained(str(tmp_path / "ckpt"))
    transformers.AutoTokenizer.from_pretrained(str(tok_dir)).save_pretrained(str(tmp_path / "ckpt"))
    docs = write_docs(tmp_path / "docs", 6)
    recipe = {
        "model": f"hf:{tmp_path / 'ckpt'}",
        "task": {"text": str(docs / "*.txt"), "tokenizer": str(tmp_path / "ckpt"), "window": 16},
        "stages": [{"prune": {"kind": "channel", "ratio": 0.5}}, {"finetune": {"epochs": 2, "lr": 3e-3}}],
        "output": {"formats": ["torchslim", "hf"]},
    }
    report = ts.run_recipe(recipe, tmp_path / "out")
    assert report["metric"] == "perplexity"
    _, pruned, tuned = (s["accuracy"] for s in report["stages"])
    assert tuned < pruned and report["stages"][-1]["params"] < report["stages"][0]["params"]
    out = tmp_path / "out" / "hf"
    assert (out / "tokenizer.json").is_file()
    again = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    final = ts.load(tmp_path / "out" / "model")
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(again(input_ids=ids).logits, final(input_ids=ids).logits, atol=1e-5)
