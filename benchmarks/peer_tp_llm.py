"""Torch-Pruning's LLM width pruning, the peer of `llm_structured`: its examples/LLMs/prune_llm.py on a
transformers Llama (BasePruner, whole attention heads with grouped-query handling, head dims kept so
RoPE is untouched, the hidden dimension cut through every block, channels rounded to 4, lm_head
ignored as a root), then the config updates that example makes. No recovery: the example has none.

Torch-Pruning lives in its own folder (`pip install --no-deps --target /work/peers/tp torch-pruning`),
never a dependency; TORCH_PRUNING_PATH overrides the folder.
"""

from __future__ import annotations

import copy
import os
import sys
from typing import Any

import torch.nn as nn

PEER = os.environ.get("TORCH_PRUNING_PATH", "/work/peers/tp")


def _tp() -> Any:
    if os.path.isdir(PEER) and PEER not in sys.path:
        sys.path.append(PEER)
    import torch_pruning as tp

    return tp


def _importance(tp: Any, name: str) -> Any:
    # the example's own choice is magnitude; Taylor needs the loss gradients accumulated first
    if name == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean")
    return tp.importance.GroupTaylorImportance()


def _ids(batch: Any) -> Any:
    inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
    return inputs["input_ids"] if isinstance(inputs, dict) else inputs


def _accumulate_gradients(model: nn.Module, data: Any) -> None:
    model.zero_grad()
    for batch in data:
        ids = _ids(batch)
        model(input_ids=ids, labels=ids).loss.backward()


def _update_config(model: Any) -> None:
    """What prune_llm.py writes back after the cut (the kv heads are never pruned under GQA)."""
    config = model.config
    config.hidden_size = model.lm_head.in_features
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            heads = m.q_proj.out_features // m.head_dim
            config.num_attention_heads = heads
            m.num_key_value_groups = heads // config.num_key_value_heads
        elif name.endswith("mlp"):
            config.intermediate_size = m.gate_proj.out_features


def tp_width(model: Any, data: Any, ratio: float, importance: str) -> Any:
    """A pruned copy of `model`: `ratio` of the hidden channels, MLP neurons and query heads removed."""
    tp = _tp()
    model = copy.deepcopy(model)
    config = model.config
    num_heads = {}
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            num_heads[m.q_proj] = config.num_attention_heads
            num_heads[m.k_proj] = config.num_key_value_heads
            num_heads[m.v_proj] = config.num_key_value_heads
    batches = list(data)
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs=_ids(batches[0])[:1, :16],
        importance=_importance(tp, importance),
        global_pruning=False,
        output_transform=lambda out: out.logits,
        pruning_ratio=ratio,
        ignored_layers=[model.lm_head],
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=ratio,
        round_to=4,
    )
    if importance == "taylor":
        _accumulate_gradients(model, batches)
    for group in pruner.step(interactive=True):
        group.prune()
    model.zero_grad(set_to_none=True)
    _update_config(model)
    return model.eval()


RATIO = 0.3
"""Channels, neurons and heads removed: (1 - 0.3)^2 ~ 0.5 of every decoder Linear (heads round by group)."""
SECONDS = float(os.environ.get("TP_SECONDS", "300"))
"""Time given to each Torch-Pruning run (graph tracing, grouping, cut) before it counts as not finishing."""


def _decoder_params(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if ".layers." in n)


def _child(importance: str, batches: int, queue: Any) -> None:
    import time

    import torchslim as ts

    task = ts.zoo.get("llama-pydocs")
    base = task.model().eval()
    start = time.perf_counter()
    model = tp_width(base, task.calibration_loader(batches=batches), RATIO, importance)
    seconds = time.perf_counter() - start
    c = model.config
    shape = (f"{c.num_attention_heads} query heads over {c.num_key_value_heads}, hidden {c.hidden_size}, "
             f"MLP {c.intermediate_size}")  # fmt: skip
    queue.put((_decoder_params(model) / _decoder_params(base), task.perplexity(model), seconds, shape))


def peer_rows(dense: float, quick: bool) -> tuple[list[list[Any]], list[str]]:
    """Table rows (one per importance) and notes: the shapes reached, or how a run failed."""
    from benchmarks.harness import TIMED_OUT, in_child

    rows: list[list[Any]] = []
    notes: list[str] = []
    for importance in ("magnitude", "taylor"):
        label = f"Torch-Pruning {importance}"
        result = in_child(_child, (importance, 2 if quick else 8), SECONDS)
        if isinstance(result, tuple):
            share, ppl, seconds, shape = result
            rows.append([label, share, ppl, 100 * (ppl / dense - 1), "-", "-", 0, round(seconds)])
            notes.append(f"{label}: ratio {RATIO} -> {shape}")
            continue
        why = f"did not finish within {SECONDS:g} s" if result is TIMED_OUT else "died without a result"
        rows.append([f"{label}: {why}", "-", "-", "-", "-", "-", 0, "-"])
        if result is TIMED_OUT:
            break  # the other importance builds the same dependency groups first
    return rows, notes
