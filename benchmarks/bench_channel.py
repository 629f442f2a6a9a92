"""Channel pruning side by side with Torch-Pruning (imported lazily from `$TORCH_PRUNING_PATH`, default
/work/peers/tp: `pip install --no-deps --target /work/peers/tp torch-pruning`).

Rows: a ResNet-18-like net at ratio 0.5 (MACs, params, CPU latency at batch 32 on one thread);
coverage models each tool prunes correctly; accuracy on mnist1d-cnn and lenet5-digits at 2x and 4x
MAC reduction after the same short fine-tune; graph build time on a ResNet-50-sized net.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import torchslim as ts
from benchmarks.harness import Table, benchmark, in_child
from torchslim.data import call
from torchslim.distill.trainer import finetune_defaults, fit
from torchslim.metrics import count_macs, measure_latency
from torchslim.prune.channel import dependency_graph, prune_channels_

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # tiny_hf, which the nets use
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "prune"))
from test_channel_nets import NETS, ResNet, build


def _out(y: Any) -> torch.Tensor:
    for attr in ("logits", "last_hidden_state"):
        if hasattr(y, attr):
            return getattr(y, attr)  # type: ignore[no-any-return]
    return y  # type: ignore[no-any-return]


def _output_layers(model: nn.Module, x: Any) -> list[nn.Module]:
    """Layers whose outputs are the model's outputs (Torch-Pruning must be told to leave them)."""
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv1d))]
    return last[-1:]


PEER = os.environ.get("TORCH_PRUNING_PATH", "/work/peers/tp")
"""Torch-Pruning lives in its own folder so that it never replaces torch."""


def tp_prune(model: nn.Module, x: Any, ratio: float, ignored: list[nn.Module] | None = None) -> nn.Module:
    if os.path.isdir(PEER) and PEER not in sys.path:
        sys.path.append(PEER)
    import torch_pruning as tp

    inputs = x if not isinstance(x, dict) else dict(x)
    pruner = tp.pruner.MagnitudePruner(
        model,
        inputs,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=_output_layers(model, x) if ignored is None else ignored,
    )
    pruner.step()
    return model


def ours_prune(model: nn.Module, x: Any, ratio: float, importance: str = "l2", data: Any = None) -> nn.Module:
    prune_channels_(model, ts.ChannelConfig(ratio=ratio, importance=importance), x, data)
    return model


COVERAGE_SECONDS = 120


def _pruned_ok(tool: str, name: str) -> bool:
    """`_prunes` in a fresh child, so a tool that never finishes on a model counts as a failure after
    COVERAGE_SECONDS."""
    return in_child(_coverage_child, (tool, name), COVERAGE_SECONDS) is True


def _coverage_child(tool: str, name: str, result: Any) -> None:
    torch.set_num_threads(1)
    result.put(_prunes(TOOLS[tool], name))


TOOLS: dict[str, Callable[[nn.Module, Any, float], nn.Module]] = {}


def _prunes(prune: Callable[[nn.Module, Any, float], nn.Module], name: str) -> bool:
    try:
        model, x = build(name)
        dense_shape, dense_macs = _out(call(model, x)).shape, count_macs(model, x)
        prune(model, x, 0.5)
        return bool(_out(call(model, x)).shape == dense_shape and count_macs(model, x) < 0.9 * dense_macs)
    except Exception:
        return False


TOOLS.update({"torchslim": ours_prune, "torch-pruning": tp_prune})


def _at_macs(
    prune: Callable[..., nn.Module], model: nn.Module, x: Any, target: float, **kw: Any
) -> nn.Module:
    """Binary-search the ratio so that MACs <= target * dense (same search for both tools)."""
    dense, lo, hi, best = count_macs(model, x), 0.0, 0.95, None
    for _ in range(8):
        mid = (lo + hi) / 2
        trial = prune(copy.deepcopy(model), x, mid, **kw)
        if count_macs(trial, x) <= target * dense:
            hi, best = mid, trial
        else:
            lo = mid
    return best if best is not None else prune(copy.deepcopy(model), x, hi, **kw)


def _finetune(task: Any, model: nn.Module, epochs: int, lr: float = 1e-3) -> float:
    fit(
        model,
        lambda e: task.train_loader(seed=e),
        lambda m, i, t: task.loss(call(m, i), t),
        epochs=epochs,
        lr=lr,
    )
    return float(task.evaluate(model))


