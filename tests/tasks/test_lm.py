"""Perplexity as `torchslim.tasks.lm` defines it: every token predicted once, windows never overlap."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from torchslim.tasks import lm


class Uniform(nn.Module):
    """Logits that are equal everywhere: perplexity is exactly the vocabulary size."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*input_ids.shape, self.vocab)


class Bigram(nn.Module):
    """Predicts token t + 1 from token t with a fixed table: the NLL of a window is a known sum."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.table[input_ids]


def test_windows_start_with_bos_and_cover_the_stream_once() -> None:
    stream = torch.arange(1, 11)
    chunks = lm.windows(stream, window=4, bos_id=0)
    assert [c.tolist() for c in chunks] == [[0, 1, 2, 3], [0, 4, 5, 6], [0, 7, 8, 9], [0, 10]]
    assert torch.equal(torch.cat([c[1:] for c in chunks]), stream)
    assert lm.full_windows(chunks, 4).shape == (3, 4)
    assert lm.windows(stream, 4, 0, offset=2)[0].tolist() == [0, 3, 4, 5]


def test_uniform_model_has_perplexity_equal_to_the_vocabulary() -> None:
    chunks = lm.windows(torch.arange(1, 40) % 7, window=8, bos_id=0)
    assert math.isclose(lm.perplexity(Uniform(7), chunks), 7.0, rel_tol=1e-6)


def test_perplexity_weights_tokens_not_windows() -> None:
    table = torch.log_softmax(torch.randn(5, 5, generator=torch.Generator().manual_seed(0)), dim=-1)
    chunks = lm.windows(torch.tensor([1, 2, 3, 4, 1, 2, 3]), window=4, bos_id=0)  # 3 + 3 + 1 tokens
    expected = 0.0
    for c in chunks:
        expected -= float(sum(table[c[i], c[i + 1]] for i in range(len(c) - 1)))
    total, count = lm.nll(Bigram(table), chunks, batch_size=2)
    assert count == 7 and math.isclose(total, expected, rel_tol=1e-5)
    assert math.isclose(lm.perplexity(Bigram(table), chunks), math.exp(expected / 7), rel_tol=1e-5)


def test_token_stream_ends_every_text_with_eos() -> None:
    class Chars:
        def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
            assert not add_special_tokens
            return {"input_ids": [ord(c) - 96 for c in text]}

    assert lm.token_stream(Chars(), ["ab", "c"], eos_id=0).tolist() == [1, 2, 0, 3, 0]


def test_batches_are_reiterable_and_shuffled_by_seed() -> None:
    rows = torch.arange(20).reshape(10, 2)
    a = [t.tolist() for _, t in lm.WindowBatches(rows, 4, seed=1)]
    assert a == [t.tolist() for _, t in lm.WindowBatches(rows, 4, seed=1)]
    assert a != [t.tolist() for _, t in lm.WindowBatches(rows, 4, seed=2)]
    assert len(lm.WindowBatches(rows, 4)) == 3
    inputs, target = next(iter(lm.WindowBatches(rows, 4)))
    assert torch.equal(inputs["input_ids"], target) and target.tolist()[0] == [0, 1]
