"""`llama-pydocs` on a tiny stand-in standard library: corpus rules, split, tokenizer, caching, hf output.

The real corpus (the installed standard library) and the real training are never run here."""

from __future__ import annotations

import math
import os
import zlib
from pathlib import Path

import pytest
import torch

from torchslim import zoo
from torchslim.interop import EXPORTERS
from torchslim.zoo import llama_pydocs as lp
from torchslim.zoo.text import corpus
from torchslim.zoo.text import tokenizer as bpe

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

VOCAB = 320
TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "vocab_size": VOCAB,
}
PROSE = "Return the number of items in the container. Raise ValueError when the key is missing. "

MODULE = '''"""Module docstring: {name} helpers."""
raise SystemExit("importing this file is a bug: the corpus reads it with ast")

class Box:
    """A box that holds one value."""

    def get(self):
        """Return the value of the box."""

def put(x):
    """Put x into a new box. {prose}"""
'''


def fake_stdlib(root: Path, modules: int = 40) -> Path:
    for i in range(modules):
        name = f"pkg{i % 3}/mod{i:02d}.py" if i % 2 else f"mod{i:02d}.py"
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(MODULE.format(name=f"m{i}", prose=PROSE * 4))
    (root / "pkg0" / "__init__.py").write_text('"""The pkg0 package."""\n')
    for skipped in ("test/test_mod.py", "site-packages/other.py", "idlelib/idle_test/t.py"):
        (root / skipped).parent.mkdir(parents=True, exist_ok=True)
        (root / skipped).write_text('"""Never collected."""\n')
    (root / "broken.py").write_text('"""Does not parse."""\ndef (:\n')
    (root / "pydoc_data").mkdir()
    (root / "pydoc_data" / "topics.py").write_text("topics = {'b': 'Second topic.', 'a': 'First topic.'}\n")
    return root


def test_corpus_reads_docstrings_in_source_order_without_importing(tmp_path: Path) -> None:
    docs = corpus.collect(fake_stdlib(tmp_path))
    names = [d.module for d in docs]
    assert names == sorted(names) and len(names) == 41
    assert "pkg0" in names and "broken" not in names
    assert not any(n.startswith(("test", "site", "idlelib", "pydoc_data")) for n in names)
    first = next(d for d in docs if d.module == "mod00").text
    assert first.split("\n\n")[:3] == [
        "Module docstring: m0 helpers.",
        "A box that holds one value.",
        "Return the value of the box.",
    ]
    assert corpus.topics(tmp_path) == ["First topic.", "Second topic."]


def test_split_is_by_module_name_with_the_documented_rule(tmp_path: Path) -> None:
    docs = corpus.collect(fake_stdlib(tmp_path))
    parts = corpus.splits(docs)
    for split, members in parts.items():
        for doc in members:
            bucket = zlib.crc32(doc.module.encode()) % 20
            assert split == ("test" if bucket in (0, 1) else "val" if bucket == 2 else "train")
    assert sum(map(len, parts.values())) == len(docs)
    assert corpus.digest(docs) == corpus.digest(list(docs)) != corpus.digest(docs[1:])


def test_tokenizer_is_deterministic_byte_level_and_round_trips() -> None:
    texts = [PROSE * 3, "def f(x): return x ** 2  # é ü"]
    a, b = bpe.train(texts, VOCAB), bpe.train(texts, VOCAB)
    assert a.to_str() == b.to_str() and a.get_vocab_size() <= VOCAB
    tok = bpe.wrap(a)
    assert tok.bos_token_id == tok.eos_token_id == 0
    unseen = "Ωmega ∑ never seen"
    assert tok.decode(tok(unseen)["input_ids"]) == unseen  # bytes: nothing is unknown


def test_default_architecture_is_a_small_gqa_llama() -> None:
    with torch.device("meta"):
        model = lp.LlamaPydocs().make()
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    assert 5_000_000 <= params <= 15_000_000
    assert config.num_key_value_heads < config.num_attention_heads and config.hidden_act == "silu"
    assert config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert type(model.model.norm).__name__ == "LlamaRMSNorm"
    with pytest.raises(TypeError, match="unknown LlamaConfig fields"):
        lp.LlamaPydocs().make(no_such_field=1)


@pytest.fixture
def tiny_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> lp.LlamaPydocs:
    """The task on the stand-in corpus with a tiny model, cached under tmp_path, as `zoo.get` returns it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    docs = corpus.collect(fake_stdlib(tmp_path / "lib"))
    task = lp.LlamaPydocs()
    task.__dict__["documents"] = corpus.splits(docs)
    task.__dict__["tokenizer"] = bpe.wrap(bpe.train(task.texts("train"), VOCAB))
    monkeypatch.setattr(corpus, "cached", lambda root=None: docs)
    monkeypatch.setattr(task, "make", lambda **kw: lp.LlamaPydocs.make(task, **{**TINY, **kw}))
    monkeypatch.setattr(task, "train_summary", lambda m: lp.LlamaPydocs.train_summary(task, m, steps=3))
    monkeypatch.setitem(zoo._instances, "llama-pydocs", task)
    return task


def test_windows_loaders_and_perplexity(tiny_task: lp.LlamaPydocs) -> None:
    task = tiny_task
    inputs, target = next(iter(task.train_loader(seed=0)))
    assert inputs["input_ids"].shape == (lp.TRAIN_BATCH, lp.WINDOW) and torch.equal(
        inputs["input_ids"], target
    )
    assert (target[:, 0] == 0).all()
    shifted = next(iter(task.train_loader(seed=0, augment=False)))[1]
    assert not torch.equal(shifted, target)  # augment moves the window edges
    calib = task.calibration_loader(batches=2)
    assert len(calib) == 2 and calib[0][1].shape == (lp.CALIBRATION_BATCH, lp.WINDOW)
    torch.manual_seed(0)
    model = task.build().eval()
    ppl = task.evaluate(model)
    assert math.isfinite(ppl) and ppl == task.perplexity(model) and task.metric == "perplexity"
    assert task.better(ppl - 1, ppl) and task.perplexity(model, ["Return the box."]) > 1


def test_training_lowers_perplexity_and_is_cached(tiny_task: lp.LlamaPydocs, tmp_path: Path) -> None:
    task = tiny_task
    torch.manual_seed(0)
    before = task.validate(task.build(), 0.0)
    model = task.model()
    log = task.training_log()
    assert log["steps"] == 3 and [p["step"] for p in log["curve"]] == [3]
    assert log["val_perplexity"] < before
    assert math.isclose(task.validate(model, 0.0), log["val_perplexity"], rel_tol=1e-5)
    again = task.model()  # read from the cache: the same weights, embeddings still tied
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    assert again.lm_head.weight is again.model.embed_tokens.weight
    out = EXPORTERS.get("hf")(again, task.example_inputs, tmp_path / "out")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert tok("Return the box.")["input_ids"] == task.tokenizer("Return the box.")["input_ids"]
    with torch.no_grad():
        ids = task.example_inputs["input_ids"]
        assert torch.equal(reloaded(input_ids=ids).logits, again(input_ids=ids).logits)