def _defaults_row(task: Any, base: nn.Module, x: Any, factor: int) -> list[Any]:
    """The first recipe beside the tuned row: `macs_target` alone and the default fine-tune."""
    model = _at_macs_target(base, x, 1 / factor)
    epochs, lr = finetune_defaults(task)
    acc = _finetune(task, model, epochs, lr)
    recipe = f"ChannelConfig(macs_target={1 / factor:g})"
    note = f"first recipe: {recipe}, default finetune ({epochs} epochs, lr {lr:g})"
    return [f"{task.name} {factor}x MACs, defaults", count_macs(model, x), "", "", f"{note}: {acc:.4f}"]


def _at_macs_target(base: nn.Module, x: Any, target: float) -> nn.Module:
    model = copy.deepcopy(base)
    prune_channels_(model, ts.ChannelConfig(macs_target=target), x)
    return model


def _resnet18_rows(table: Table, quick: bool) -> None:
    torch.manual_seed(0)
    dense = ResNet((64, 128, 256, 512), bottleneck=False, blocks=2).eval()
    x = torch.randn(32, 3, 32, 32)
    ours, theirs = ours_prune(copy.deepcopy(dense), x, 0.5), tp_prune(copy.deepcopy(dense), x, 0.5)
    repeats = 5 if quick else 20
    models = {"dense": dense, "torchslim": ours, "torch-pruning": theirs}
    ms = {k: float("inf") for k in models}
    for _ in range(6):  # interleaved rounds, best median: the machine is shared and noisy
        for label, m in models.items():
            ms[label] = min(ms[label], measure_latency(m, x, repeats=repeats))
    for label, m in models.items():
        params = sum(p.numel() for p in m.parameters())
        table.rows.append([f"resnet18-like r=0.5 {label}", count_macs(m, x), params, round(ms[label], 2), ""])
    shapes = [{k: v.shape for k, v in m.state_dict().items()} for m in (ours, theirs)]
    same = "identical" if shapes[0] == shapes[1] else "different"
    table.notes.append(
        f"ResNet-18-like latency ratio torchslim / torch-pruning: {ms['torchslim'] / ms['torch-pruning']:.3f}"
        f" (the two pruned models have {same} tensor shapes)"
    )


@benchmark("channel")
def run(quick: bool) -> Table:
    table = Table(
        "Channel pruning vs Torch-Pruning", ["setting", "MACs", "params", "latency ms (b32, 1 thr)", "note"]
    )
    _resnet18_rows(table, quick)
    ok_ours = [n for n in NETS if _pruned_ok("torchslim", n)]
    ok_tp = [n for n in NETS if _pruned_ok("torch-pruning", n)]
    table.rows.append(
        ["coverage torchslim", len(ok_ours), len(NETS), "", ",".join(sorted(set(NETS) - set(ok_ours)))]
    )
    table.rows.append(
        ["coverage torch-pruning", len(ok_tp), len(NETS), "", ",".join(sorted(set(NETS) - set(ok_tp)))]
    )
    _accuracy_rows(table, quick)
    _graph_row(table)
    return table


def _accuracy_rows(table: Table, quick: bool) -> None:
    epochs = 1 if quick else 3
    criteria = ["l2"] if quick else ["l2", "taylor", "bn_scale"]
    for task_name in ("mnist1d-cnn", "lenet5-digits"):
        task = ts.zoo.get(task_name)
        base = task.model().eval()
        x, data = task.example_inputs, task.calibration_loader(batches=4)
        dense_acc = float(task.evaluate(base))
        table.rows.append([f"{task_name} dense", count_macs(base, x), "", "", f"acc {dense_acc:.4f}"])
        for factor in (2, 4):
            ours = {
                c: _finetune(task, _at_macs(ours_prune, base, x, 1 / factor, importance=c, data=data), epochs)
                for c in criteria
            }
            best = max(ours, key=lambda c: ours[c])
            theirs = _finetune(task, _at_macs(tp_prune, base, x, 1 / factor), epochs)
            table.rows.append(
                [
                    f"{task_name} {factor}x MACs",
                    "",
                    "",
                    "",
                    f"torchslim ({best}) {ours[best]:.4f} / torch-pruning {theirs:.4f}",
                ]
            )
            if not quick:
                table.rows.append(_defaults_row(task, base, x, factor))
            if factor == 2:
                gap = dense_acc - ours[best]
                table.notes.append(
                    f"{task_name} at 2x MAC reduction: {gap * 100:.1f} points below dense "
                    f"(target within 1 point; {epochs} fine-tune epochs)"
                )


