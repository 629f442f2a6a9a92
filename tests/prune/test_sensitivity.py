import pytest
import torch
from unstructured_fixtures import one_thread as one_thread

import torchslim as ts
from torchslim.prune.sensitivity import allocate, exact_counts, grid_for, held_loss, max_layer_sparsity

pytestmark = pytest.mark.usefixtures("one_thread")


def test_allocation_puts_sparsity_where_loss_rises_least() -> None:
    curves = {
        "robust": [(0.0, 1.0), (0.5, 1.0), (0.9, 1.01), (0.98, 1.05)],
        "fragile": [(0.0, 1.0), (0.5, 1.2), (0.9, 2.0), (0.98, 3.0)],
    }
    sizes = {"robust": 1000, "fragile": 1000}
    s = allocate(curves, sizes, 0.6)
    assert s["robust"] > 0.9 > 0.3 > s["fragile"]
    assert (s["robust"] + s["fragile"]) / 2 == pytest.approx(0.6, abs=1e-6)


def test_allocation_weighs_layers_by_size() -> None:
    same = [(0.0, 0.0), (0.5, 0.1), (0.9, 0.5), (0.98, 2.0)]
    s = allocate({"big": same, "small": same}, {"big": 9000, "small": 1000}, 0.8)
    assert s["big"] >= s["small"]  # equal curves: a big layer's weights buy more budget per unit of loss
    assert 0.9 * s["big"] + 0.1 * s["small"] == pytest.approx(0.8, abs=1e-6)


def test_exact_counts_meet_the_global_target_exactly() -> None:
    sizes = {"a": 333, "b": 1001, "c": 7}
    counts = exact_counts({"a": 0.5, "b": 0.9123, "c": 0.3}, sizes, 0.8)
    assert sum(counts.values()) == round(0.8 * 1341)
    assert all(0 <= counts[n] <= sizes[n] for n in sizes)
    assert sum(exact_counts({"a": 0.1, "b": 0.1, "c": 0.1}, sizes, 0.8).values()) == round(0.8 * 1341)


def test_grid_and_cap() -> None:
    assert max_layer_sparsity(0.9) == pytest.approx(0.98)
    assert grid_for(0.95) == [0.25, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99]


def test_auto_beats_uniform_on_the_tiny_task(tiny_task) -> None:
    data = tiny_task.calibration_loader()
    uniform, auto = tiny_task.model(), tiny_task.model()
    ts.prune_(uniform, ts.SparsityConfig(sparsity=0.9, scope="layer"))
    report = ts.prune_(
        auto, ts.SparsityConfig(sparsity=0.9, allocation="auto"), data=data, loss=tiny_task.loss
    )
    assert report.sparsity == pytest.approx(round(0.9 * 2368) / 2368, abs=1e-9)  # exact global count
    assert report.layer_sparsity["fc1"] > 0.9 > report.layer_sparsity["fc2"]  # the classifier is more fragile
    assert held_loss(auto, data, tiny_task.loss) < held_loss(uniform, data, tiny_task.loss)
    assert tiny_task.evaluate(auto) > tiny_task.evaluate(uniform) + 0.1
    curve = report.sensitivity["fc2"]
    assert curve[0][0] == 0.0 and curve[-1][0] == pytest.approx(0.98)
    assert curve[-1][1] > curve[0][1]  # pruning the classifier to 98% costs loss
    assert set(report.notes()) == {"sparsity", "layer_sparsity", "sensitivity", "sensitivity_metric"}


def test_scan_restores_the_model_exactly(tiny_task) -> None:
    model = tiny_task.model()
    data = tiny_task.calibration_loader(batches=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ts.prune_(model, ts.SparsityConfig(sparsity=0.0, allocation="auto"), data=data, loss=tiny_task.loss)
    x = torch.randn(3, 64)
    after = {
        k.replace("parametrizations.weight.original", "weight"): v for k, v in model.state_dict().items()
    }
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert torch.count_nonzero(model.fc1.weight) == 2048 and model(x).shape == (3, 10)
