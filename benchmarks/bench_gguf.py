"""GGUF files we write, run in llama.cpp (llama-cpp-python), beside llama.cpp's own quantizer.

- `gguf_llama`: `llama-pydocs` written as F32, our Q8_0 and our Q4_0 (round-to-nearest and GPTQ, the
  decoder blocks' Linear layers; embedding F32, tied head), test perplexity in torch and through
  llama.cpp on the same windows (BOS + 255 tokens, every token predicted once, logits of every
  position); llama.cpp's `llama_model_quantize` on the F32 file (Q4_0, Q4_K_M, Q3_K_S, Q2_K), each
  without and with an importance matrix (mean squared inputs of each Linear over our calibration
  windows, passed through `llama_model_quantize_params.imatrix`); decode tokens/s, same threads.
- `gguf_1b`: a random-weight Llama of TinyLlama-1.1B's shape, F16 GGUF against our Q4_0 GGUF:
  decode tokens/s (same threads) and file size.

llama-cpp-python is imported from `/work/peers/llamacpp` (`TORCHSLIM_LLAMACPP`), built from its sdist
there (`pip install --no-deps --target`), never a dependency; without it the benchmark says so. Models
load with `use_extra_bufts=False`: this build's weight repacking (AMX on Xeons) crashed on Q8_0/Q4_0.
"""

from __future__ import annotations

import copy
import ctypes
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

import torchslim as ts
from benchmarks.harness import Table, benchmark
from torchslim.interop.gguf_out import save_gguf

