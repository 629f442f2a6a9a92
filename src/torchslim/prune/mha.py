"""`PrunedMultiheadAttention`: torch's multi-head attention with any number of heads.

nn.MultiheadAttention ties its head count to its width (`head_dim * num_heads == embed_dim`, and the
output projection maps embed_dim back to embed_dim), so it cannot lose a head. This module computes the
same function with `num_heads * head_dim` inner channels, whatever embed_dim is. It keeps
nn.MultiheadAttention's tensor names and layouts (`in_proj_weight` or `q/k/v_proj_weight`,
`in_proj_bias`, `bias_k`/`bias_v`, `out_proj`), so a state dict moves between the two unchanged and the
channel-pruning graph, the unstructured "attention" layer kind and the save/load replay address both
the same way.

The call signature and outputs are nn.MultiheadAttention's: batch_first either way, unbatched inputs,
bool or float `key_padding_mask`/`attn_mask`, `need_weights` (weights averaged over heads or per head),
`is_causal`, packed or separate in-projection, `add_bias_kv`, `add_zero_attn`. Without weights it runs
`F.scaled_dot_product_attention`. `heads` lists the original index of every head kept, so a per-head
(3-D) attn_mask built for the original head count still applies.

nn.TransformerEncoderLayer's fused fast path reads the attention's packed tensors as
`embed_dim // num_heads` channels per head, which is wrong here; `torch_blocks.py` switches that path off
in layers that hold this module. The helpers that branch on tensor ranks and dtypes are `torch.fx.wrap`ped,
so a model holding this module traces with torch.fx (the branches run when the graph runs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def _batch_major(x: Tensor, batch_first: bool) -> Tensor:
    """[batch, seq, dim] from the caller's layout ([seq, dim] unbatched, [seq, batch, dim] seq-first)."""
    if x.dim() == 2:
        return x.unsqueeze(0)
    return x if batch_first else x.transpose(0, 1)


def _caller_layout(out: Tensor, query: Tensor, batch_first: bool) -> Tensor:
    if query.dim() == 2:
        return out.squeeze(0)
    return out if batch_first else out.transpose(0, 1)


def _unbatch_weights(weights: Tensor, query: Tensor) -> Tensor:
    return weights.squeeze(0) if query.dim() == 2 else weights


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """torch's convention: bool True (or a float -inf) where attention is not allowed."""
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))
    if not mask.is_floating_point():
        raise TypeError("only bool and floating types of attention masks are supported")
    return mask


def _per_head(mask: Tensor, batch: int, heads: tuple[int, ...]) -> Tensor:
    """[batch * heads, L, S] -> [batch, heads, L, S]; a mask for the original heads keeps the kept ones."""
    mask = mask.view(batch, -1, *mask.shape[-2:])
    if mask.shape[1] == len(heads):
        return mask
    if mask.shape[1] <= max(heads):
        raise ValueError(
            f"3-D attn_mask holds {mask.shape[1]} heads per example; this attention keeps heads {list(heads)}"
        )
    return mask.index_select(1, torch.tensor(heads, device=mask.device))


def _merged_mask(
    attn_mask: Tensor | None, key_padding_mask: Tensor | None, q: Tensor, heads: tuple[int, ...], extra: int
) -> Tensor | None:
    """One additive mask broadcastable to [batch, heads, L, S]; `extra` keys (bias_k, zero attention)
    appended after the source sequence are always visible, as in torch."""
    out = None
    if attn_mask is not None:
        mask = _additive(attn_mask, q.dtype)
        out = mask[None, None] if mask.dim() == 2 else _per_head(mask, q.shape[0], heads)
    if key_padding_mask is not None:
        padding = _additive(key_padding_mask, q.dtype)
        padding = padding.reshape(-1, 1, 1, padding.shape[-1])
        out = padding if out is None else out + padding
    return F.pad(out, (0, extra)) if out is not None and extra else out


for _fn in ("_batch_major", "_caller_layout", "_unbatch_weights", "_merged_mask"):
    torch.fx.wrap(_fn)


