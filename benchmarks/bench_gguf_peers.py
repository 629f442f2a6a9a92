"""llama.cpp's own quantizer beside ours and llm-compressor's on `llama-pydocs` (issue 18's targets).

`gguf_peers`: the dense model written as F32 GGUF (our `gguf` output) is quantized by llama.cpp's
`llama_model_quantize` (default params; Q4_0, Q4_K_M, Q3_K_S, Q2_K, Q8_0), each K type without and
with an importance matrix computed by llama.cpp's `llama-imatrix` tool on our calibration windows
(decoded to text); beside them, per setting of `bench_llm_quant.SETTINGS`, our quantized models written
as GGUF (our grids in GGUF block types where they fit, else dequantized F32) and llm-compressor's GPTQ
(torch only). Every GGUF is scored through llama.cpp on the same test windows as `llm_quant_llama`
(`bench_llm_quant.eval_windows`), with `bench_gguf.cpp_perplexity` (each window alone, all positions).

`llama-imatrix` is not part of the python package; built here against the package's own libraries
(`/work/peers/llamacpp/lib`) from the sdist's source tree, one file (15 s):
`g++ -O2 -std=c++17 -Icommon -Iinclude -Iggml/include -Ivendor tools/imatrix/imatrix.cpp -o llama-imatrix
-L$LIB -lllama-common -lllama -lggml -lggml-base -Wl,--disable-new-dtags,-rpath,$LIB -pthread`
(`TORCHSLIM_LLAMA_IMATRIX` names the binary). Its GGUF output is read as llama-quantize reads it (sums
over counts) and passed through `llama_model_quantize_params.imatrix`: the file equals, byte for byte,
the one `llama-quantize --imatrix` writes (checked once for Q4_K_M). Without the tool the imatrix is
ours (`bench_gguf.importance_matrix`, the same statistic in torch), labelled so.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn

import torchslim as ts
from benchmarks import bench_gguf as gg
from benchmarks import bench_llm_quant as lq
from benchmarks.harness import Table, benchmark
from torchslim.interop.gguf_out import save_gguf

IMATRIX_TOOL = Path(os.environ.get("TORCHSLIM_LLAMA_IMATRIX", "/work/peers/lcpp-tools/llama-imatrix"))
CPP_TYPES = dict(gg.LLAMA_TYPES, Q8_0=7)  # llama_ftype
NEAREST: dict[str, tuple[str, ...]] = {
    "w4 per-channel": ("Q4_K_M", "Q4_0"),
    "w3 per-channel": ("Q3_K_S",),
    "w2 g64": ("Q2_K",),
    "w4 g128": (),
}
"""llama.cpp's nearest types per setting; the first is the one issue 18's target names."""
METHODS = ("gptq", "awq+gptq")
KEPT = "torchslim gptq, ffn_down kept F32"
"""Like for like with llama.cpp's K files, whose ffn_down (688 inputs) falls back to F16."""
Row = dict[str, Any]


def calibration_text(task: Any, calib: list[Any]) -> str:
    """Our calibration windows as text (BOS dropped), for llama-imatrix to tokenize and cut again."""
    return "".join(task.tokenizer.decode(ids[1:]) for inputs, _ in calib for ids in inputs["input_ids"])


def read_imatrix(path: Path) -> dict[str, np.ndarray]:
    """llama-imatrix's GGUF (`<weight>.in_sum2`, `<weight>.counts`) as llama-quantize loads it: the
    mean of each input squared (dense models: one count per weight)."""
    import gguf

    tensors = {t.name: np.array(t.data, dtype=np.float64) for t in gguf.GGUFReader(path).tensors}
    out = {}
    for name, sums in tensors.items():
        if name.endswith(".in_sum2"):
            weight = name.removesuffix(".in_sum2")
            count = float(tensors[f"{weight}.counts"].reshape(-1)[0])
            out[weight] = (sums / count if count > 0 else np.ones_like(sums)).astype(np.float32)
    return out


def llama_imatrix(dense: Path, text: str, tmp: Path) -> tuple[dict[str, np.ndarray], str]:
    """(imatrix, how it was computed): llama.cpp's tool where built, else ours in torch (caller)."""
    (tmp / "calib.txt").write_text(text)
    out = tmp / "imatrix.gguf"
    cmd = [str(IMATRIX_TOOL), "-m", str(dense), "-f", str(tmp / "calib.txt"), "-o", str(out),
           "-c", str(gg.WINDOW), "-b", str(gg.WINDOW), "-t", str(gg.THREADS), "--no-ppl"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"llama-imatrix failed:\n{done.stderr[-3000:]}")
    said = next((ln for ln in done.stderr.splitlines() if "computing over" in ln), "")
    return read_imatrix(out), f"llama-imatrix, {said.split('compute_imatrix: ')[-1].strip()}"


