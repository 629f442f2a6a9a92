import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.distill.trainer import fit, warmup_cosine


def test_keep_best_and_patience(tiny_task) -> None:
    model = tiny_task.build()
    scores = iter([0.5, 0.9, 0.7, 0.6, 0.4])
    seen = {}

    def evaluate(m: torch.nn.Module) -> float:
        score = next(scores)
        seen[score] = m.fc1.weight.detach().clone()
        return score

    def loss_fn(m, x, y):
        return tiny_task.loss(m(x), y)

    history = fit(
        model,
        lambda epoch: tiny_task.train_loader(seed=epoch),
        loss_fn,
        epochs=5,
        lr=1e-2,
        evaluate=evaluate,
        keep_best=True,
        patience=2,
    )
    assert [h["metric"] for h in history] == [0.5, 0.9, 0.7, 0.6]  # stopped 2 epochs after the best
    assert torch.equal(model.fc1.weight, seen[0.9])


def test_callbacks_see_every_step(tiny_task) -> None:
    calls = []

    class Spy:
        def extra_loss(self, model):
            return torch.zeros(())

        def after_step(self, model, step, total):
            calls.append((step, total))

    model = tiny_task.build()
    fit(
        model,
        lambda epoch: tiny_task.train_loader(seed=epoch),
        lambda m, x, y: tiny_task.loss(m(x), y),
        epochs=2,
        lr=1e-3,
        callbacks=[Spy()],
    )
    steps_per_epoch = len(list(tiny_task.train_loader()))
    assert calls[-1] == (2 * steps_per_epoch, 2 * steps_per_epoch) and len(calls) == 2 * steps_per_epoch


def test_keep_best_lowest_when_lower_is_better(tiny_task) -> None:
    """An error or a perplexity: the lowest epoch is the best, and patience counts from it."""
    model = tiny_task.build()
    scores = iter([0.5, 0.2, 0.3, 0.4, 0.1])
    seen = {}

    def evaluate(m: torch.nn.Module) -> float:
        score = next(scores)
        seen[score] = m.fc1.weight.detach().clone()
        return score

    history = fit(
        model,
        lambda epoch: tiny_task.train_loader(seed=epoch),
        lambda m, x, y: tiny_task.loss(m(x), y),
        epochs=5,
        lr=1e-2,
        evaluate=evaluate,
        keep_best=True,
        patience=2,
        higher_is_better=False,
    )
    assert [h["metric"] for h in history] == [0.5, 0.2, 0.3, 0.4]
    assert torch.equal(model.fc1.weight, seen[0.2])


def test_warmup_then_cosine() -> None:
    factor = warmup_cosine(100, 0.1)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)  # linear over 10 steps
    assert factor(10) == pytest.approx(1.0) and factor(55) == pytest.approx(0.5)  # cosine after it
    assert factor(100) == pytest.approx(0.0, abs=1e-12)
    plain = warmup_cosine(100, 0.0)  # no warm-up: CosineAnnealingLR's curve
    assert [plain(s) for s in (0, 50, 100)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)


def test_fit_warms_the_lr_up(tiny_task, monkeypatch) -> None:
    made, seen = [], []
    adamw = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda *a, **k: made.append(adamw(*a, **k)) or made[-1])

    class Lr:
        def after_step(self, model, step, total):
            seen.append(made[0].param_groups[0]["lr"])

    fit(
        tiny_task.build(),
        lambda epoch: tiny_task.train_loader(seed=epoch),
        lambda m, x, y: tiny_task.loss(m(x), y),
        epochs=4,
        lr=1e-2,
        warmup=0.25,
        callbacks=[Lr()],
    )
    ramp = len(seen) // 4
    assert seen[: ramp - 1] == sorted(seen[: ramp - 1]) and seen[0] == pytest.approx(2e-2 / ramp)
    assert max(seen) == pytest.approx(1e-2) and seen[-1] < 1e-4  # peak after the ramp, then decay to ~0


def test_finetune_defaults_follow_the_tasks_own_baseline_training() -> None:
    from torchslim import zoo
    from torchslim.distill.trainer import finetune_defaults

    assert finetune_defaults(zoo.get("lenet5-digits")) == (3, 2e-3)  # baseline: 12 epochs at 2e-3
    assert finetune_defaults(zoo.get("mnist1d-cnn")) == (5, 1e-2)  # baseline: 20 epochs at 1e-2
    assert finetune_defaults(object()) == (1, 1e-3)  # a task that does not say


def test_finetune_epochs_grow_with_the_damage_up_to_half_the_baseline() -> None:
    from torchslim import zoo
    from torchslim.distill.trainer import finetune_defaults

    task = zoo.get("mnist1d-cnn")  # baseline: 20 epochs
    assert [finetune_defaults(task, d)[0] for d in (0.0, 0.1, 0.2, 0.5, 0.85, 1.0)] == [5, 6, 7, 10, 10, 10]
    assert finetune_defaults(task, 0.85)[1] == 1e-2  # the lr does not depend on it
    assert finetune_defaults(object(), 1.0) == (1, 1e-3)  # no baseline to scale


def test_lost_fraction_reads_the_metric_the_right_way_up() -> None:
    from torchslim.distill.trainer import lost_fraction

    assert lost_fraction(0.15, 1.0) == pytest.approx(0.85)
    assert lost_fraction(1.0, 0.9) == 0.0  # better than the reference: nothing lost
    assert lost_fraction(20.0, 10.0, higher_is_better=False) == pytest.approx(0.5)  # perplexity doubled
    assert lost_fraction(0.5, 0.0) == 0.0 and lost_fraction(-1.0, 2.0) == 0.0  # no ratio to take


def test_finetune_stage_leaves_epochs_and_lr_to_the_defaults() -> None:
    from torchslim.distill.stages import FinetuneSpec

    spec = FinetuneSpec.model_validate({})
    assert spec.epochs is None and spec.lr is None
    assert FinetuneSpec.model_validate({"epochs": 2, "lr": 0.01}).lr == 0.01


def test_keep_start_restores_the_start_when_training_only_lowers_the_metric() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    model = nn.Linear(4, 2)
    batches = [(x, y)]
    fit(model, lambda e: batches, lambda m, a, b: F.cross_entropy(m(a), b), epochs=30, lr=0.1)

    def accuracy(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m(x).argmax(1) == y).float().mean())

    trained = accuracy(model)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    wrong = [(x, 1 - y)]  # training on flipped labels can only lower the accuracy
    loss = lambda m, a, b: F.cross_entropy(m(a), b)  # noqa: E731
    history = fit(
        model, lambda e: wrong, loss, epochs=3, lr=0.1, evaluate=accuracy, keep_best=True, keep_start=True
    )
    assert trained > 0.9 and history[0]["start_metric"] == trained
    assert max(r["metric"] for r in history) < trained
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
    fit(model, lambda e: wrong, loss, epochs=3, lr=0.1, evaluate=accuracy, keep_best=True)
    assert accuracy(model) < trained  # without keep_start the best epoch wins, lower than the start
