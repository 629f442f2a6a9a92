"""LLM weight quantization: torchslim RTN / GPTQ / AWQ beside llm-compressor's GPTQ and RTN
(QuantizationModifier) on the same model, calibration windows and evaluation.

- `llm_quant_llama`: the `llama-pydocs` causal LM, decoder Linears (lm_head and embeddings kept, as
  llm-compressor's `ignore=["lm_head"]`), symmetric grids at per-channel 4 and 3 bits, 2 bits g64 and
  4 bits g128, plus W8A8 (SmoothQuant + dynamic activations) and a defaults row (`QuantConfig(bits=4)`).
  Perplexity on the first `EVAL_WINDOWS` test windows (the same for every row).
- `llm_quant_minilm`: the pretrained MiniLM, encoder Linears at int4 g128 and int3 g128 weight-only
  (also `gptq+tune`, the block-tuned GPTQ); cosine to the fp32 embeddings on the held sentences.

`llama_perplexities(settings)` returns `{row name: perplexity}` so other comparisons (llama.cpp's
quantizers) can add their rows beside these. llm-compressor is imported from `/work/peers/llmc`
(`bench_llm_sparse.PEERS`); without it its rows are skipped.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch.nn as nn

import torchslim as ts
from benchmarks.bench_llm_sparse import PEERS, _input_ids, peer_available, peer_oneshot
from benchmarks.harness import Table, benchmark

SETTINGS: list[tuple[str, int, int | None]] = [
    ("w4 per-channel", 4, None),
    ("w3 per-channel", 3, None),
    ("w2 g64", 2, 64),
    ("w4 g128", 4, 128),
]
"""(label, bits, group size or None for per channel); symmetric grids, as llm-compressor's W4A16."""
OURS = ("rtn", "gptq", "awq", "awq+gptq")
MINILM_METHODS = tuple(
    m for m in os.environ.get("TORCHSLIM_MINILM_METHODS", ",".join((*OURS, "gptq+tune"))).split(",") if m
)
"""The explicit methods of `llm_quant_minilm` (the defaults row always runs); a comma list in
TORCHSLIM_MINILM_METHODS runs only those (empty: only the defaults), where the shared CPU is slow."""
EVAL_WINDOWS = 64
CALIB_BATCHES = 8


def our_config(bits: int, group: int | None, method: str) -> ts.QuantConfig:
    weights = "per_group" if group else "per_channel"
    return ts.QuantConfig(bits=bits, weights=weights, group_size=group or 128, symmetric=True, method=method)  # type: ignore[arg-type]


def peer_scheme(bits: int, group: int | None) -> dict[str, Any]:
    """llm-compressor refuses groups that don't divide a layer's columns (down_proj's 688 inputs):
    there, as torchslim does, down_proj is quantized per channel."""

    def weights(strategy: str, size: int | None) -> dict[str, Any]:
        return {"num_bits": bits, "type": "int", "symmetric": True, "strategy": strategy, "group_size": size}

    if not group:
        return {"group_0": {"targets": ["Linear"], "weights": weights("channel", None)}}
    return {"group_0": {"targets": ["re:.*(q|k|v|o|gate|up)_proj$"], "weights": weights("group", group)},
            "group_1": {"targets": ["re:.*down_proj$"], "weights": weights("channel", None)}}  # fmt: skip


def peer_modifiers(bits: int, group: int | None, ignore: list[str]) -> dict[str, Any]:
    if str(PEERS) not in sys.path:
        sys.path.append(str(PEERS))  # appended: the environment's own packages win
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    groups = peer_scheme(bits, group)
    return {"llm-compressor gptq": GPTQModifier(config_groups=groups, ignore=ignore),
            "llm-compressor rtn": QuantizationModifier(config_groups=groups, ignore=ignore)}  # fmt: skip


def peer_w8a8(ignore: list[str]) -> Any:
    from llmcompressor.modifiers.quantization import GPTQModifier
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

    return [
        SmoothQuantModifier(smoothing_strength=0.5),
        GPTQModifier(scheme="W8A8", targets="Linear", ignore=ignore),
    ]


