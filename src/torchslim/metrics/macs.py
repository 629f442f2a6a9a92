"""Multiply-accumulates counted from the ops a forward pass really runs.

torch's FlopCounterMode sees every aten op (convolutions, mm/addmm/bmm, scaled-dot-product
attention), so MACs are right for any architecture, including attention, without per-layer rules.
It reports FLOPs = 2 x MACs for these ops. Its table misses the fused CPU attention kernel that
`scaled_dot_product_attention` (and so nn.MultiheadAttention and transformers' attention) runs on
CPU, so we add a formula for it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from torchslim.data import batch_size, call, take


def _attention_flops(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    """QK^T and AV for [batch, heads, seq, dim] shapes; grouped-query attention shares K/V heads."""
    batch, heads, seq_q, dim_qk = query
    seq_k, dim_v = key[-2], value[-1]
    return 2 * batch * heads * seq_q * seq_k * (dim_qk + dim_v)


_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops}


def _counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)


def count_macs(model: nn.Module, example_inputs: Any, *, per_example: bool = True) -> int:
    """MACs of one forward pass on `example_inputs` (on their first example when `per_example`)."""
    inputs = take(example_inputs, 1) if per_example else example_inputs
    return _total_flops(model, inputs) // 2


def macs_by_module(model: nn.Module, example_inputs: Any) -> dict[str, int]:
    """MACs per leaf module name for one example (modules that run no counted op are absent)."""
    counter = _counter()
    _run(model, take(example_inputs, 1), counter)
    out: dict[str, int] = {}
    root = type(model).__name__
    for key, ops in counter.get_flop_counts().items():
        name = key[len(root) + 1 :] if key.startswith(root + ".") else ("" if key == root else key)
        if name:
            out[name] = int(sum(ops.values())) // 2
    return out


def _total_flops(model: nn.Module, inputs: Any) -> int:
    counter = _counter()
    _run(model, inputs, counter)
    return int(counter.get_total_flops())


def _run(model: nn.Module, inputs: Any, counter: FlopCounterMode) -> None:
    """One eval forward under the counter, torch's fused transformer kernels off: in eval without grad
    nn.MultiheadAttention / nn.TransformerEncoderLayer call `_native_multi_head_attention` and
    `_transformer_encoder_layer_fwd`, which the counter does not see (a dense layer would count ~0)."""
    was_training = model.training
    fastpath = torch.backends.mha.get_fastpath_enabled()
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), counter:
            call(model, inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)


__all__ = ["batch_size", "count_macs", "macs_by_module"]
