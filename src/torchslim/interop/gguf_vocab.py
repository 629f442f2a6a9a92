"""The tokenizer of the `gguf` output: a byte-level BPE (`tokenizer.json`) as GGUF's `gpt2` vocabulary.

Where it comes from: a zoo model's task tokenizer (`llama-pydocs`), or the `tokenizer.json` of the
`hf:PATH` checkpoint the model was loaded from. llama.cpp splits text with a regex it picks by the
pre-tokenizer name, so only pre-tokenizers whose regex it knows are written: GPT-2's byte-level one
(`gpt-2`, which is also what loads a byte-level BPE of our own) and Llama 3's split (`llama-bpe`).
SentencePiece vocabularies (Llama 2) and other pre-tokenizers are refused with a UserError.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from torchslim.errors import UserError
from torchslim.interop import hf_files
from torchslim.registry import Registry

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # gguf.TokenType values


@dataclass(frozen=True)
class Vocab:
    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]


def _is_gpt2(pre: dict[str, Any]) -> bool:
    return pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")


def _is_llama3(pre: dict[str, Any]) -> bool:
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if len(steps) != 2 or steps[0].get("type") != "Split" or steps[1].get("type") != "ByteLevel":
        return False
    return bool(steps[0].get("pattern", {}).get("Regex") == LLAMA3_SPLIT and not steps[1].get("use_regex"))


PRE_TOKENIZERS: Registry[Callable[[dict[str, Any]], bool]] = Registry("GGUF pre-tokenizer")
"""GGUF pre-tokenizer name -> does a `tokenizer.json` pre_tokenizer split text the way llama.cpp's does."""
PRE_TOKENIZERS.register("gpt-2", _is_gpt2)
PRE_TOKENIZERS.register("llama-bpe", _is_llama3)


def tokenizer_json(model: nn.Module) -> dict[str, Any]:
    """The model's `tokenizer.json` as a dict (UserError when it has none)."""
    from torchslim import io, zoo

    source = io.record_of(model).source or {}
    name = source.get("name")
    if source.get("kind") == "zoo" and isinstance(name, str) and name in zoo.TASKS:
        backend = getattr(getattr(zoo.get(name), "tokenizer", None), "backend_tokenizer", None)
        if backend is not None:
            return dict(json.loads(backend.to_str()))
    checkpoint = hf_files.source_dir(model)
    path = checkpoint / "tokenizer.json" if checkpoint is not None else None
    if path is None or not path.is_file():
        raise UserError(
            "output format 'gguf' includes the tokenizer: the model needs a zoo task with one or an hf:PATH "
            f"checkpoint directory holding tokenizer.json (found {str(path) if path else 'no checkpoint'})"
        )
    return _read_json(path)


def _read_json(path: Path) -> dict[str, Any]:
    data = hf_files._read(path, [path.parent.resolve()])
    if isinstance(data, str):
        raise UserError(f"output format 'gguf': {path} {data}")
    try:
        return dict(json.loads(data))
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as exc:
        raise UserError(f"output format 'gguf': {path} is not a tokenizer.json ({exc})") from None


def vocab(tok: dict[str, Any], vocab_size: int) -> Vocab:
    """GGUF vocabulary fields of a byte-level BPE, padded to the model's `vocab_size` rows."""
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UserError(
            f"output format 'gguf' writes byte-level BPE tokenizers; this one is a {model.get('type')} "
            f"model{' with byte_fallback (SentencePiece style)' if model.get('byte_fallback') else ''}"
        )
    pre = pre_tokenizer_name(tok.get("pre_tokenizer") or {})
    tokens, types = _tokens(model["vocab"], tok.get("added_tokens") or [], vocab_size)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return Vocab(pre, tokens, types, merges)


def pre_tokenizer_name(pre: dict[str, Any]) -> str:
    for name in PRE_TOKENIZERS.names():
        if PRE_TOKENIZERS.get(name)(pre):
            return name
    raise UserError(
        f"output format 'gguf': llama.cpp has no pre-tokenizer known to split text like this tokenizer's "
        f"({json.dumps(pre)[:120]}); known: {', '.join(PRE_TOKENIZERS.names())}"
    )


def _tokens(
    table: dict[str, int], added: list[dict[str, Any]], vocab_size: int
) -> tuple[list[str], list[int]]:
    by_id: dict[int, tuple[str, int]] = {i: (t, NORMAL) for t, i in table.items()}
    for entry in added:
        by_id[int(entry["id"])] = (str(entry["content"]), CONTROL if entry.get("special") else USER_DEFINED)
    if by_id and max(by_id) >= vocab_size:
        raise UserError(
            f"output format 'gguf': the tokenizer has id {max(by_id)} but the model only {vocab_size} "
            "embedding rows"
        )
    pairs = [by_id.get(i, (f"[PAD{i}]", UNUSED)) for i in range(vocab_size)]  # as convert_hf_to_gguf
    return [t for t, _ in pairs], [k for _, k in pairs]
