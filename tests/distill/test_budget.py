"""The distill step/token budget: training stops at the right step with the schedule fitted to it,
and recovery after one-shot LLM sparsity keeps the masks exact."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn as nn

import tiny_hf
import torchslim as ts
from torchslim.distill.api import batch_tokens, step_budget
from torchslim.distill.trainer import fit
from torchslim.errors import UserError
from torchslim.prune.masks import iter_masks
from torchslim.tasks.lm import batches
from torchslim.tasks.metrics import next_token_loss


class _Steps:
    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []

    def after_step(self, model: nn.Module, step: int, total: int) -> None:
        self.steps.append((step, total))


def _rows(n: int = 24, tokens: int = 8, vocab: int = 64) -> torch.Tensor:
    return torch.randint(0, vocab, (n, tokens), generator=torch.Generator().manual_seed(3))


def _loader(rows: torch.Tensor, batch: int = 4) -> Any:
    return lambda epoch: list(batches(rows, batch, seed=epoch))


def _lm_loss(model: nn.Module, inputs: Any, target: Any) -> torch.Tensor:
    return next_token_loss(model(**inputs, use_cache=False).logits, target)


def test_max_steps_stops_inside_an_epoch_and_fits_the_schedule() -> None:
    torch.manual_seed(0)
    model, seen = tiny_hf.llama(), _Steps()
    history = fit(model, _loader(_rows()), _lm_loss, epochs=3, lr=1e-3, max_steps=8, callbacks=[seen])
    # 6 batches per epoch: 8 steps end 2 batches into the second epoch, the cosine fitted to 8
    assert seen.steps == [(s, 8) for s in range(1, 9)]
    assert [r["epoch"] for r in history] == [1.0, 2.0]


def test_without_a_budget_every_epoch_runs() -> None:
    torch.manual_seed(0)
    seen = _Steps()
    fit(tiny_hf.llama(), _loader(_rows()), _lm_loss, epochs=2, lr=1e-3, callbacks=[seen])
    assert seen.steps[-1] == (12, 12) and len(seen.steps) == 12


def test_token_budget_rounds_up_to_whole_batches() -> None:
    batch = ({"input_ids": torch.zeros(4, 8, dtype=torch.long)}, None)
    assert batch_tokens(batch) == 32
    assert step_budget(ts.DistillConfig(tokens=100), batch) == 4  # ceil(100 / 32)
    assert step_budget(ts.DistillConfig(tokens=100, max_steps=3), batch) == 3
    assert step_budget(ts.DistillConfig(), batch) is None
    with pytest.raises(UserError, match="no token ids"):
        step_budget(ts.DistillConfig(tokens=10), (torch.randn(2, 3), None))
    with pytest.raises(UserError, match="max_steps"):
        ts.DistillConfig(max_steps=0)


def _two_four(w: torch.Tensor) -> bool:
    return bool(((w.reshape(-1, 4) != 0).sum(1) <= 2).all())


def test_recovery_distillation_keeps_sparsity_masks_exact() -> None:
    torch.manual_seed(0)
    teacher = tiny_hf.llama().eval()
    student = copy.deepcopy(teacher)
    rows = _rows(32, 16)
    calib = [({"input_ids": rows[i : i + 4]}, None) for i in range(0, 16, 4)]
    ts.prune_(student, ts.SparsityConfig(sparsity=0.5, importance="sparsegpt", pattern="2:4"), data=calib)
    before = {name: mask.mask.clone() for name, _, _, mask in iter_masks(student)}
    weights_before = {n: p.detach().clone() for n, p in student.named_parameters()}
    steps = _Steps()
    ts.distill(student, teacher, _loader(rows), ts.DistillConfig(epochs=5, lr=1e-3, tokens=200),
               hard_loss=None, callbacks=[steps])  # fmt: skip
    assert len(steps.steps) == 4  # ceil(200 / (4 x 16)) of the 5 x 8 steps
    after = {name: (module, param, mask) for name, module, param, mask in iter_masks(student)}
    assert before.keys() == after.keys() and len(before) == 14
    for name, (module, param, mask) in after.items():
        assert torch.equal(mask.mask, before[name]), name
        effective = getattr(module, param)
        assert _two_four(effective) and torch.equal(effective != 0, mask.mask), name
    changed = sum(not torch.equal(p, weights_before[n]) for n, p in student.named_parameters())
    assert changed > 0  # it trained