Setting = tuple[str, int, "int | None"]


def eval_windows(task: Any, quick: bool) -> list[Any]:
    """The test windows every llama-pydocs quantization row is scored on."""
    return list(task.test_windows[: 16 if quick else EVAL_WINDOWS])


def calibration(task: Any, quick: bool) -> list[Any]:
    return list(task.calibration_loader(batches=2 if quick else CALIB_BATCHES))


Keep = Callable[[str, nn.Module], None]


def llama_perplexities(
    quick: bool = False,
    settings: list[Setting] | None = None,
    peers: bool = True,
    methods: tuple[str, ...] = OURS,
    extras: bool = True,
    keep: Keep | None = None,
) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """`{"<setting> | <method>": perplexity}`, `{same key: seconds}` and facts (dense, windows).

    `methods` are ours to run per setting, `extras` adds the defaults and W8A8 rows; `keep(key, model)`
    sees each of our quantized models (e.g. to write it as GGUF) before it is dropped."""
    from torchslim.tasks import lm as lm_metrics

    task = ts.zoo.get("llama-pydocs")
    base = task.model().eval()
    data = calibration(task, quick)
    windows = eval_windows(task, quick)

    def ppl(model: nn.Module) -> float:
        return float(lm_metrics.perplexity(model, windows))

    out: dict[str, float] = {"dense | -": ppl(base)}
    secs: dict[str, float] = {"dense | -": 0.0}
    batches = [{"input_ids": _input_ids(b)} for b in data]
    use_peers = peers and peer_available()

    def ours(key: str, config: ts.QuantConfig) -> None:
        model = copy.deepcopy(base)
        start = time.perf_counter()
        ts.quantize_(model, config, data=data)
        secs[key], out[key] = time.perf_counter() - start, ppl(model)
        if keep is not None:
            keep(key, model)

    for label, bits, group in settings or (SETTINGS[:1] if quick else SETTINGS):
        for method in methods:
            ours(f"{label} | torchslim {method}", our_config(bits, group, method))
        if use_peers:
            for name, modifier in peer_modifiers(bits, group, ["lm_head"]).items():
                model, sec = peer_oneshot(base, modifier, batches, task.tokenizer)
                secs[f"{label} | {name}"], out[f"{label} | {name}"] = sec, ppl(model)
    if extras:
        ours("w4 defaults | torchslim QuantConfig(bits=4)", ts.QuantConfig(bits=4))
        ours("w8a8 | torchslim smoothquant+rtn", ts.QuantConfig(bits=8, activations="dynamic"))
    if use_peers and extras:
        model, sec = peer_oneshot(base, peer_w8a8(["lm_head"]), batches, task.tokenizer)
        secs["w8a8 | llm-compressor smoothquant+gptq"] = sec
        out["w8a8 | llm-compressor smoothquant+gptq"] = ppl(model)
    calib = sum(int(b["input_ids"].shape[0]) for b in batches)
    facts = {
        "windows": len(windows),
        "calibration_windows": calib,
        "intermediate": base.config.intermediate_size,
    }
    return out, secs, facts


@benchmark("llm_quant_llama")
def llama(quick: bool) -> Table:
    ppls, secs, facts = llama_perplexities(quick)
    dense = ppls["dense | -"]
    table = Table("llama-pydocs: decoder Linears quantized weight-only (and W8A8), test perplexity",
                  ["setting", "method", "perplexity", "increase %", "seconds"])  # fmt: skip
    for key, value in ppls.items():
        setting, method = key.split(" | ")
        table.rows.append([setting, method, value, 100 * (value / dense - 1), round(secs[key], 1)])
    table.notes.append(
        f"perplexity on the first {facts['windows']} test windows of 256 tokens; calibration "
        f"{facts['calibration_windows']} training windows, the same for both tools; symmetric grids"
    )
    table.notes.append(
        f"intermediate size {facts['intermediate']} is not a multiple of 64 or 128: torchslim quantizes "
        "down_proj per channel in the grouped settings, and so does llm-compressor here (it refuses "
        "ragged groups)"
    )
    table.notes.append("W8A8 here is simulated in PyTorch (dynamic activation grids, integer weights)")
    return table


