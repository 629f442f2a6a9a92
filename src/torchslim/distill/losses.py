"""Distillation losses, chosen by what the model outputs (a registry keyed by output kind).

- `logits`: Hinton et al.'s KD: KL(teacher || student) between temperature-softened distributions,
  computed from the student's log-softmax (numerically stable), scaled by T^2 so the gradient
  magnitude does not shrink as T grows, mixed with the hard-label loss by `alpha`.
- `embedding`: for sentence encoders, 1 - cosine(student, teacher) (plus MSE, which also matches norms).
- features (FitNets): MSE between a student layer's activation, projected by a learned 1x1 map when
  widths differ, and the teacher layer's activation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.registry import Registry

SoftLoss = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
SOFT_LOSSES: Registry[SoftLoss] = Registry("distillation loss")


@SOFT_LOSSES.register("logits")
def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL divergence of temperature-softened distributions, times T^2 (batch mean)."""
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


@SOFT_LOSSES.register("embedding")
def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """1 - cosine plus MSE; the temperature has no meaning for embeddings and is ignored."""
    cosine = F.cosine_similarity(student, teacher, dim=-1).mean()
    return (1.0 - cosine) + F.mse_loss(student, teacher)


def mixed_loss(soft: torch.Tensor, hard: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """`alpha` weights the distillation term, `1 - alpha` the hard-label term."""
    if hard is None or alpha == 1.0:
        return soft
    return alpha * soft + (1.0 - alpha) * hard


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
