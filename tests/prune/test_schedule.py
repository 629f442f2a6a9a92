import pytest
import torch
from unstructured_fixtures import one_thread as one_thread

import torchslim as ts
from torchslim.data import call
from torchslim.distill.trainer import fit
from torchslim.errors import UserError
from torchslim.prune.masks import get_mask
from torchslim.prune.schedule import GradualPruner, cubic_sparsity, iterative_targets

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cubic_schedule_values() -> None:
    assert cubic_sparsity(0.0, 0.9) == 0.0
    assert cubic_sparsity(0.5, 0.9) == pytest.approx(0.9 * (1 - 0.5**3))  # 0.7875
    assert cubic_sparsity(1.0, 0.9) == pytest.approx(0.9)
    assert cubic_sparsity(1.7, 0.9) == pytest.approx(0.9) and cubic_sparsity(-1.0, 0.9) == 0.0
    assert cubic_sparsity(0.5, 0.9, initial=0.2) == pytest.approx(0.9 - 0.7 * 0.125)
    assert iterative_targets(0.9, 3) == pytest.approx(
        [0.9 * (1 - (2 / 3) ** 3), 0.9 * (1 - (1 / 3) ** 3), 0.9]
    )
    assert iterative_targets(0.5, 1) == [0.5]


def _fit(task, model, epochs: int, callbacks) -> None:
    fit(
        model,
        lambda e: task.train_loader(seed=e),
        lambda m, x, y: task.loss(call(m, x), y),
        epochs=epochs,
        lr=1e-3,
        callbacks=callbacks,
    )


def test_gradual_pruner_follows_the_cubic_curve_during_training(tiny_task) -> None:
    model = tiny_task.model()
    config = ts.SparsityConfig(sparsity=0.9, scope="layer")
    ts.prune_(model, config.replace(sparsity=0.0))  # empty masks, as the recipe stage attaches them
    pruner = GradualPruner(config, begin=0.0, end=0.5, every=2)
    _fit(tiny_task, model, 3, [pruner])  # 11 batches per epoch: 33 steps, pruning ends at step 16.5
    steps, sparsities = zip(*pruner.history, strict=True)
    assert sparsities == tuple(sorted(sparsities)) and sparsities[-1] == pytest.approx(0.9)
    assert sparsities[0] == pytest.approx(cubic_sparsity(2 / 16.5, 0.9))
    assert steps[-1] <= 18  # final sparsity reached at `end`; the rest of training recovers
    assert pruner.done
    assert int((model.fc1.weight == 0).sum()) == round(0.9 * 2048)
    assert int((model.fc2.weight == 0).sum()) == round(0.9 * 320)
    oneshot = tiny_task.model()
    ts.prune_(oneshot, config)
    assert tiny_task.evaluate(model) > tiny_task.evaluate(oneshot) + 0.1  # 0.40 against 0.24
    history = list(pruner.history)
    _fit(tiny_task, model, 1, [pruner])  # a later training stage: the pruner is finished
    assert pruner.history == history


def test_soft_gradual_pruning_hardens_at_the_end(tiny_task) -> None:
    model = tiny_task.model()
    config = ts.SparsityConfig(sparsity=0.8, soft=True, scope="layer")
    ts.prune_(model, config.replace(sparsity=0.0))
    assert get_mask(model.fc1, "weight").soft
    pruner = GradualPruner(config, every=3)
    _fit(tiny_task, model, 2, [pruner])
    assert not get_mask(model.fc1, "weight").soft
    assert int((model.fc1.weight == 0).sum()) == round(0.8 * 2048)
    assert torch.count_nonzero(model.fc1.parametrizations.weight.original[model.fc1.weight == 0]) == 0


def test_gradual_pruner_needs_a_sparsity_target() -> None:
    with pytest.raises(UserError, match="needs a sparsity or retain"):
        GradualPruner(ts.SparsityConfig(threshold=0.1))
    assert GradualPruner(ts.SparsityConfig(retain=0.25)).config.sparsity == pytest.approx(0.75)