@benchmark("llm_quant_minilm")
def minilm(quick: bool) -> Table:
    task = ts.zoo.get("minilm")
    base = task.model().eval()
    data = task.calibration_loader(batches=4 if quick else 16)
    table = Table("MiniLM: encoder Linears weight-only, cosine to fp32 on held sentences",
                  ["setting", "method", "cosine", "seconds"])  # fmt: skip
    include = ("bert.encoder.layer.*",)
    for label, bits in (("int4 g128", 4), ("int3 g128", 3)):
        for method in MINILM_METHODS:
            model = copy.deepcopy(base)
            config = ts.QuantConfig(
                bits=bits, weights="per_group", group_size=128, method=method, include=include
            )  # type: ignore[arg-type]
            start = time.perf_counter()
            ts.quantize_(model, config, data=data)
            table.rows.append([label, f"torchslim {method}", task.evaluate(model),
                               round(time.perf_counter() - start, 1)])  # fmt: skip
        defaults = copy.deepcopy(base)
        start = time.perf_counter()
        ts.quantize_(
            defaults, ts.QuantConfig(bits=bits, weights="per_group", group_size=128, include=include), data
        )
        table.rows.append([label, "torchslim defaults (auto)", task.evaluate(defaults),
                           round(time.perf_counter() - start, 1)])  # fmt: skip
    table.notes.append("targets: int4 g128 >= 0.99, int3 g128 >= 0.97; defaults pick symmetry (asymmetric)")
    return table


_CHILD = """
import json, sys, torch, torchslim as ts
from torchslim.llm.quant_checkpoint import quantize_checkpoint
src, out, windows, method = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
gen = torch.Generator().manual_seed(0)
data = [(torch.randint(0, 32000, (1, 256), generator=gen), None) for _ in range(windows)]
config = ts.QuantConfig(bits=4, weights="per_group", group_size=128, symmetric=True, method=method)
rep = quantize_checkpoint(src, out, config, data)
size = sum(f.stat().st_size for f in __import__("pathlib").Path(out).glob("*.safetensors"))
print(json.dumps({k: rep.chosen[k] for k in ("peak_rss_mb", "blocks")} | {"out_bytes": size}))
"""
MEMORY_METHOD = os.environ.get("TORCHSLIM_MEMORY_METHOD", "rtn")
"""RTN by default: GPTQ's 5632-wide Hessian inversions per block do not finish 22 blocks on 2 shared
cores in the time a benchmark has here; the engine, the shard store and the writer are the same."""


@benchmark("llm_quant_memory")
def memory(quick: bool) -> Table:
    from benchmarks.bench_llm_sparse import MEMORY_CONFIG, run_on_checkpoint

    config = dict(MEMORY_CONFIG, num_hidden_layers=4) if quick else MEMORY_CONFIG
    table = Table(f"Quantizing a ~1 B-parameter Llama checkpoint (random bf16 weights) from disk, int4 g128 "
                  f"{MEMORY_METHOD}, written as compressed-tensors",
                  ["parameters", "checkpoint MB", "peak RSS MB", "peak / checkpoint", "output / checkpoint",
                   "seconds"])  # fmt: skip
    size, seconds, extra = run_on_checkpoint(
        _CHILD, ["2", MEMORY_METHOD], config, quick, "quantizing the checkpoint"
    )
    peak = float(extra["peak_rss_mb"])
    table.rows.append([f"{size / 2 / 1e9:.2f} B", round(size / 2**20), peak, peak / (size / 2**20),
                       extra["out_bytes"] / size, round(seconds)])  # fmt: skip
    table.notes.append(f"calibration: 2 random windows of 256 tokens; {extra['blocks']} blocks, one resident")
    met = "met" if peak < size / 2**21 else "NOT met"
    table.notes.append(f"target: peak below half the checkpoint {met}; embeddings and lm_head stay bf16")
    return table