def tensor_types(path: Path) -> str:
    """The GGUF types of a file's decoder Linear weights and of its embedding, e.g. 'Q4_K x28, F16 x6
    (ffn_down); embd Q6_K'."""
    import gguf

    kinds: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    embd = "?"
    for t in gguf.GGUFReader(path).tensors:
        if t.name == "token_embd.weight":
            embd = t.tensor_type.name
        elif t.name.startswith("blk.") and len(t.shape) == 2:
            kinds[t.tensor_type.name][t.name.split(".")[2]] += 1
    parts = []
    for kind, names in sorted(kinds.items(), key=lambda kv: -sum(kv[1].values())):
        where = f" ({', '.join(sorted(names))})" if len(kinds) > 1 and len(names) <= 2 else ""
        parts.append(f"{kind} x{sum(names.values())}{where}")
    return f"{', '.join(parts)}; embd {embd}"


def _row(setting: str, method: str, path: Path | None, windows: list[Any], torch_ppl: float | None,
         seconds: float) -> Row:  # fmt: skip
    row: Row = {"setting": setting, "method": method, "torch": torch_ppl, "seconds": seconds}
    if path is not None:
        row |= {"types": tensor_types(path), "mb": gg._mb(path), "cpp": gg.cpp_perplexity(path, windows)}
    return row


def _kept_down(base: nn.Module, bits: int, group: int | None, calib: list[Any], windows: list[Any],
               tmp: Path) -> tuple[float, float, Row]:  # fmt: skip
    """Our GPTQ with ffn_down left float, as llama.cpp's K types leave it (F16): (torch ppl, seconds, row)."""
    from torchslim.tasks import lm

    model = copy.deepcopy(base)
    config = dataclasses.replace(lq.our_config(bits, group, "gptq"), exclude=("*down_proj",))
    start = time.perf_counter()
    ts.quantize_(model, config, data=calib)
    seconds = time.perf_counter() - start
    save_gguf(model, tmp / "kept.gguf")
    return float(lm.perplexity(model, windows)), seconds, _row("", KEPT, tmp / "kept.gguf", windows, None, 0)


def cpp_rows(dense: Path, tmp: Path, windows: list[Any], imatrix: dict[str, np.ndarray]) -> list[Row]:
    """llama.cpp's quantizer on our dense F32 file: each type plain, the K types also with the imatrix."""
    rows = []
    for label, ftype in CPP_TYPES.items():
        for use in (False, True) if label != "Q8_0" else (False,):
            path = tmp / f"cpp-{label}-{int(use)}.gguf"
            start = time.perf_counter()
            gg.cpp_quantize(dense, path, ftype, imatrix if use else None)
            who = f"llama.cpp {label}" + (" + imatrix" if use else "")
            row = _row(_setting_of(label), who, path, windows, None, time.perf_counter() - start)
            rows.append(row | {"label": label})
    return rows


def _setting_of(label: str) -> str:
    return next((s for s, types in NEAREST.items() if label in types), "w8" if label == "Q8_0" else label)


def _ordered(dense: Row, ours: dict[str, Row], ppls: dict[str, float], secs: dict[str, float],
             cpp: list[Row]) -> list[Row]:  # fmt: skip
    """Dense first; per setting ours, llm-compressor's, then llama.cpp's nearest types; other types last."""
    settings = list(dict.fromkeys(k.split(" | ")[0] for k in ppls if not k.startswith("dense")))
    rows = [dense]
    for setting in settings:
        for key, value in ppls.items():
            if key.startswith(f"{setting} | "):
                named = {"setting": setting, "method": key.split(" | ")[1], "torch": value}
                named["seconds"] = secs[key]
                rows.append(ours.get(key, {}) | named)
        rows.extend(r for r in cpp if r["setting"] == setting)
    return rows + [r for r in cpp if r["setting"] not in settings]


def _table(rows: list[Row], dense: Row) -> Table:
    table = Table(
        "llama-pydocs: llama.cpp's quantizer types beside torchslim and llm-compressor, perplexity in torch "
        "and in llama.cpp (same test windows)",
        ["setting", "method", "GGUF types (decoder Linears; embedding)", "MB", "torch ppl", "llama.cpp ppl",
         "increase % (torch)", "increase % (llama.cpp)", "seconds"],
    )  # fmt: skip
    for r in rows:
        inc_t = None if r["torch"] is None else 100 * (r["torch"] / dense["torch"] - 1)
        inc_c = None if r.get("cpp") is None else 100 * (r["cpp"] / dense["cpp"] - 1)
        mb = round(r["mb"], 2) if "mb" in r else None
        table.rows.append([r["setting"], r["method"], r.get("types", "- (torch only)"), mb, r["torch"],
                           r.get("cpp"), inc_t, inc_c, round(r["seconds"], 1)])  # fmt: skip
    return table


