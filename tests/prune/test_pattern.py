"""N:M selection: the N highest of every M along a row, exact, ties to the earlier weight."""

from __future__ import annotations

import pytest
import torch

from torchslim.errors import UserError
from torchslim.prune import pattern


def test_keep_nm_keeps_the_highest_n_of_every_group() -> None:
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0, 0.0, 5.0, 5.0]])
    keep = pattern.keep_nm(scores, 2, 4)
    assert keep.tolist() == [[True, False, True, False, False, False, True, True]]
    tie = pattern.keep_nm(torch.zeros(1, 4), 2, 4)
    assert tie.tolist() == [[True, True, False, False]]


def test_keep_nm_is_exact_on_conv_rows_and_skips_pruned_entries() -> None:
    scores = torch.rand(6, 4, 3, 2)  # rows of 24 (in * kh * kw)
    scores[0, 0, 0, 0] = -torch.inf
    keep = pattern.keep_nm(scores, 4, 8)
    assert keep.shape == scores.shape and not keep[0, 0, 0, 0]
    assert (keep.reshape(6, -1, 8).sum(-1) == 4).all()
    assert pattern.is_nm(torch.where(keep, scores, 0.0), 4, 8) and not pattern.is_nm(scores, 4, 8)


@pytest.mark.parametrize("bad", ["2-4", "4:2", "0:4", "2:4:8", "2:200"])
def test_parse_refuses_malformed_patterns(bad: str) -> None:
    with pytest.raises(UserError, match="'N:M'"):
        pattern.parse(bad)


def test_sparsity_of() -> None:
    assert pattern.sparsity_of("2:4") == 0.5 and pattern.sparsity_of("1:8") == 0.875
