"""Minitron width pruning of a tiny random-config Llama: grouped-query constraint kept, the
activation importance picks the right units, and the cut model reloads identically through
`from_pretrained` and `ts.load`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

import tiny_hf
import torchslim as ts
from torchslim.errors import UserError
from torchslim.llm.structured import (
    Plan,
    WidthTarget,
    activation_scores,
    apply_plan,
    choose_heads,
    prune_width,
)


def _data(n: int = 4, vocab: int = 64) -> list[Any]:
    return tiny_hf.token_batches(n, (4, 16), seed=2, vocab=vocab)


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_hf.llama(num_attention_heads=8, head_dim=4).eval()  # 8 query heads over 2 kv heads


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=x, use_cache=False).logits


def test_heads_keep_whole_groups_then_the_best_queries_of_each() -> None:
    scores = torch.tensor([1.0, 9, 2, 3, 8, 7, 0, 6])  # groups of 4: sums 15 and 21
    assert choose_heads(scores, 2, WidthTarget(kv_heads=1)) == [4, 5, 6, 7]
    assert choose_heads(scores, 2, WidthTarget(heads=2, kv_heads=1)) == [4, 5]
    assert choose_heads(scores, 2, WidthTarget(heads=4)) == [1, 3, 4, 5]  # 2 per group, both groups
    for bad in (WidthTarget(heads=3), WidthTarget(heads=6, kv_heads=1), WidthTarget(kv_heads=3)):
        with pytest.raises(UserError, match="heads"):
            choose_heads(scores, 2, bad)


def test_activation_importance_finds_a_silenced_neuron_and_head(llama: Any) -> None:
    model = copy.deepcopy(llama)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[5] = 0  # neuron 5 outputs zero
        model.model.layers[1].self_attn.v_proj.weight[:4] = 0  # kv head 0: its 4 query heads read zeros
    scores = activation_scores(model, _data())
    assert int(scores.neurons[0].argmin()) == 5 and float(scores.neurons[0][5]) == 0
    assert scores.heads[1][:4].max() == 0 and scores.heads[1][4:].min() > 0
    assert scores.hidden.shape == (32,) and len(scores.heads) == 2


@pytest.mark.parametrize(
    "target",
    [WidthTarget(heads=4, kv_heads=1), WidthTarget(heads=4), WidthTarget(intermediate=24),
     WidthTarget(hidden=24), WidthTarget(heads=2, kv_heads=1, intermediate=16, hidden=16)],
)  # fmt: skip
def test_cut_reloads_identically_with_from_pretrained(
    llama: Any, target: WidthTarget, tmp_path: Path
) -> None:
    import transformers

    model = copy.deepcopy(llama)
    prune_width(model, target, _data())
    c = model.config
    assert c.num_attention_heads % c.num_key_value_heads == 0 and c.head_dim == 4
    assert (c.num_attention_heads, c.num_key_value_heads) == (target.heads or 8, target.kv_heads or 2)
    assert (c.intermediate_size, c.hidden_size) == (target.intermediate or 64, target.hidden or 32)
    attn = model.model.layers[1].self_attn
    assert attn.q_proj.weight.shape == (c.num_attention_heads * 4, c.hidden_size)
    assert attn.k_proj.weight.shape == (c.num_key_value_heads * 4, c.hidden_size)
    x = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(5))
    ours = _logits(model, x)
    model.save_pretrained(tmp_path / "hf")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert torch.equal(_logits(back, x), ours)
    ts.save(model, tmp_path / "ts")
    assert torch.equal(_logits(ts.load(tmp_path / "ts"), x), ours)


def test_cutting_unimportant_units_changes_little(llama: Any) -> None:
    """The activation-chosen units against the worst ones: the kept model stays closer to the dense."""
    x = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(7))
    dense = _logits(llama, x)
    best = copy.deepcopy(llama)
    prune_width(best, WidthTarget(intermediate=32), _data())
    worst = copy.deepcopy(llama)
    scores = activation_scores(worst, _data())
    worst_neurons = [sorted(torch.topk(-n, 32).indices.tolist()) for n in scores.neurons]
    plan = Plan(heads=[list(range(8))] * 2, neurons=worst_neurons, hidden=list(range(32)))
    apply_plan(worst, plan)
    gap = lambda m: float((_logits(m, x) - dense).square().mean())  # noqa: E731
    assert gap(best) < 0.7 * gap(worst)  # measured 0.52


def test_hidden_must_divide_by_the_heads_kept(llama: Any) -> None:
    with pytest.raises(UserError, match="multiple of the 8 query heads"):
        prune_width(copy.deepcopy(llama), WidthTarget(hidden=20), _data())


def test_depth_then_width_reloads_identically(llama: Any, tmp_path: Path) -> None:
    """Fewer blocks, then the kept ones narrowed (the `both` cut): the two transforms replay in order."""
    from torchslim.distill.students import shallow_student

    model = shallow_student(llama, count=1, path="model.layers")
    prune_width(model, WidthTarget(heads=4, intermediate=48), _data())
    assert len(model.model.layers) == 1 and model.config.num_hidden_layers == 1
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (4 * 4, 32)
    x = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(5))
    ours = _logits(model, x)
    ts.save(model, tmp_path / "ts")
    assert torch.equal(_logits(ts.load(tmp_path / "ts"), x), ours)