def target_notes(rows: list[Row], dense: Row) -> list[str]:
    """Issue 18's comparison per setting: ours against llm-compressor's GPTQ (torch) and llama.cpp's
    nearest type with the imatrix (llama.cpp), each increase in its own runtime."""
    by = {(r["setting"], r["method"]): r for r in rows}

    def inc(r: Row | None, key: str) -> float | None:
        return None if r is None or r.get(key) is None else 100 * (r[key] / dense[key] - 1)

    notes = []
    for setting, types in NEAREST.items():
        if not types or (setting, f"torchslim {METHODS[0]}") not in by:
            continue
        peer = inc(by.get((setting, "llm-compressor gptq")), "torch")
        cpp = next((inc(r, "cpp") for (s, m), r in by.items() if s == setting
                    and m.startswith(f"llama.cpp {types[0]} + imatrix")), None)  # fmt: skip
        for method in METHODS:
            ours = by.get((setting, f"torchslim {method}"))
            mine_t, mine_c = inc(ours, "torch"), inc(ours, "cpp")
            if mine_t is None or mine_c is None:
                continue
            met = (peer is None or mine_t <= peer) and (cpp is None or mine_c <= cpp)
            peer_s = "not run" if peer is None else f"{peer:+.3f}%"
            cpp_s = "not run" if cpp is None else f"{cpp:+.3f}%"
            notes.append(
                f"target {setting}, torchslim {method}: {mine_t:+.3f}% (torch) vs llm-compressor gptq "
                f"{peer_s}; "
                f"{mine_c:+.3f}% (llama.cpp) vs llama.cpp {types[0]} + imatrix {cpp_s}: "
                + ("met" if met else "NOT met")
            )
    return notes


@benchmark("gguf_peers")
def gguf_peers(quick: bool) -> Table:
    if not gg.available():
        table = Table("llama-pydocs: llama.cpp's quantizer types", ["setting"])
        table.notes.append(f"llama-cpp-python not found in {gg.PEERS}: nothing measured")
        return table
    task = ts.zoo.get("llama-pydocs")
    base = task.model().eval()
    windows, calib = lq.eval_windows(task, quick), lq.calibration(task, quick)
    with gg._workdir() as tmp:
        dense_path = tmp / "F32.gguf"
        save_gguf(base, dense_path)
        ours: dict[str, Row] = {}

        def keep(key: str, model: nn.Module) -> None:
            path = tmp / "ours.gguf"
            save_gguf(model, path)
            setting, method = key.split(" | ")
            ours[key] = _row(setting, method, path, windows, None, 0.0)

        ppls, secs, facts = lq.llama_perplexities(quick, methods=METHODS, extras=False, keep=keep)
        dense = _row("dense", "torchslim F32", dense_path, windows, ppls["dense | -"], 0.0)
        for setting, bits, group in lq.SETTINGS[:1] if quick else lq.SETTINGS:
            if NEAREST[setting]:
                key = f"{setting} | {KEPT}"
                ppls[key], secs[key], ours[key] = _kept_down(base, bits, group, calib, windows, tmp)
        if IMATRIX_TOOL.is_file():
            imatrix, source = llama_imatrix(dense_path, calibration_text(task, calib), tmp)
        else:
            imatrix, source = gg.importance_matrix(base, calib), "torch, llama-imatrix not built"
        cpp = cpp_rows(dense_path, tmp, windows, imatrix)
    rows = _ordered(dense, ours, ppls, secs, cpp)
    table = _table(rows, dense)
    table.notes.extend(target_notes(rows, dense))
    table.notes.extend(_notes(facts, source, len(imatrix)))
    return table


def _notes(facts: dict[str, Any], source: str, entries: int) -> list[str]:
    return [
        f"perplexity on the first {facts['windows']} test windows (BOS + 255 tokens), in torch and through "
        f"llama.cpp (each window alone, every position scored; {gg.THREADS} threads); calibration "
        f"{facts['calibration_windows']} training windows for ours, llm-compressor and the imatrix",
        f"imatrix: {source}, {entries} weights (the decoder Linears)",
        "ours: decoder Linears, symmetric grids; 4-bit and narrower grids in whole blocks of 32 are written "
        "as Q4_0 blocks (same integers, fp16 scale), ffn_down (688 inputs, not whole blocks) dequantized "
        "as F32; embedding F32, tied head; llm-compressor's rows are torch only (no GGUF writer)",
        f"intermediate size {facts['intermediate']} is not a multiple of 256 (QK_K) nor 32: llama.cpp's "
        "quantizer falls back to F16 for ffn_down in every K type (warning '6 of 56 tensor(s) required "
        "fallback quantization'), so its K files keep a third of the MLP weights at 16 bits where ours "
        "quantize them; it makes the tied embedding Q6_K (ours: F32)",
    ]
