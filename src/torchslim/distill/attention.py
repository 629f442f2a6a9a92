"""Attention maps of named modules, for MiniLM/TinyBERT-style attention transfer.

transformers' self-attention returns its probabilities only with `output_attentions=True`, and the
SDPA and flash paths never materialise them. So a forward hook on the named module recomputes
them from the module's own inputs and projections: softmax(Q K^T * scale + mask), which is cheap
next to the layer and works whatever attention backend the model was built with. The recomputed
map has no attention dropout: it is the distribution the layer attends with.

Extractors are looked up by the module's class name in `ATTENTION_MAPS`; register one for another
attention type with `ATTENTION_MAPS.register("MyAttention", fn)`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.errors import UserError
from torchslim.registry import Registry


class AttentionMap(NamedTuple):
    probs: torch.Tensor
    """`[batch, heads, queries, keys]`, each row a distribution over keys."""
    valid: torch.Tensor | None
    """`[batch, keys]` bool, False at padding; None when the module saw no padding mask."""


Extractor = Callable[[nn.Module, Mapping[str, Any]], AttentionMap]
ATTENTION_MAPS: Registry[Extractor] = Registry("attention-map extractor")

BERT_STYLE = ("BertSelfAttention", "RobertaSelfAttention", "ElectraSelfAttention")
"""transformers classes with BERT's self-attention: `query`/`key` Linears, `attention_head_size`."""


def _bert_style(module: nn.Module, arguments: Mapping[str, Any]) -> AttentionMap:
    """Recompute BertSelfAttention's eager path: softmax(Q K^T * scaling + mask)."""
    hidden, mask = arguments["hidden_states"], arguments.get("attention_mask")
    head_size = int(getattr(module, "attention_head_size"))  # noqa: B009  (typed as Tensor | Module)
    shape = (*hidden.shape[:-1], -1, head_size)  # heads from the projection: head pruning keeps this right
    query = module.get_submodule("query")(hidden).view(shape).transpose(1, 2)
    key = module.get_submodule("key")(hidden).view(shape).transpose(1, 2)
    scores = query @ key.transpose(-1, -2) * float(getattr(module, "scaling", head_size**-0.5))
    if mask is None:
        if getattr(module, "is_causal", False):  # SDPA is told is_causal instead of given a mask
            causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~causal, _lowest(scores))
        return AttentionMap(scores.softmax(dim=-1), None)
    if not isinstance(mask, torch.Tensor):
        raise UserError(f"attention maps: cannot read a {type(mask).__name__} attention mask")
    if mask.dtype == torch.bool:  # SDPA's mask: True where attending
        allowed, scores = mask, scores.masked_fill(~mask, _lowest(scores))
    else:  # the eager path's additive mask: a large negative where not attending
        allowed, scores = mask > torch.finfo(mask.dtype).min / 2, scores + mask
    valid = torch.broadcast_to(allowed, scores.shape).any(dim=1).any(dim=1)  # padding: no query sees it
    return AttentionMap(scores.softmax(dim=-1), valid)


def _lowest(scores: torch.Tensor) -> float:
    """What the eager path adds where attention is masked: finite, so a fully masked row is not NaN."""
    return torch.finfo(scores.dtype).min


def _multihead(module: nn.Module, arguments: Mapping[str, Any]) -> AttentionMap:
    """nn.MultiheadAttention's own weights (need_weights, per head), computed without dropout."""
    assert isinstance(module, nn.MultiheadAttention)
    query, key, value = arguments["query"], arguments["key"], arguments["value"]
    batched = query.dim() == 3
    if module.batch_first and batched:
        query, key, value = (x.transpose(0, 1) for x in (query, key, value))
    padding = arguments.get("key_padding_mask")
    separate = not module._qkv_same_embed_dim
    _, probs = F.multi_head_attention_forward(
        query, key, value, module.embed_dim, module.num_heads, module.in_proj_weight, module.in_proj_bias,
        module.bias_k, module.bias_v, module.add_zero_attn, 0.0, module.out_proj.weight, module.out_proj.bias,
        training=False, key_padding_mask=padding, need_weights=True, attn_mask=arguments.get("attn_mask"),
        use_separate_proj_weight=separate, q_proj_weight=module.q_proj_weight,
        k_proj_weight=module.k_proj_weight, v_proj_weight=module.v_proj_weight,
        average_attn_weights=False, is_causal=bool(arguments.get("is_causal", False)),
    )  # fmt: skip
    assert probs is not None
    probs = probs if batched else probs.unsqueeze(0)
    return AttentionMap(probs, None if padding is None else _unpadded(padding, batched, probs.shape[-1]))


def _unpadded(padding: torch.Tensor, batched: bool, keys: int) -> torch.Tensor | None:
    """torch's key_padding_mask marks padding with True (bool) or a large negative (float)."""
    valid = ~padding if padding.dtype == torch.bool else padding > torch.finfo(padding.dtype).min / 2
    valid = valid if batched else valid.unsqueeze(0)
    return valid if valid.shape[-1] == keys else None  # bias_k / add_zero_attn add keys: no mask then


for _name in BERT_STYLE:
    ATTENTION_MAPS.register(_name, _bert_style)
ATTENTION_MAPS.register("MultiheadAttention", _multihead)


def extractor_for(module: nn.Module, layer: str) -> Extractor:
    kind = type(module).__name__
    if kind not in ATTENTION_MAPS:
        raise UserError(
            f"DistillConfig.attention: layer {layer!r} is a {kind}, which has no attention-map extractor "
            f"(known: {', '.join(ATTENTION_MAPS.names())}); register one in "
            "torchslim.distill.attention.ATTENTION_MAPS"
        )
    return ATTENTION_MAPS.get(kind)


class AttentionCapture:
    """Forward hooks that keep the latest attention map of named modules (with autograd, if enabled)."""

    def __init__(self, layers: Mapping[str, nn.Module]) -> None:
        self.maps: dict[str, AttentionMap] = {}
        extractors = {name: extractor_for(module, name) for name, module in layers.items()}  # all, then hook
        self.handles = [
            module.register_forward_hook(
                self._hook(name, extractors[name], inspect.signature(module.forward)), with_kwargs=True
            )
            for name, module in layers.items()
        ]

    def _hook(self, name: str, extract: Extractor, signature: inspect.Signature) -> Callable[..., None]:
        def keep(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            self.maps[name] = extract(module, bound.arguments)

        return keep

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.maps.clear()  # the student's maps hold an autograd graph