def _graph_row(table: Table) -> None:
    torch.manual_seed(0)
    big = ResNet((128, 256, 512, 1024), bottleneck=True, blocks=4).eval()
    # ImageNet stem (7x7 stride 2 + max pool) so MACs match ResNet-50 (about 4 G), not a CIFAR stem at 224
    big.stem = nn.Sequential(
        nn.Conv2d(3, 128, 7, 2, 3, bias=False), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
    )
    x = torch.randn(1, 3, 224, 224)
    started = time.perf_counter()
    with torch.no_grad():
        big(x)
    forward = time.perf_counter() - started
    started = time.perf_counter()
    graph = dependency_graph(big, x, ts.ChannelConfig(ratio=0.5))
    seconds = time.perf_counter() - started
    note = f"{seconds:.2f} s ({forward:.2f} s is one forward), {len(graph.groups)} groups"
    table.rows.append(
        ["graph build resnet50-sized", count_macs(big, x), sum(p.numel() for p in big.parameters()), "", note]
    )
    table.notes.append(f"graph build for a ResNet-50-sized net: {seconds:.2f} s (target < 5 s)")


FIRST_NETS = {
    "hf-resnet": "classifier.1",
    "hf-convnext": "classifier",
    "hf-mobilenetv2": "classifier",
    "hf-vit": "classifier",
}
"""Coverage nets and their classifier, excluded as a user would."""


def _ratio_row(name: str, dense: nn.Module, x: Any, classifier: str, table: Table) -> None:
    macs = count_macs(dense, x)
    cells = []
    for mode in ("outputs", "coupled"):
        ours = copy.deepcopy(dense)
        config = ts.ChannelConfig(ratio=0.5, exclude=[classifier], exclude_mode=mode)
        prune_channels_(ours, config, x)
        cells.append(count_macs(ours, x) / macs)
    theirs = copy.deepcopy(dense)
    tp_prune(theirs, x, 0.5, ignored=[theirs.get_submodule(classifier)])
    peer = count_macs(theirs, x) / macs
    verdict = "met" if cells[0] <= peer + 1e-3 else "MISSED"
    table.rows.append(
        [
            f"{name} ratio=0.5 exclude={classifier}",
            f"{cells[0]:.3f}",
            f"{cells[1]:.3f}",
            f"{peer:.3f}",
            verdict,
        ]
    )


@benchmark("channel-first")
def run_first(quick: bool) -> Table:
    """Issue 13: `ChannelConfig(ratio=0.5, exclude=[classifier])` against Torch-Pruning's `ignored_layers`,
    and the defaults-only recipe on lenet5-digits at 2x MACs beside the tuned one."""
    columns = [
        "setting",
        "MACs / dense (exclude_mode=outputs, default)",
        "coupled (old meaning)",
        "torch-pruning",
        "same or fewer MACs?",
    ]
    table = Table("Channel pruning, first recipe (defaults only)", columns)
    torch.manual_seed(0)
    resnet = ResNet((64, 128, 256, 512), bottleneck=False, blocks=2).eval()
    _ratio_row("resnet18-like (CIFAR)", resnet, torch.randn(2, 3, 32, 32), "fc", table)
    for name, classifier in FIRST_NETS.items():
        model, x = build(name)
        _ratio_row(name, model, x, classifier, table)
    task = ts.zoo.get("lenet5-digits")
    base, x = task.model().eval(), task.example_inputs
    epochs, lr = finetune_defaults(task)
    dense_acc = float(task.evaluate(base))
    data = task.calibration_loader(batches=4)
    table.rows.append(["lenet5-digits dense", "", "", "", f"acc {dense_acc:.4f}"])
    recipes = {"first recipe: ChannelConfig(macs_target=0.5, exclude=['fc2'])": {}}
    recipes.update({f"tuned: importance={c}": {"importance": c} for c in ("taylor", "bn_scale")})
    for label, options in recipes.items():
        model = copy.deepcopy(base)
        prune_channels_(model, ts.ChannelConfig(macs_target=0.5, exclude=["fc2"], **options), x, data)
        fit(
            model,
            lambda e: task.train_loader(seed=e),
            lambda m, i, t: task.loss(call(m, i), t),
            epochs=epochs,
            lr=lr,
        )
        acc = float(task.evaluate(model))
        ratio = count_macs(model, x) / count_macs(base, x)
        below = f"acc {acc:.4f} ({(dense_acc - acc) * 100:.1f} pt below dense)"
        table.rows.append([f"lenet5-digits {label}, default finetune", f"{ratio:.3f}", "", "", below])
    table.notes.append(
        f"first recipe fine-tune: the defaults ({epochs} epochs at lr {lr:g}); the tuned rows of the channel "
        "table pick the best of l2, taylor and bn_scale after 3 epochs at lr 0.001"
    )
    table.notes.append(
        "hf-vit: torch.fx cannot trace transformers' ViT model forward, so only the registered blocks "
        "(heads, MLP width) are cut and the residual width stays: the MACs gap to Torch-Pruning there is "
        "that, not exclude"
    )
    return table