class PrunedMultiheadAttention(nn.Module):
    """nn.MultiheadAttention with `num_heads * head_dim` inner channels (see the module docstring)."""

    in_proj_weight: Tensor | None
    q_proj_weight: Tensor | None
    k_proj_weight: Tensor | None
    v_proj_weight: Tensor | None
    in_proj_bias: Tensor | None
    bias_k: Tensor | None
    bias_v: Tensor | None

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = head_dim or embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.dropout, self.batch_first, self.add_zero_attn = dropout, batch_first, add_zero_attn
        self.heads = tuple(range(num_heads))
        inner = num_heads * self.head_dim
        shapes = {
            "in_proj_weight": (3 * inner, embed_dim) if self._qkv_same_embed_dim else None,
            "q_proj_weight": None if self._qkv_same_embed_dim else (inner, embed_dim),
            "k_proj_weight": None if self._qkv_same_embed_dim else (inner, self.kdim),
            "v_proj_weight": None if self._qkv_same_embed_dim else (inner, self.vdim),
            "in_proj_bias": (3 * inner,) if bias else None,
            "bias_k": (1, 1, inner) if add_bias_kv else None,
            "bias_v": (1, 1, inner) if add_bias_kv else None,
        }
        for name, shape in shapes.items():
            value = None if shape is None else nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
            self.register_parameter(name, value)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias, device=device, dtype=dtype)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """nn.MultiheadAttention's initialization."""
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
            if getattr(self, name) is not None:
                nn.init.xavier_uniform_(getattr(self, name))
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)
        for name in ("bias_k", "bias_v"):
            if getattr(self, name) is not None:
                nn.init.xavier_normal_(getattr(self, name))

    @classmethod
    def from_torch(cls, source: nn.MultiheadAttention) -> PrunedMultiheadAttention:
        """The same attention, all heads kept, with copies of `source`'s tensors."""
        new = cls(
            source.embed_dim,
            source.num_heads,
            source.head_dim,
            source.dropout,
            bias=source.in_proj_bias is not None,
            add_bias_kv=source.bias_k is not None,
            add_zero_attn=source.add_zero_attn,
            kdim=source.kdim,
            vdim=source.vdim,
            batch_first=source.batch_first,
            device="meta",
        )
        state = {k: v.detach().clone() for k, v in source.state_dict().items()}
        new.load_state_dict(state, assign=True)
        old = dict(source.named_parameters())
        for name, p in new.named_parameters():
            p.requires_grad_(old[name].requires_grad)
        return new.train(source.training)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint (as nn.MultiheadAttention)")
        causal = is_causal and key_padding_mask is None and not need_weights  # torch drops the mask then
        fused = query is key and key is value
        q, k, v = (_batch_major(x, self.batch_first) for x in (query, key, value))
        q, k, v = self._project(q, k, v, fused)
        k, v, extra = self._extra_keys(k, v)
        mask = None if causal else _merged_mask(attn_mask, key_padding_mask, q, self.heads, extra)
        q, k, v = (x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2) for x in (q, k, v))
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            out, weights = self._attend_with_weights(q, k, v, mask, dropout)
        else:
            out = F.scaled_dot_product_attention(q, k, v, mask, dropout, is_causal=causal)
        out = _caller_layout(self.out_proj(out.transpose(1, 2).flatten(2)), query, self.batch_first)
        if weights is not None:
            weights = _unbatch_weights(weights.mean(1) if average_attn_weights else weights, query)
        return out, weights

    def _project(self, q: Tensor, k: Tensor, v: Tensor, fused: bool) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v as [batch, seq, heads * head_dim]; self-attention (`fused`: query, key and value are
        one tensor) with packed weights is one matmul."""
        b = self.in_proj_bias
        if self.in_proj_weight is not None and fused:
            qkv = F.linear(q, self.in_proj_weight, b).chunk(3, dim=-1)
            return qkv[0], qkv[1], qkv[2]
        bias: Sequence[Tensor | None] = (None, None, None) if b is None else b.chunk(3)
        weights = self._weights()
        return (
            F.linear(q, weights[0], bias[0]),
            F.linear(k, weights[1], bias[1]),
            F.linear(v, weights[2], bias[2]),
        )

    def _weights(self) -> Sequence[Tensor]:
        if self.in_proj_weight is not None:
            return self.in_proj_weight.chunk(3)
        assert (
            self.q_proj_weight is not None
            and self.k_proj_weight is not None
            and self.v_proj_weight is not None
        )
        return self.q_proj_weight, self.k_proj_weight, self.v_proj_weight

    def _extra_keys(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, int]:
        """bias_k/bias_v appended as one more key and value, then a zero key and value (add_zero_attn)."""
        extra = 0
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.expand(k.shape[0], 1, -1)], dim=1)
            v = torch.cat([v, self.bias_v.expand(v.shape[0], 1, -1)], dim=1)
            extra += 1
        if self.add_zero_attn:
            k, v = F.pad(k, (0, 0, 0, 1)), F.pad(v, (0, 0, 0, 1))
            extra += 1
        return k, v, extra

    def _attend_with_weights(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float
    ) -> tuple[Tensor, Tensor]:
        """The explicit softmax(Q K^T / sqrt(d) + mask) of F.multi_head_attention_forward, which returns
        the weights after dropout."""
        scores = (q * math.sqrt(1.0 / self.head_dim)) @ k.transpose(-2, -1)
        weights = (scores if mask is None else scores + mask).softmax(dim=-1)
        weights = F.dropout(weights, dropout) if dropout > 0.0 else weights
        return weights @ v, weights

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"heads={list(self.heads)}, batch_first={self.batch_first}"
        )


__all__ = ["PrunedMultiheadAttention"]
