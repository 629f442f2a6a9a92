"""Statistics of a Linear layer's inputs that LLM methods share: the Hessian `X^T X`, column norms.

`rows_of`/`store_rows` give every Linear-like weight in `[out, in]` layout (transformers' Conv1D
stores `[in, out]`), so methods are written once.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from torchslim.quant.conv1d import is_conv1d


def flat_inputs(x: torch.Tensor) -> torch.Tensor:
    """`[..., in]` -> `[tokens, in]` in float32."""
    return x.reshape(-1, x.shape[-1]).float()


class Hessian:
    """Mean of `x x^T` over every input token seen (float32 sums; a token's row is one sample)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.tokens = 0

    def update(self, x: torch.Tensor) -> None:
        flat = flat_inputs(x)
        if self.total is None:
            self.total = flat.T @ flat
        else:
            self.total.addmm_(flat.T, flat)  # in place: no second [in, in] matrix
        self.tokens += flat.shape[0]

    def value(self) -> torch.Tensor:
        """The mean, in place (a wide layer's H is large: no second copy is made)."""
        assert self.total is not None, "no inputs were observed"
        return self.total.div_(max(self.tokens, 1))

    def take(self) -> torch.Tensor:
        """The mean, handed over: this object lets go of it (its consumer may free it early)."""
        out = self.value()
        self.total = None
        return out


class ColumnNorms:
    """Per input feature, the L2 norm of its values over every token seen (Wanda's ||X_j||_2)."""

    def __init__(self) -> None:
        self.squares: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        sq = flat_inputs(x).square().sum(0)
        self.squares = sq if self.squares is None else self.squares + sq

    def value(self) -> torch.Tensor:
        assert self.squares is not None, "no inputs were observed"
        return self.squares.sqrt()


def rows_of(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """`weight` of `module` as `[out, in]` (a view)."""
    return weight.T if is_conv1d(module) else weight


def store_rows(module: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """An `[out, in]` tensor back in the layout `module` stores its weight in."""
    return rows.T.contiguous() if is_conv1d(module) else rows
