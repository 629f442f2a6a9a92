"""Tiny random-weight transformers models shared by the pruning and interop tests (no downloads).

Each builder takes config overrides (e.g. `use_cache=False` for torch.fx tracing).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn


def _transformers() -> Any:
    import transformers

    return transformers


def bert(**overrides: Any) -> nn.Module:
    t = _transformers()
    config = t.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        **overrides,
    )
    return t.BertModel(config)


def gpt2(**overrides: Any) -> nn.Module:
    t = _transformers()
    config = t.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32, **overrides)
    return t.GPT2LMHeadModel(config)


def llama(**overrides: Any) -> nn.Module:
    """A tiny Llama; `overrides` replace any of its settings."""
    t = _transformers()
    settings: dict[str, Any] = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention: 2 query heads per kv head
        max_position_embeddings=32,
    )
    return t.LlamaForCausalLM(t.LlamaConfig(**(settings | overrides)))


def vit(**overrides: Any) -> nn.Module:
    t = _transformers()
    config = t.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=10,
        **overrides,
    )
    return t.ViTForImageClassification(config)


def token_batches(
    n: int, shape: tuple[int, int], seed: int, vocab: int = 64
) -> list[tuple[torch.Tensor, None]]:
    """`n` calibration batches of random token ids (no labels), seeded: a causal LM's `data=`."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, vocab, shape, generator=gen), None) for _ in range(n)]
