"""A byte-level BPE tokenizer (the `tokenizers` package) trained on the corpus's training split only.

Byte-level with GPT-2's pre-tokenizer regex, so every string encodes (no unknown token) and GGUF
writers can name the pre-tokenizer `gpt-2`. One special token, `<|endoftext|>` (id 0), is both the
beginning and the end of a text. Trained once per corpus and cached as `tokenizer.json`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from torchslim.atomic import write_text

SPECIAL = "<|endoftext|>"
MIN_FREQUENCY = 2


def train(texts: list[str], vocab_size: int) -> Any:
    """A `tokenizers.Tokenizer` with exactly `vocab_size` entries when the texts allow that many merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=MIN_FREQUENCY,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def wrap(tok: Any) -> Any:
    """The `tokenizers.Tokenizer` as a transformers fast tokenizer (save_pretrained, AutoTokenizer)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL, unk_token=None, pad_token=SPECIAL
    )


def cached(texts: list[str], vocab_size: int, cache: Path) -> Any:
    """The tokenizer of `texts`, trained once and kept at `cache/pydocs-tokenizer-<hash>.json`."""
    from tokenizers import Tokenizer

    h = hashlib.sha256(f"{vocab_size}\0{MIN_FREQUENCY}\0".encode())
    for text in texts:
        h.update(text.encode() + b"\0")
    path = cache / f"pydocs-tokenizer-{h.hexdigest()[:12]}.json"
    if not path.is_file():
        write_text(path, train(texts, vocab_size).to_str())
    return wrap(Tokenizer.from_file(str(path)))
