"""Train-time augmentation of sentences, for distilling and fine-tuning sentence encoders.

An encoder is distilled by matching the teacher's embeddings, which needs no labels: any text the
teacher embeds is a training example. A few hundred held sentences are a small transfer set (a
3-layer MiniLM student fits them far better than it generalises), so each epoch replaces every
sentence by a variant of it (TinyBERT's augmented transfer set, at word level and without a model):

- kept as it is (a quarter of the time), so the original distribution stays in every epoch;
- word dropout: each word removed with probability 0.2;
- splice: its first half joined to the second half of another training sentence;
- span: a contiguous run of at least four of its words.

The targets of augmented text are recomputed by the reference model (`MiniLM.train_loader`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

Variant = Callable[[list[str], Sequence[str], random.Random], list[str]]


def _keep(words: list[str], pool: Sequence[str], rng: random.Random) -> list[str]:
    return words


def _dropout(words: list[str], pool: Sequence[str], rng: random.Random) -> list[str]:
    kept = [w for w in words if rng.random() >= 0.2]
    return kept or words


def _splice(words: list[str], pool: Sequence[str], rng: random.Random) -> list[str]:
    other = rng.choice(pool).split()
    return words[: max(1, len(words) // 2)] + other[len(other) // 2 :]


def _span(words: list[str], pool: Sequence[str], rng: random.Random) -> list[str]:
    n = rng.randint(min(4, len(words)), len(words))
    start = rng.randint(0, len(words) - n)
    return words[start : start + n]


VARIANTS: tuple[Variant, ...] = (_keep, _dropout, _splice, _span)
"""Drawn with equal probability for each sentence."""


def augment_sentences(texts: Sequence[str], pool: Sequence[str], rng: random.Random) -> list[str]:
    """One variant of each of `texts`; `pool` supplies the second halves of splices."""
    out = []
    for text in texts:
        words = text.split()
        out.append(" ".join(rng.choice(VARIANTS)(words, pool, rng)) if words else text)
    return out
