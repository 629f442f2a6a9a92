"""Causal language modelling shared by the `llama-pydocs` task and `task: {text: ..., metric: perplexity}`.

Perplexity, exactly: the texts are tokenized one by one (no special tokens), each followed by the end
token, and concatenated into one stream. The stream is cut into consecutive, non-overlapping chunks of
`window - 1` tokens (stride = `window - 1`; the last chunk may be shorter). Each chunk is fed as
`[BOS] + chunk`, so a window holds at most `window` tokens and every token of the stream is predicted
exactly once, from the tokens of its own window before it (no context crosses a window edge, BOS is
never predicted). Perplexity = exp(sum of the negative log-likelihoods of all predicted tokens /
their number): token-level, weighted by tokens, not averaged per window.

Batches are `({"input_ids": ids}, ids)`: the target of a window is the window itself, shifted inside
the loss (`torchslim.tasks.metrics.next_token_loss`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.data import call
from torchslim.errors import UserError
from torchslim.tasks.metrics import logits_of

Batch = tuple[dict[str, torch.Tensor], torch.Tensor]


def token_stream(tokenizer: Any, texts: Sequence[str], eos_id: int) -> torch.Tensor:
    """Every text's token ids followed by `eos_id`, concatenated (int64)."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.int64)


def windows(stream: torch.Tensor, window: int, bos_id: int, offset: int = 0) -> list[torch.Tensor]:
    """`[BOS] + chunk` for consecutive chunks of `window - 1` tokens starting at `offset`."""
    if window < 2:
        raise ValueError(f"window must hold BOS and at least one token, got {window}")
    step = window - 1
    bos = torch.tensor([bos_id], dtype=torch.int64)
    return [torch.cat([bos, stream[i : i + step]]) for i in range(offset, len(stream), step)]


def full_windows(chunks: list[torch.Tensor], window: int) -> torch.Tensor:
    """The windows of exactly `window` tokens stacked `[n, window]` (a short tail is left out of training)."""
    full = [w for w in chunks if len(w) == window]
    return torch.stack(full) if full else torch.empty(0, window, dtype=torch.int64)


def batches(rows: torch.Tensor, batch_size: int, seed: int | None) -> Iterator[Batch]:
    """`({"input_ids": ids}, ids)` over the rows of `[n, window]`, shuffled by `seed` (None: in order)."""
    n = len(rows)
    order = (
        torch.arange(n) if seed is None else torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    )
    for start in range(0, n, batch_size):
        ids = rows[order[start : start + batch_size]]
        yield {"input_ids": ids}, ids


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    kwargs: dict[str, Any] = {"input_ids": ids}
    if any(c.__name__ == "PreTrainedModel" for c in type(model).__mro__):
        kwargs["use_cache"] = False  # no key/value cache: nothing is generated
    return logits_of(call(model, kwargs))


def check_vocabulary(model: nn.Module, chunks: list[torch.Tensor]) -> None:
    """A UserError when the token ids do not fit the model's input embedding (another tokenizer's)."""
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    rows = getattr(embedding, "num_embeddings", None)
    top = max((int(c.max()) for c in chunks if len(c)), default=-1)
    if isinstance(rows, int) and top >= rows:
        raise UserError(
            f"token id {top} does not fit the model's {rows}-entry vocabulary: the task's tokenizer is "
            "not the model's (use the tokenizer the model was trained with)"
        )


def nll(model: nn.Module, chunks: list[torch.Tensor], batch_size: int = 16) -> tuple[float, int]:
    """(summed negative log-likelihood in nats, number of predicted tokens) over the windows, in eval
    mode without gradients (the model's mode is restored). Windows of equal length are batched."""
    check_vocabulary(model, chunks)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    by_length: dict[int, list[torch.Tensor]] = {}
    for w in chunks:
        if len(w) >= 2:
            by_length.setdefault(len(w), []).append(w)
    try:
        with torch.no_grad():
            for group in by_length.values():
                for start in range(0, len(group), batch_size):
                    ids = torch.stack(group[start : start + batch_size])
                    logits = _logits(model, ids)[:, :-1].float()
                    loss = F.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
                    )
                    total += float(loss)
                    count += ids[:, 1:].numel()
    finally:
        model.train(was_training)
    return total, count


def perplexity(model: nn.Module, chunks: list[torch.Tensor], batch_size: int = 16) -> float:
    """exp(mean token NLL) over the windows (see the module docstring); inf when nothing is predicted."""
    total, count = nll(model, chunks, batch_size)
    return math.exp(total / count) if count else math.inf


class WindowBatches:
    """Re-iterable `(inputs, target)` batches of token windows (`[n, window]`), shuffled by `seed`."""

    def __init__(self, rows: torch.Tensor, batch_size: int, seed: int | None = None) -> None:
        self.rows, self.batch_size, self.seed = rows, batch_size, seed

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        return batches(self.rows, self.batch_size, self.seed)
