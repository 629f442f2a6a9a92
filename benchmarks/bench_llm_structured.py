"""Structured LLM pruning (Minitron) on llama-pydocs, and the speed of the same cut on a ~1 B Llama.

- `llm_structured`: 0.5x the decoder layers' parameters by width (heads + MLP, activation importance
  through the layer-by-layer engine), by depth (`kind: blocks`, blocks chosen on calibration data) and
  by the hidden dimension, each then distilled from the dense model (logits KL + the final hidden
  states) on at most 10% of the baseline's training tokens; test perplexity against dense.
  `both` keeps 2/3 of the blocks, each narrowed to 3/4 (half the query heads, a narrower MLP).
  Beside them Torch-Pruning's LLM width pruning (`peer_tp_llm`, no recovery, as its example),
  given TP_SECONDS to finish.
- `llm_structured_speed`: the same cuts applied to TinyLlama-1.1B's shape (random weights, float32):
  prefill and greedy-decode tokens/s in PyTorch eager, same threads, medians of repeats.

`STRUCTURED_CUTS=width,depth,hidden,both,tp` picks the cuts (2 shared cores: each costs minutes; `tp`
is the peer, in llm_structured only).
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

import torchslim as ts
from benchmarks.bench_llm_sparse import BASELINE_TOKENS, MEMORY_CONFIG, recover
from benchmarks.harness import Table, benchmark
from benchmarks.peer_tp_llm import peer_rows
from torchslim.distill.students import shallow_student
from torchslim.llm.structured import WidthTarget, prune_width

Cut = Callable[[nn.Module, Any], tuple[nn.Module, tuple[str, ...]]]
"""(dense model, calibration data) -> (cut model, hidden-state pairs for distillation)."""


def _width(target: WidthTarget) -> Cut:
    def cut(model: nn.Module, data: Any) -> tuple[nn.Module, tuple[str, ...]]:
        model = copy.deepcopy(model)
        prune_width(model, target, data)
        return model, ("model.norm:model.norm",)

    return cut


def _depth(keep: int, choose: bool) -> Cut:
    def cut(model: nn.Module, data: Any) -> tuple[nn.Module, tuple[str, ...]]:
        # the greedy choice costs ~n^2/2 passes: 2 calibration batches; evenly spread when not choosing
        chosen = shallow_student(
            model, count=keep, path="model.layers", data=list(data)[:2] if choose else None
        )
        return chosen, ("model.norm:model.norm",)

    return cut


def _both(depth: Cut, width: Cut) -> Cut:
    def cut(model: nn.Module, data: Any) -> tuple[nn.Module, tuple[str, ...]]:
        shallow, _ = depth(model, data)  # blocks chosen on the dense model, then the kept ones narrowed
        return width(shallow, data)

    return cut


def _three_quarters(config: dict[str, Any]) -> WidthTarget:
    """Half the query heads (every key/value group kept, so hidden_size stays a multiple of the heads)
    and the MLP width that brings a decoder layer to 3/4 of its parameters."""
    h, q, kv, m = (config[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads",
                                        "intermediate_size"))  # fmt: skip
    d = config.get("head_dim") or h // q
    layer = 2 * h * d * (q + kv) + 3 * h * m
    kept_attention = h * d * q + 2 * h * d * kv  # q and o halved, k and v whole
    return WidthTarget(q // 2, kv, intermediate=round((0.75 * layer - kept_attention) / (3 * h)))


def cuts(config: dict[str, Any], choose_blocks: bool = True) -> dict[str, Cut]:
    """Each about 0.5x of the decoder layers' parameters for a config of llama-pydocs' proportions."""
    heads, kv, mlp = config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]
    layers = config["num_hidden_layers"]
    return {
        "width": _width(WidthTarget(heads // 2, kv // 2, intermediate=mlp // 2)),
        "depth": _depth(layers // 2, choose_blocks),
        "hidden": _width(WidthTarget(hidden=config["hidden_size"] // 2)),
        # 2/3 of the blocks x 3/4 of each kept block
        "both": _both(_depth(round(layers * 2 / 3), choose_blocks), _width(_three_quarters(config))),
    }  # fmt: skip


def decoder_params(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if ".layers." in n)


def _selected() -> list[str]:
    return os.environ.get("STRUCTURED_CUTS", "width,depth,hidden,both,tp").split(",")


@benchmark("llm_structured")
def structured(quick: bool) -> Table:
    task = ts.zoo.get("llama-pydocs")
    base = task.model().eval()
    data = task.calibration_loader(batches=2 if quick else 8)
    dense = task.perplexity(base)
    lr = float(os.environ.get("STRUCTURED_LR", "1e-3"))
    fraction = 0.02 if quick else 0.10
    table = Table(f"llama-pydocs: structured pruning to 0.5x decoder parameters, then distillation on "
                  f"<= {fraction:.0%} of the baseline's tokens",
                  ["cut", "decoder params", "one-shot ppl", "one-shot %", "recovered ppl", "recovered %",
                   "tokens", "seconds"])  # fmt: skip
    table.rows.append(["dense", 1.0, dense, 0.0, dense, 0.0, 0, 0])
    base_params = decoder_params(base)
    config = base.config.to_dict()
    for name in [c for c in _selected() if c != "tp"]:
        start = time.perf_counter()
        model, features = cuts(config)[name](base, data)
        one_shot = task.perplexity(model)
        tokens = recover(task, model, base, fraction, lr, alpha=1.0, features=features)
        ppl = task.perplexity(model)
        share, seconds = decoder_params(model) / base_params, round(time.perf_counter() - start)
        table.rows.append([name, share, one_shot, 100 * (one_shot / dense - 1), ppl, 100 * (ppl / dense - 1),
                           tokens, seconds])  # fmt: skip
    if "tp" in _selected():
        rows, notes = peer_rows(dense, quick)
        table.rows += rows
        table.notes += notes
    table.notes.append(f"dense test perplexity {dense:.2f}; baseline trained on {BASELINE_TOKENS} tokens")
    table.notes.append(f"distillation: KL on logits (T=1) + MSE of the final normed hidden states, "
                       f"AdamW peak lr {lr:g}, warm-up 10%, cosine; target: within 15% of dense")  # fmt: skip
    return table


def _tokens_per_s(model: nn.Module, ids: torch.Tensor, new: int, repeats: int) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s): medians over `repeats`; decode is greedy with a KV cache."""
    prefill, decode = [], []
    with torch.inference_mode():
        model(input_ids=ids[:, :8])  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            mid = time.perf_counter()
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            for _ in range(new):
                out = model(input_ids=token, past_key_values=cache, use_cache=True)
                cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            end = time.perf_counter()
            prefill.append(ids.numel() / (mid - start))
            decode.append(new * ids.shape[0] / (end - mid))
    return statistics.median(prefill), statistics.median(decode)


