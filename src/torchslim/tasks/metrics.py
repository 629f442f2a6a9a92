"""Task metrics by name: each computes one float from a split's stacked outputs and targets.

A metric also says whether higher is better, which training loss suits it and which distillation
loss (`outputs`) fits the model's outputs, so a data mapping needs to name nothing but the metric.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from torchslim.data import main_output
from torchslim.registry import Registry

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Metric:
    compute: Callable[..., float]
    """`compute(outputs, targets, **options)` on the whole split."""
    higher_is_better: bool
    loss: Loss
    outputs: str
    """The distillation loss that fits the outputs (a `torchslim.distill.losses.SOFT_LOSSES` name)."""
    target: str = "class"
    """`class` (int64 labels), `value` (float32 regression targets) or `tokens` (next-token ids)."""


METRICS: Registry[Metric] = Registry("metric")


def register_metric(name: str, metric: Metric, *, replace: bool = False) -> None:
    METRICS.register(name, metric, replace=replace)


def logits_of(output: Any) -> torch.Tensor:
    """The tensor a model returned, the main tensor of a Hugging Face ModelOutput (`data.main_output`:
    `logits`, else `last_hidden_state`), or the first item of a tuple."""
    logits = main_output(output)
    if isinstance(logits, (tuple, list)) and logits:
        logits = logits[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model returned {type(output).__name__}; expected a tensor or `.logits`")
    return logits


def _like(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Regression outputs `[N, 1]` against targets `[N]` compare element by element."""
    if outputs.shape != targets.shape and outputs.numel() == targets.numel():
        return outputs.reshape(targets.shape)
    return outputs


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return float((outputs.argmax(dim=-1) == targets).float().mean())


def top_k_accuracy(outputs: torch.Tensor, targets: torch.Tensor, top_k: int = 5) -> float:
    k = min(top_k, outputs.shape[-1])
    hits = (outputs.topk(k, dim=-1).indices == targets.unsqueeze(-1)).any(dim=-1)
    return float(hits.float().mean())


def f1_macro(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Macro F1: the unweighted mean over the classes present in targets or predictions."""
    pred = outputs.argmax(dim=-1)
    scores = []
    for c in torch.unique(torch.cat([pred, targets])):
        tp = int(((pred == c) & (targets == c)).sum())
        fp, fn = int(((pred == c) & (targets != c)).sum()), int(((pred != c) & (targets == c)).sum())
        scores.append(2 * tp / max(2 * tp + fp + fn, 1))
    return sum(scores) / len(scores)


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return float(F.mse_loss(_like(outputs, targets).float(), targets.float()))


def mae(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return float(F.l1_loss(_like(outputs, targets).float(), targets.float()))


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy of predicting token t+1 from position t; targets -100 (padding) are skipped."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), ignore_index=-100
    )


def perplexity(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return float(torch.exp(next_token_loss(outputs.float(), targets)))


def cosine(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return float(F.cosine_similarity(outputs.float(), targets.float(), dim=-1).mean())


def _regression_loss(fn: Loss) -> Loss:
    return lambda out, target: fn(_like(out, target), target.to(out.dtype))


def _cosine_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1.0 - F.cosine_similarity(out, target.to(out.dtype), dim=-1).mean()


_CLASS = {"higher_is_better": True, "loss": F.cross_entropy, "outputs": "logits"}
register_metric("accuracy", Metric(accuracy, **_CLASS))  # type: ignore[arg-type]
register_metric("top_k_accuracy", Metric(top_k_accuracy, **_CLASS))  # type: ignore[arg-type]
register_metric("f1", Metric(f1_macro, **_CLASS))  # type: ignore[arg-type]
register_metric("mse", Metric(mse, False, _regression_loss(F.mse_loss), "regression", "value"))
register_metric("mae", Metric(mae, False, _regression_loss(F.l1_loss), "regression", "value"))
register_metric("perplexity", Metric(perplexity, False, next_token_loss, "logits", "tokens"))
register_metric("cosine", Metric(cosine, True, _cosine_loss, "embedding", "value"))


def display_name(name: str, top_k: int) -> str:
    """What reports call the metric: `top5_accuracy` rather than `top_k_accuracy`."""
    return f"top{top_k}_accuracy" if name == "top_k_accuracy" else name