PEERS = Path(os.environ.get("TORCHSLIM_LLAMACPP", "/work/peers/llamacpp"))
THREADS = int(os.environ.get("OMP_NUM_THREADS", "2"))
WINDOW = 256
LLAMA_TYPES = {"Q4_0": 2, "Q4_K_M": 15, "Q3_K_S": 11, "Q2_K": 10}  # llama_ftype
INCLUDE = ("model.layers.*",)
BIG = {
    "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
    "num_key_value_heads": 4, "head_dim": 64, "vocab_size": 32000, "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}  # fmt: skip
"""TinyLlama-1.1B's shape (random weights)."""


def llama_cpp() -> Any:
    """The llama_cpp package from the peers folder, models loading without extra buffer types."""
    if str(PEERS) not in sys.path:
        sys.path.insert(0, str(PEERS))
    import llama_cpp as lc

    low = lc.llama_cpp
    if not getattr(low, "_torchslim_patched", False):
        default = low.llama_model_default_params

        def params() -> Any:
            p = default()
            p.use_extra_bufts = False
            return p

        low.llama_model_default_params = params
        low._torchslim_patched = True
    return lc


def available() -> bool:
    return (PEERS / "llama_cpp").is_dir()


def load(path: Path, logits_all: bool = True, n_ctx: int = WINDOW) -> Any:
    return llama_cpp().Llama(
        model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=THREADS,
        n_threads_batch=THREADS, logits_all=logits_all, verbose=False,
    )  # fmt: skip


def cpp_perplexity(path: Path, windows: list[torch.Tensor]) -> float:
    """Our protocol through llama.cpp: each window evaluated alone, every position's logits scored."""
    llm = load(path)
    nll, count = 0.0, 0
    for window in windows:
        ids = [int(i) for i in window]
        llm.reset()
        llm.eval(ids)
        logits = torch.from_numpy(np.array(llm.scores[: len(ids) - 1], dtype=np.float64))
        target = torch.tensor(ids[1:])
        nll -= float(torch.log_softmax(logits, -1).gather(1, target[:, None]).sum())
        count += len(ids) - 1
    llm.close()
    return math.exp(nll / count)


def decode_rate(path: Path, prompt: list[int], steps: int, repeats: int = 3) -> float:
    """Tokens/s of one-token decode steps after a prompt (best of `repeats`; fixed tokens fed)."""
    llm = load(path, logits_all=False, n_ctx=len(prompt) + steps + 1)
    best = 0.0
    for _ in range(repeats):
        llm.reset()
        llm.eval(prompt)
        start = time.perf_counter()
        for tok in prompt[:steps]:
            llm.eval([tok])
        best = max(best, steps / (time.perf_counter() - start))
    llm.close()
    return best


def cpp_quantize(src: Path, dest: Path, ftype: int, imatrix: dict[str, np.ndarray] | None) -> None:
    lc = llama_cpp()
    params = lc.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = THREADS
    keep: list[Any] = []
    if imatrix:
        entries = (lc.llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for entry, (name, values) in zip(entries, imatrix.items(), strict=False):
            data = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(data)
            entry.name = name.encode()
            entry.data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entry.size = data.size
        # the last entry stays zeroed: its NULL name ends the list
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(lc.llama_cpp.llama_model_imatrix_data))
        keep.append(entries)
    rc = lc.llama_model_quantize(str(src).encode(), str(dest).encode(), ctypes.byref(params))
    if rc:
        raise RuntimeError(f"llama_model_quantize({ftype}) failed with {rc}")


def importance_matrix(model: nn.Module, batches: list[Any]) -> dict[str, np.ndarray]:
    """llama.cpp's imatrix: per GGUF weight, the mean over calibration tokens of each input squared."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)  # type: ignore[union-attr]
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str) -> Any:
        def add(mod: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + x.pow(2).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]

        return add

    handles = []
    for name, mod in model.named_modules():
        gguf_name = names.get_name(f"{name}.weight", try_suffixes=(".weight",))
        if isinstance(mod, nn.Linear) and name.startswith("model.layers.") and gguf_name:
            handles.append(mod.register_forward_pre_hook(hook(gguf_name)))
    with torch.no_grad():
        for inputs, _ in batches:
            model(**inputs)
    for h in handles:
        h.remove()
    return {n: (sums[n] / counts[n]).float().numpy() for n in sums}


def _ours(base: nn.Module, bits: int, method: str, calib: list[Any]) -> nn.Module:
    model = copy.deepcopy(base)
    config = ts.QuantConfig(bits=bits, weights="per_group", group_size=32, symmetric=True, method=method,
                            include=INCLUDE)  # fmt: skip
    ts.quantize_(model, config, data=calib if method == "gptq" else None)
    return model


def _mb(path: Path) -> float:
    return path.stat().st_size / 2**20


@contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir=os.environ.get("TORCHSLIM_BENCH_TMP")) as tmp:
        yield Path(tmp)


Variant = tuple[str, str, "nn.Module | None", Path]
"""(GGUF type, who wrote it, our model when we did, the file)."""


def _files(tmp: Path, base: nn.Module, calib: list[Any]) -> list[Variant]:
    """Our F32, Q8_0 and Q4_0 files, then llama.cpp's quantizer on the F32 one."""
    dense = tmp / "F32.gguf"
    save_gguf(base, dense)
    variants: list[Variant] = [("F32", "torchslim", base, dense)]
    for label, bits, method in (("Q8_0", 8, "rtn"), ("Q4_0", 4, "rtn"), ("Q4_0", 4, "gptq")):
        model, path = _ours(base, bits, method, calib), tmp / f"{label}-{method}.gguf"
        save_gguf(model, path)
        variants.append((label, f"torchslim {method}", model, path))
    imatrix = importance_matrix(base, calib)
    for label, ftype in LLAMA_TYPES.items():
        for use in (False, True):
            path = tmp / f"cpp-{label}-{int(use)}.gguf"
            cpp_quantize(dense, path, ftype, imatrix if use else None)
            variants.append((label, "llama.cpp" + (" + imatrix" if use else ""), None, path))
    return variants


@benchmark("gguf_llama")
def gguf_llama(quick: bool) -> Table:
    table = Table(
        "llama-pydocs as GGUF in llama.cpp: test perplexity in torch and in llama.cpp",
        ["file", "written by", "MB", "torch ppl", "llama.cpp ppl", "diff %", "decode tok/s"],
    )
    if not available():
        table.notes.append(f"llama-cpp-python not found in {PEERS}: nothing measured")
        return table
    task = ts.zoo.get("llama-pydocs")
    base = task.model().eval()
    windows = task.test_windows[:8] if quick else task.test_windows
    calib = task.calibration_loader(batches=2 if quick else 8)
    prompt, steps = [int(i) for i in windows[0][:65]], 16 if quick else 64
    with _workdir() as tmp:
        for label, who, model, path in _files(tmp, base, calib):
            ours = lm_perplexity(model, windows) if model is not None else None
            theirs = cpp_perplexity(path, windows)
            diff = 100 * (theirs / ours - 1) if ours else None
            rate = round(decode_rate(path, prompt, steps)) if who != "llama.cpp + imatrix" else None
            table.rows.append([label, who, round(_mb(path), 2), ours, theirs, diff, rate])
        save_gguf(base, tmp / "F16.gguf", float_type="f16")
        rate = round(decode_rate(tmp / "F16.gguf", prompt, steps))
        table.rows.append(["F16", "torchslim", round(_mb(tmp / "F16.gguf"), 2), None, None, None, rate])
        table.notes.extend(_llama_notes(task, tmp / "Q4_0-gptq.gguf", quick))
    table.notes.extend(
        [
            f"{len(windows)} test windows (BOS + up to 255 tokens); llama.cpp on {THREADS} threads",
            "ours: decoder Linear layers quantized (symmetric, groups of 32), embedding F32, tied head; "
            "llama.cpp's quantizer picks its own types for the tied embedding (which is also the head)",
            "intermediate size 688 is not a multiple of 256: llama.cpp's K types fall back to other "
            "types for ffn_down",
        ]
    )
    return table


def lm_perplexity(model: nn.Module, windows: list[torch.Tensor]) -> float:
    from torchslim.tasks import lm

    return lm.perplexity(model, windows)


def _llama_notes(task: Any, path: Path, quick: bool) -> list[str]:
    """Does llama.cpp tokenize test texts as our tokenizer does, and what it generates."""
    llm = load(path, logits_all=False, n_ctx=WINDOW)
    texts = task.texts("test")[: 20 if quick else 200]
    same = sum(
        llm.tokenize(t.encode(), add_bos=False, special=False)
        == task.tokenizer(t, add_special_tokens=False)["input_ids"]
        for t in texts
    )
    out = llm.create_completion("Return the", max_tokens=24, temperature=0.0)
    llm.close()
    text = out["choices"][0]["text"].replace("\n", " ").replace("|", "/")
    return [
        f"tokenizer: llama.cpp's ids equal ours on {same}/{len(texts)} test docstrings",
        f"our Q4_0 (GPTQ) file generating greedily in llama.cpp: 'Return the{text}'",
    ]


# our Q4_0 files of the 1 B model: the head and decoder only (the embedding a 2-byte lookup table, as
# before), and everything, as llama.cpp's own Q4_0 type does (it quantizes token_embd too)
Q4_1B = (
    ("q4", "Q4_0 (torchslim: decoder and head; embedding F16)", ("model.layers.*", "lm_head")),
    (
        "q4-all",
        "Q4_0 (torchslim: decoder, head and embedding)",
        ("model.layers.*", "lm_head", "model.embed_tokens"),
    ),
)


@benchmark("gguf_1b")
def gguf_1b(quick: bool) -> Table:
    table = Table("A ~1.1 B-parameter Llama (random weights) in llama.cpp: F16 GGUF against our Q4_0 GGUF",
                  ["file", "MB", "size / F16", "decode tok/s", "speed / F16"])  # fmt: skip
    if not available():
        table.notes.append(f"llama-cpp-python not found in {PEERS}: nothing measured")
        return table
    task = ts.zoo.get("llama-pydocs")
    torch.manual_seed(0)
    model = task.build(**(dict(BIG, num_hidden_layers=4) if quick else BIG)).eval()
    params = sum(p.numel() for p in model.parameters())
    steps = 8 if quick else 24
    with _workdir() as tmp:
        save_gguf(model, tmp / "f16.gguf", float_type="f16")
        files = {"f16": "F16"}
        for name, label, include in Q4_1B:
            quantized = copy.deepcopy(model)
            config = ts.QuantConfig(bits=4, weights="per_group", group_size=32, symmetric=True, method="rtn",
                                    include=include)  # fmt: skip
            ts.quantize_(quantized, config)
            save_gguf(quantized, tmp / f"{name}.gguf", float_type="f16")
            files[name] = label
            del quantized
        del model
        prompt = list(range(1, 33))
        rates = {name: decode_rate(tmp / f"{name}.gguf", prompt, steps, repeats=2) for name in files}
        sizes = {name: _mb(tmp / f"{name}.gguf") for name in files}
    for name, label in files.items():
        table.rows.append([label, round(sizes[name]), sizes[name] / sizes["f16"], rates[name],
                           rates[name] / rates["f16"]])  # fmt: skip
    best = min((n for n in files if n != "f16"), key=lambda n: sizes[n])
    q4, f16 = rates[best], rates["f16"]
    sizes_ratio = sizes[best] / sizes["f16"]
    table.notes.append(
        f"{params / 1e9:.2f} B parameters; {THREADS} threads; {steps} decode steps after 32 tokens"
    )
    table.notes.append(
        "targets: 4-bit decode >= 2.5x F16 "
        + ("met" if q4 >= 2.5 * f16 else "NOT met")
        + f", file <= 0.3x F16 {'met' if sizes_ratio <= 0.3 else 'NOT met'} ({files[best]})"
    )
    return table
