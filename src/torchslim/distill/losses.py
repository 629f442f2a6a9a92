"""Distillation losses, chosen by what the model outputs (a registry keyed by output kind).

- `logits`: Hinton et al.'s KD: KL(teacher || student) between temperature-softened distributions,
  computed from the student's log-softmax (numerically stable), scaled by T^2 so the gradient
  magnitude does not shrink as T grows, mixed with the hard-label loss by `alpha`.
- `embedding`: for sentence encoders, 1 - cosine(student, teacher) (plus MSE, which also matches norms).
- features (FitNets): MSE between a student layer's activation, projected by a learned 1x1 map when
  widths differ, and the teacher layer's activation.
- attention (MiniLM's self-attention distribution transfer): KL(teacher || student) between two
  layers' attention distributions over keys, per head, averaged over heads and real (unpadded) queries.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.errors import UserError
from torchslim.registry import Registry

SoftLoss = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
SOFT_LOSSES: Registry[SoftLoss] = Registry("distillation loss")


@SOFT_LOSSES.register("logits")
def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL divergence of temperature-softened distributions, times T^2, averaged over every
    distribution: per example for `[batch, classes]`, per token for a language model's
    `[batch, tokens, vocab]` (so it weighs like the token-mean cross entropy it is mixed with)."""
    student, teacher = student.reshape(-1, student.shape[-1]), teacher.reshape(-1, teacher.shape[-1])
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


@SOFT_LOSSES.register("embedding")
def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """1 - cosine plus MSE; the temperature has no meaning for embeddings and is ignored."""
    cosine = F.cosine_similarity(student, teacher, dim=-1).mean()
    return (1.0 - cosine) + F.mse_loss(student, teacher)


@SOFT_LOSSES.register("regression")
def regression_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """MSE to the teacher's predictions (regression outputs have no distribution to soften)."""
    return F.mse_loss(student, teacher)


def mixed_loss(soft: torch.Tensor, hard: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """`alpha` weights the distillation term, `1 - alpha` the hard-label term."""
    if hard is None or alpha == 1.0:
        return soft
    return alpha * soft + (1.0 - alpha) * hard


def attention_kl(
    student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """KL(teacher || student) of attention maps `[batch, heads, queries, keys]` (rows sum to 1).

    Head counts may differ: both maps are reduced to gcd(H_s, H_t) heads by averaging contiguous
    groups of heads (an average of distributions is a distribution), so 12 -> 4 heads compares
    every 3 teacher heads with one student head, and coprime counts compare head-averaged maps.
    `valid` (`[batch, keys]`, False at padding) drops padded queries from the average; for
    self-attention a padded key is a padded query.
    """
    if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise UserError(
            f"attention maps differ in batch or sequence length: student {tuple(student.shape)}, "
            f"teacher {tuple(teacher.shape)} ([batch, heads, queries, keys])"
        )
    heads = math.gcd(student.shape[1], teacher.shape[1])
    s, t = _group_heads(student, heads), _group_heads(teacher, heads)
    eps = torch.finfo(s.dtype).tiny  # a student probability that underflowed to 0 must not give inf
    kl = (torch.xlogy(t, t) - torch.xlogy(t, s.clamp_min(eps))).sum(dim=-1).mean(dim=1)  # [batch, queries]
    if valid is None or kl.shape[1] != valid.shape[1]:
        return kl.mean()
    weight = valid.to(kl.dtype)
    return (kl * weight).sum() / weight.sum().clamp_min(1.0)


def _group_heads(maps: torch.Tensor, heads: int) -> torch.Tensor:
    b, h, q, k = maps.shape
    return maps if h == heads else maps.reshape(b, heads, h // heads, q, k).mean(dim=2)


class Projection(nn.Module):
    """A learned map from a student feature width to the teacher's (FitNets' regressor)."""

    def __init__(self, student_width: int, teacher_width: int, spatial_dims: int) -> None:
        """`spatial_dims` 1-3: channels at dim 1 (conv maps, 1x1 conv); 0: channels last (Linear)."""
        super().__init__()
        convs: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
        self.map = (
            convs[spatial_dims](student_width, teacher_width, kernel_size=1)
            if spatial_dims in convs
            else nn.Linear(student_width, teacher_width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.map(x)
