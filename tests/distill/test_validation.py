"""Validation on held-out training data: the split, the recipe `validation:` block, best epoch kept."""

import pytest
import torch

import torchslim as ts
from torchslim import zoo
from torchslim.distill.trainer import fit
from torchslim.errors import UserError
from torchslim.zoo.base import holdout_split


def test_holdout_split_is_fixed_disjoint_and_complete() -> None:
    train, val = holdout_split(100, 0.1)
    again = holdout_split(100, 0.1)
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])
    assert len(val) == 10 and sorted(train.tolist() + val.tolist()) == list(range(100))
    assert val.tolist() != list(range(90, 100))  # drawn at random, not the tail


def test_training_batches_leave_out_what_validation_measures() -> None:
    task = zoo.get("mnist1d-cnn")
    train = torch.cat([x for x, _ in task.train_loader(holdout=0.2, augment=False)])
    assert len(train) == 3200
    held = task.data["x_train"][holdout_split(4000, 0.2)[1]]
    seen = {tuple(row.flatten().tolist()) for row in train}
    assert not any(tuple(row.flatten().tolist()) in seen for row in held)
    model = task.model()
    assert task.validate(model, 0.2) > 0.95  # the baseline trained on these rows too


def test_validation_block_keeps_the_best_epoch(tmp_path) -> None:
    stage = {"finetune": {"epochs": 3, "lr": 0.05, "validation": {"holdout": 0.1, "keep_start": False}}}
    report = ts.run_recipe({"model": "zoo:mnist1d-cnn", "stages": [stage]}, tmp_path / "out")
    history = report["stages"][1]["history"]
    assert [r["epoch"] for r in history] == [1.0, 2.0, 3.0] and all("metric" in r for r in history)
    assert "start_metric" not in history[0]
    task = zoo.get("mnist1d-cnn")
    final = ts.load(tmp_path / "out" / "model")
    assert task.validate(final, 0.1) == pytest.approx(max(r["metric"] for r in history))


@pytest.mark.slow
def test_the_default_finetune_never_ends_below_a_converged_start(tmp_path) -> None:
    """No `validation` block: held-out 10%, the start competes. A too-high lr that lowers every epoch's
    held-out accuracy (measured below) leaves the trained baseline as it was."""
    stage = {"finetune": {"epochs": 2, "lr": 0.05}}
    report = ts.run_recipe({"model": "zoo:mnist1d-cnn", "stages": [stage]}, tmp_path / "out")
    history = report["stages"][1]["history"]
    start = history[0]["start_metric"]
    assert max(r["metric"] for r in history) < start  # the fine-tune alone would have lowered it
    task = zoo.get("mnist1d-cnn")
    final = ts.load(tmp_path / "out" / "model")
    assert task.validate(final, 0.1) == pytest.approx(start)
    assert task.evaluate(final) == pytest.approx(task.evaluate(task.model()))


def test_the_default_finetune_trains_longer_the_more_the_model_lost() -> None:
    """`recovery_epochs`: a quarter of the baseline's epochs for a model as good as the baseline, half
    of them for one that lost most of its held-out accuracy."""
    from torchslim.distill.stages import DEFAULT_VALIDATION, recovery_epochs

    task = zoo.get("mnist1d-cnn")  # baseline: 20 epochs
    base, broken = task.model(), task.model()
    with torch.no_grad():
        for p in broken.parameters():
            p.zero_()  # every class scores the same: chance accuracy
    assert task.validate(broken, 0.1) < 0.2 < 0.9 < task.validate(base, 0.1)
    assert recovery_epochs(task, base, base, DEFAULT_VALIDATION) == 5
    assert recovery_epochs(task, broken, base, DEFAULT_VALIDATION) == 10
    assert recovery_epochs(task, broken, base, None) == 5  # nothing measured without validation


def _small_model() -> torch.nn.Module:
    return zoo.get("mnist1d-cnn").build(width=0.25)


def _fit_scored(model: torch.nn.Module, scores: list[float], **kwargs) -> list[dict[str, float]]:
    """`fit` on two mnist1d-cnn batches per epoch, keeping the best, with `scores` as the held-out
    metric of the start (with keep_start) and each epoch in turn."""
    task, metrics = zoo.get("mnist1d-cnn"), iter(scores)
    return fit(
        model,
        lambda e: list(task.train_loader(seed=e))[:2],
        lambda m, x, y: task.loss(m(x), y),
        lr=1e-3,
        evaluate=lambda m: next(metrics),
        keep_best=True,
        **kwargs,
    )


def test_patience_waits_for_a_gradual_schedule_to_finish() -> None:
    class Schedule:
        done = False

        def after_epoch(self, model, epoch):
            self.done = epoch >= 3  # finished in the 4th epoch (0-based index 3)

    scores = [0.9, 0.1, 0.1, 0.1, 0.1, 0.1]  # the best epoch comes before the schedule ends
    history = _fit_scored(_small_model(), scores, epochs=6, callbacks=[Schedule()], patience=1)
    assert len(history) == 5  # epochs 1-3 never compete; epoch 4 is best, 5 stops
    assert [r["competes"] for r in history] == [0.0, 0.0, 0.0, 1.0, 1.0]  # what a resumed run reads


def test_a_task_without_a_validation_split_says_so_before_training(tmp_path) -> None:
    stage = {"finetune": {"epochs": 1, "validation": {"holdout": 0.1}}}
    with pytest.raises(UserError, match="tiny-digits' has no validation split; train without `validation`"):
        ts.run_recipe({"model": "zoo:tiny-digits", "stages": [stage]}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_validation_false_trains_on_all_the_data_without_measuring(tmp_path) -> None:
    stage = {"finetune": {"epochs": 1, "validation": False}}
    report = ts.run_recipe({"model": "zoo:mnist1d-cnn", "stages": [stage]}, tmp_path / "out")
    history = report["stages"][1]["history"]
    assert len(history) == 1 and "metric" not in history[0] and "start_metric" not in history[0]


def test_a_later_epoch_that_ties_the_best_is_kept_and_patience_counts_strict_gains() -> None:
    """An untrained start that scores as high as the trained epochs (held-out rows the baseline saw)
    does not undo the training; a plateau still runs out of patience."""
    model = _small_model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    history = _fit_scored(model, [1.0] * 5, epochs=4, keep_start=True, patience=2)
    assert len(history) == 2  # no epoch beat the start: patience 2 stops after the second
    assert not torch.equal(model.state_dict()["fc.weight"], start["fc.weight"])  # the last tie is kept


def test_distill_stage_validation_block_lets_the_start_compete(tmp_path) -> None:
    stage = {"distill": {"epochs": 1, "lr": 1e-3, "validation": {"holdout": 0.1}}}
    report = ts.run_recipe({"model": "zoo:mnist1d-cnn", "stages": [stage]}, tmp_path / "out")
    history = report["stages"][1]["history"]
    assert "start_metric" in history[0] and "metric" in history[0]
