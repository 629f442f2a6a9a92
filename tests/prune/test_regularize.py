"""The `finetune` stage's `regularize:` block drives weights toward zero on the tiny task."""

import torch
import torch.nn as nn

import torchslim as ts
from torchslim.pipeline import Context, Reporter
from torchslim.prune.regularize import Regularizer, group_norms
from torchslim.recipe import STAGES, parse_recipe


def _finetune(task, regularize: dict[str, float]) -> nn.Module:
    model = task.model()
    _, spec = parse_recipe({"model": "zoo:tiny-digits",
                            "stages": [{"finetune": {"epochs": 3, "lr": 0.003, "regularize": regularize}}]}).stages[0]
    STAGES.get("finetune").run(Context(model, task, model, 0, Reporter()), spec)
    return model


def _small_fraction(model: nn.Module) -> float:
    w = model.fc1.weight.detach()
    return float((w.abs() < 1e-2).float().mean())


def test_l1_drives_weights_to_zero_and_pruning_them_costs_less(tiny_task) -> None:
    plain, l1 = _finetune(tiny_task, {}), _finetune(tiny_task, {"l1": 1e-3})
    assert _small_fraction(l1) > _small_fraction(plain) + 0.2
    assert l1.fc1.weight.abs().sum() < 0.6 * plain.fc1.weight.abs().sum()
    for model in (plain, l1):
        ts.prune_(model, ts.SparsityConfig(sparsity=0.8))
    assert tiny_task.evaluate(l1) > tiny_task.evaluate(plain)


def test_l2_shrinks_the_weight_norm(tiny_task) -> None:
    plain, l2 = _finetune(tiny_task, {}), _finetune(tiny_task, {"l2": 1e-2})
    assert l2.fc1.weight.norm() < 0.8 * plain.fc1.weight.norm()


def test_group_lasso_zeroes_whole_output_channels(tiny_task) -> None:
    plain, group = _finetune(tiny_task, {}), _finetune(tiny_task, {"group_lasso": 5e-3})
    norms, plain_norms = group_norms(group.fc1.weight.detach()), group_norms(plain.fc1.weight.detach())
    assert int((norms < 0.05).sum()) > int((plain_norms < 0.05).sum()) + 3


def test_regularizer_sees_masked_weights() -> None:
    layer = nn.Sequential(nn.Linear(4, 4))
    ts.prune_(layer, ts.SparsityConfig(sparsity=0.5))
    expected = layer[0].weight.detach().abs().sum()
    assert torch.allclose(Regularizer(l1=1.0).extra_loss(layer).detach(), expected)
