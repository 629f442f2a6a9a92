"""Structural-pruning coverage on timm architectures (issue 15): ours against Torch-Pruning, same run.

Every model is built with `pretrained=False` (random weights: coverage and MACs do not depend on them)
and pruned at ratio 0.5 with its classifier excluded: ours with `ChannelConfig(ratio=0.5,
exclude=[classifier])` and otherwise defaults, Torch-Pruning's `MagnitudePruner` (L2, ratio 0.5, the
classifier in `ignored_layers`) as `bench_channel.tp_prune` drives it. A row says whether the tool
pruned without error, whether the output shape is kept, the MACs kept, and whether >= 30% of the MACs
went. Each (model, tool) runs in a fresh spawned child with a time limit.

timm is not a dependency: it is installed with `pip install --no-deps --target /work/peers/timm timm`
(`$TIMM_PATH`), and imports against the torchvision stand-in in `benchmarks/torchvision_stub` (the
index's torchvision is a CUDA build that breaks CPU torch). Run one model by hand with
`python -m benchmarks.bench_coverage resnet18 mixnet_s`.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from benchmarks.harness import NO_RESULT, TIMED_OUT, Table, benchmark, in_child

TIMM = os.environ.get("TIMM_PATH", "/work/peers/timm")
PEER = os.environ.get("TORCH_PRUNING_PATH", "/work/peers/tp")
STUB = str(Path(__file__).resolve().parent / "torchvision_stub")
SECONDS = 300

MODELS: dict[str, dict[str, Any]] = {
    "resnet18": {},
    "res2net50_14w_8s": {},
    "skresnet18": {},
    "seresnext26d_32x4d": {},
    "convnext_atto": {},
    "regnetx_002": {},
    "regnety_002": {},
    "mixnet_s": {},
    "cspdarknet53": {},
    "cs3darknet_s": {},
    "efficientnet_b0": {},
    "tf_efficientnetv2_b0": {},
    "mobilenetv2_100": {},
    "mobilenetv3_small_100": {},
    "mnasnet_100": {},
    "ghostnet_100": {},
    "densenet121": {},
    "inception_v3": {"size": 160},
    "vit_tiny_patch16_224": {"size": 224},
    "deit_tiny_patch16_224": {"size": 224},
    "swin_tiny_patch4_window7_224": {"size": 224},
    "levit_128s": {"size": 224},
    "poolformer_s12": {},
    "repvgg_a0": {},
    "dla34": {},
    "hrnet_w18_small": {},
    "rexnet_100": {},
    "dpn68": {},
    "vgg11": {},
    "ese_vovnet19b_dw": {},
    "selecsls42b": {},
    "mixer_s16_224": {"size": 224},
    "resmlp_12_224": {"size": 224},
    "mobilevit_xxs": {},
    "edgenext_xx_small": {},
    "lcnet_050": {},
    "fbnetc_100": {},
    "gernet_s": {},
}
"""timm name -> options (`size`: input side, 128 unless the model needs its own)."""


def _paths() -> None:
    for p in (TIMM, STUB, PEER):
        if os.path.isdir(p) and p not in sys.path:
            sys.path.append(p)


def build(name: str) -> tuple[nn.Module, torch.Tensor, list[str]]:
    """The model (eval mode, seeded), an example batch of one, and its classifier module paths."""
    _paths()
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    size = MODELS.get(name, {}).get("size", 128)
    heads = model.get_classifier()
    heads = heads if isinstance(heads, tuple) else (heads,)
    ids = {id(h) for h in heads}
    names = [n for n, m in model.named_modules() if id(m) in ids and n]
    return model, torch.randn(1, 3, size, size), names


def ours(model: nn.Module, x: torch.Tensor, classifiers: list[str]) -> None:
    import torchslim as ts

    ts.prune_(model, ts.ChannelConfig(ratio=0.5, exclude=classifiers), example_inputs=x)


def theirs(model: nn.Module, x: torch.Tensor, classifiers: list[str]) -> None:
    _paths()
    import torch_pruning as tp

    pruner = tp.pruner.MagnitudePruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=[model.get_submodule(c) for c in classifiers],
    )
    pruner.step()


TOOLS = {"torchslim": ours, "torch-pruning": theirs}


def measure(name: str, tool: str) -> dict[str, Any]:
    """{"ok": pruned without error, "shape": output shape kept, "kept": MACs kept, "error": why not}."""
    from torchslim.metrics import count_macs

    model, x, classifiers = build(name)
    with torch.no_grad():
        shape = model(x).shape
    dense = count_macs(model, x)
    try:
        TOOLS[tool](model, x, classifiers)
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        line = (str(exc).strip().splitlines() or [""])[0][:160]
        return {"ok": False, "shape": False, "kept": 1.0, "error": f"{type(exc).__name__}: {line}"}
    return {"ok": True, "shape": out.shape == shape, "kept": count_macs(model, x) / dense, "error": ""}


def _child(name: str, tool: str, result: Any) -> None:
    torch.set_num_threads(1)
    try:
        result.put(measure(name, tool))
    except Exception as exc:  # the model itself did not build or run
        result.put({"ok": False, "shape": False, "kept": 1.0, "error": f"build: {exc!r}"[:160]})
        traceback.print_exc()


def run_one(name: str, tool: str) -> dict[str, Any]:
    failed = {"ok": False, "shape": False, "kept": 1.0}
    result = in_child(_child, (name, tool), SECONDS)
    if result is TIMED_OUT:
        return {**failed, "error": f"no result in {SECONDS} s"}
    return {**failed, "error": "crash"} if result is NO_RESULT else result


def _cells(r: dict[str, Any]) -> list[Any]:
    good = r["ok"] and r["shape"]
    kept = f"{r['kept']:.3f}" if good else "-"
    return [
        "yes" if r["ok"] else "no",
        "yes" if r["shape"] else "no",
        kept,
        "yes" if good and r["kept"] <= 0.7 else "no",
    ]


def _counts(results: list[dict[str, Any]]) -> tuple[int, int, int, float]:
    ok = [r for r in results if r["ok"]]
    shape = [r for r in ok if r["shape"]]
    removed = [r for r in shape if r["kept"] <= 0.7]
    mean = sum(r["kept"] for r in shape) / max(len(shape), 1)
    return len(ok), len(shape), len(removed), mean


@benchmark("coverage")
def run(quick: bool) -> Table:
    names = list(MODELS)[:6] if quick else list(MODELS)
    columns = ["model", "ours prunes", "shape kept", "MACs kept", ">=30% removed"]
    columns += ["TP prunes", "shape kept", "MACs kept", ">=30% removed", "ours <= TP?"]
    table = Table("Structural pruning coverage on timm models (ratio 0.5, classifier excluded)", columns)
    by_tool: dict[str, list[dict[str, Any]]] = {t: [] for t in TOOLS}
    both, met = 0, 0
    for name in names:
        a, b = run_one(name, "torchslim"), run_one(name, "torch-pruning")
        by_tool["torchslim"].append(a)
        by_tool["torch-pruning"].append(b)
        verdict = ""
        if a["ok"] and a["shape"] and b["ok"] and b["shape"]:
            both += 1
            met += a["kept"] <= b["kept"] + 1e-3
            verdict = "yes" if a["kept"] <= b["kept"] + 1e-3 else "NO"
        table.rows.append([name, *_cells(a), *_cells(b), verdict])
        for tool, r in (("torchslim", a), ("torch-pruning", b)):
            if r["error"]:
                table.notes.append(f"{name} {tool}: {r['error']}")
    for tool, results in by_tool.items():
        ok, shape, removed, mean = _counts(results)
        table.notes.insert(
            0,
            f"{tool}: {ok}/{len(names)} prune, {shape} keep the output shape, {removed} remove >= 30% of "
            f"MACs; mean MACs kept {mean:.3f} (over the models whose output shape is kept)",
        )
    table.notes.insert(
        0, f"ours keeps at most Torch-Pruning's MACs on {met} of the {both} models both handle"
    )
    return table


if __name__ == "__main__":
    for model_name in sys.argv[1:]:
        for tool_name in TOOLS:
            print(model_name, tool_name, run_one(model_name, tool_name), flush=True)
