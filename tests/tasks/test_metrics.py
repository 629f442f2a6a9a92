import math

import pytest
import torch

from torchslim.errors import UserError
from torchslim.tasks.metrics import METRICS, display_name, logits_of


def _compute(name: str, outputs: torch.Tensor, targets: torch.Tensor, **kw: int) -> float:
    return METRICS.get(name).compute(outputs, targets, **kw)


def test_classification_metrics() -> None:
    logits = torch.tensor([[3.0, 2.0, 0.0], [0.0, 1.0, 2.0], [2.0, 0.0, 1.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([1, 2, 0, 0])  # argmax: 0, 2, 0, 1 -> two right
    assert _compute("accuracy", logits, y) == 0.5
    assert _compute("top_k_accuracy", logits, y, top_k=2) == 0.75  # the last row's 0 is ranked third
    # per class F1: class 0 (tp 1, fp 1, fn 1) 0.5; class 1 (tp 0, fp 1, fn 1) 0; class 2 (tp 1) 1.0
    assert _compute("f1", logits, y) == pytest.approx((0.5 + 0.0 + 1.0) / 3)


def test_regression_and_language_metrics_and_their_direction() -> None:
    out, y = torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([1.0, 3.0, 2.0])
    assert _compute("mse", out, y) == pytest.approx(5 / 3)
    assert _compute("mae", out, y) == pytest.approx(1.0)
    uniform = torch.zeros(2, 4, 10)  # every token equally likely: perplexity is the vocabulary size
    tokens = torch.tensor([[1, 2, 3, -100], [4, 5, -100, -100]])
    assert _compute("perplexity", uniform, tokens) == pytest.approx(10.0)
    assert _compute("cosine", torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])) == pytest.approx(
        1 / math.sqrt(2)
    )
    lower = {n for n in METRICS if not METRICS.get(n).higher_is_better}
    assert lower == {"mse", "mae", "perplexity"}


def test_unknown_metric_and_names() -> None:
    with pytest.raises(UserError, match="unknown metric 'acuracy'; did you mean 'accuracy'"):
        METRICS.get("acuracy")
    assert display_name("top_k_accuracy", 3) == "top3_accuracy"


def test_logits_of_model_outputs() -> None:
    class Out:
        logits = torch.ones(2)

    assert torch.equal(logits_of(Out()), torch.ones(2))
    with pytest.raises(TypeError):
        logits_of("text")


def test_regression_distillation_loss_is_mse_to_the_teacher() -> None:
    from torchslim.distill.losses import SOFT_LOSSES

    student, teacher = torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [1.0]])
    assert float(SOFT_LOSSES.get("regression")(student, teacher, 4.0)) == pytest.approx((1 + 4) / 2)
    assert METRICS.get("mse").outputs == "regression"