@benchmark("llm_structured_speed")
def speed(quick: bool) -> Table:
    import transformers

    config = dict(MEMORY_CONFIG, num_hidden_layers=4) if quick else MEMORY_CONFIG
    torch.manual_seed(0)
    dense = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config["vocab_size"], (1, 128), generator=gen)
    calib = [(torch.randint(0, config["vocab_size"], (1, 64), generator=gen), None)]
    new, repeats = (4, 1) if quick else (16, 3)
    threads = torch.get_num_threads()
    table = Table(f"Speed of the same cuts on a {sum(p.numel() for p in dense.parameters()) / 1e9:.2f} B "
                  f"Llama (TinyLlama-1.1B shape, random float32 weights), PyTorch eager, {threads} thread(s)",
                  ["model", "decoder params", "prefill tok/s", "decode tok/s", "prefill x",
                   "decode x"])  # fmt: skip
    p0, d0 = _tokens_per_s(dense, ids, new, repeats)
    table.rows.append(["dense", 1.0, p0, d0, 1.0, 1.0])
    base = decoder_params(dense)
    for name in [c for c in _selected() if c != "tp"]:
        model, _ = cuts(config, choose_blocks=False)[name](dense, calib)  # which blocks: same speed
        p, d = _tokens_per_s(model, ids, new, repeats)
        table.rows.append([name, decoder_params(model) / base, p, d, p / p0, d / d0])
        del model
    table.notes.append(f"prefill of 1 x {ids.shape[1]} tokens, then {new} greedy tokens with the KV cache; "
                       f"medians of {repeats}; target >= 1.6x both")  # fmt: skip
    return table
