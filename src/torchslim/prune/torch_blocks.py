"""torch.nn's transformer layers as prunable blocks: MultiheadAttention heads and feed-forward sizes.

Same policy as `heads.py` for transformers' models: the residual stream (embed_dim) stays whole, so
these layers are leaves of the dependency graph and their inner channels couple only inside them.
One head of an nn.MultiheadAttention is its q, k and v rows of `in_proj_weight` (or of the separate
`q/k/v_proj_weight`) and `in_proj_bias`, its slices of `bias_k`/`bias_v`, and its columns of
`out_proj`. nn.MultiheadAttention cannot hold fewer heads than embed_dim / head_dim, so a block about
to lose heads is swapped for `PrunedMultiheadAttention` (same tensor names, any head count) and then
cut like any other; the swap is recorded and replayed on load.

nn.TransformerEncoderLayer and nn.TransformerEncoder pick fused kernels (`_transformer_encoder_layer_fwd`,
nested tensors) from attributes they read off their attention, assuming nn.MultiheadAttention's
shapes; their `fix` switches those paths off where the attention was replaced. The flags they set
are plain attributes, so the channel_prune record carries them to `ts.load`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.nn as nn

from torchslim.prune.graph import Key
from torchslim.prune.heads import BLOCKS, BlockRule, _heads, _mlp
from torchslim.prune.mha import PrunedMultiheadAttention
from torchslim.prune.transform import REPLACEMENTS


@REPLACEMENTS.register("PrunedMultiheadAttention")
def _to_pruned(m: nn.Module) -> nn.Module:
    assert isinstance(m, nn.MultiheadAttention), f"expected nn.MultiheadAttention, got {type(m).__name__}"
    return PrunedMultiheadAttention.from_torch(m)


_PACKED = ("in_proj_weight", "in_proj_bias")
_SEPARATE = ("q_proj_weight", "k_proj_weight", "v_proj_weight")


def _attention_sides(path: str, m: Any) -> tuple[int, dict[Key, np.ndarray], int]:
    h, d = m.num_heads, m.head_dim
    pos = _heads(h, d)
    qkv = np.concatenate([pos, pos, pos])
    keys: dict[Key, np.ndarray] = {}
    for names, dim, positions in ((_PACKED, 0, qkv), (_SEPARATE, 0, pos), (("bias_k", "bias_v"), 2, pos)):
        keys.update({(f"{path}.{n}", f"param{dim}"): positions for n in names if getattr(m, n) is not None})
    keys[(f"{path}.out_proj", "in")] = pos
    return h, keys, d


def _attention_fix(m: Any) -> None:
    m.num_heads = m.out_proj.in_features // m.head_dim


def _keep_heads(m: Any, kept: np.ndarray) -> None:
    m.heads = tuple(m.heads[i] for i in kept.tolist())


BLOCKS.register(
    "MultiheadAttention", BlockRule(_attention_sides, _attention_fix, replace="PrunedMultiheadAttention")
)
BLOCKS.register("PrunedMultiheadAttention", BlockRule(_attention_sides, _attention_fix, on_cut=_keep_heads))


def _replaced(attention: Any) -> bool:
    return attention is not None and not isinstance(attention, nn.MultiheadAttention)


def _encoder_layer_fix(m: Any) -> None:
    """The fused layer kernel reads self_attn's packed tensors as embed_dim // num_heads channels per
    head; `activation_relu_or_gelu` is the flag that only selects it (the slow path calls `activation`)."""
    if _replaced(getattr(m, "self_attn", None)):
        m.activation_relu_or_gelu = 0


def _encoder_fix(m: Any) -> None:
    """Nested-tensor inputs are made for the fused layer kernel; the replaced attention takes dense ones."""
    layers = getattr(m, "layers", None)
    if layers is not None and len(layers) and _replaced(getattr(layers[0], "self_attn", None)):
        m.use_nested_tensor = False


def _no_units(path: str, m: Any) -> tuple[int, dict[Key, np.ndarray], int]:
    return 0, {}, 1


_FEED_FORWARD = _mlp(("linear1",), "linear2")
BLOCKS.register("TransformerEncoderLayer", BlockRule(_FEED_FORWARD, _encoder_layer_fix))
BLOCKS.register("TransformerDecoderLayer", BlockRule(_FEED_FORWARD))
BLOCKS.register("TransformerEncoder", BlockRule(_no_units, _encoder_fix))
