"""Wanda, SparseGPT and N:M on a tiny random-config Llama: exact masks, the paper's scores, and
SparseGPT's reconstruction lowering a layer's output error."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

import tiny_hf
import torchslim as ts
from torchslim.errors import UserError
from torchslim.llm.sparse import inverse_hessian_factor, keep_per_row, sparsegpt_prune
from torchslim.prune.masks import get_mask, iter_masks

Q = "model.layers.0.self_attn.q_proj"


def _data(n: int = 4, vocab: int = 64) -> list[Any]:
    return tiny_hf.token_batches(n, (4, 16), seed=2, vocab=vocab)


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_hf.llama().eval()


def _inputs_of(model: torch.nn.Module, name: str, data: list[Any]) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    h = model.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, 32)))
    with torch.no_grad():
        for x, _ in data:
            model(x)
    h.remove()
    return torch.cat(seen)


def _block_linears(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: m.weight
        for n, m in model.named_modules()
        if n.startswith("model.layers.") and hasattr(m, "in_features")
    }


@pytest.mark.parametrize("importance", ["wanda", "sparsegpt"])
def test_unstructured_masks_are_exact_and_only_in_the_blocks(llama: Any, importance: str) -> None:
    model = copy.deepcopy(llama)
    rep = ts.prune_(model, ts.SparsityConfig(sparsity=0.5, importance=importance), data=_data())
    weights = _block_linears(model)
    assert len(weights) == 14 and rep.sparsity == 0.5
    for name, w in weights.items():
        assert int((w == 0).sum()) == w.numel() // 2, name
        if importance == "wanda":  # the paper's comparison group: every output row loses the same count
            assert ((w == 0).sum(1) == w.shape[1] // 2).all(), name
    masked = {n for n, *_ in iter_masks(model)}
    assert masked == set(weights)  # embeddings, lm_head untouched
    assert rep.extra["engine"] == "layer-by-layer" and rep.extra["blocks"] == 2


def test_wanda_prunes_the_lowest_weight_times_input_norm(llama: Any) -> None:
    model = copy.deepcopy(llama)
    data = _data()
    x = _inputs_of(llama, Q, data)  # block 0 sees the dense embeddings either way
    w = llama.get_submodule(Q).weight.detach()
    expected = keep_per_row(w.abs() * x.norm(dim=0)[None, :], 0.6)
    ts.prune_(model, ts.SparsityConfig(sparsity=0.6, importance="wanda"), data=data)
    mask = get_mask(model.get_submodule(Q), "weight")
    assert mask is not None and torch.equal(mask.mask, expected)
    assert not torch.equal(expected, keep_per_row(w.abs(), 0.6))  # the activations changed the choice


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
@pytest.mark.parametrize("importance", ["wanda", "sparsegpt", "magnitude"])
def test_nm_pattern_is_exact_for_every_criterion(llama: Any, importance: str, pattern: str) -> None:
    n, m = map(int, pattern.split(":"))
    model = copy.deepcopy(llama)
    config = ts.SparsityConfig(importance=importance, pattern=pattern, include=["model.layers.*"])
    assert config.sparsity == 1 - n / m
    rep = ts.prune_(model, config, data=_data())
    assert rep.sparsity == pytest.approx(1 - n / m)
    for name, w in _block_linears(model).items():
        groups = (w != 0).reshape(w.shape[0], -1, m).sum(-1)
        assert (groups == n).all(), name


@pytest.mark.parametrize("cols", [64, 200])  # one block of columns, and two (the second partial)
def test_sparsegpt_reconstruction_lowers_the_layer_output_error(cols: int) -> None:
    torch.manual_seed(3)
    x = torch.randn(1024, cols) @ torch.randn(cols, cols)  # correlated inputs, as a layer's are
    w = torch.randn(48, cols)
    hinv = inverse_hessian_factor(x.T @ x / 1024, 0.01)
    for pattern in (None, (2, 4)):
        rebuilt, keep = sparsegpt_prune(w, hinv, 0.5, pattern, block=128)
        assert torch.equal(rebuilt == 0, ~keep | (rebuilt == 0)) and int((~keep).sum()) == w.numel() // 2
        ref = x @ w.T
        plain = (x @ (w * keep).T - ref).square().sum() / ref.square().sum()
        recon = (x @ rebuilt.T - ref).square().sum() / ref.square().sum()
        assert recon < 0.8 * plain, (pattern, float(recon), float(plain))


def test_sparsegpt_beats_wanda_and_magnitude_on_the_model_output(llama: Any) -> None:
    data = _data()
    x = data[0][0]
    with torch.no_grad():
        ref = llama(x).logits
    errors = {}
    for importance in ("magnitude", "wanda", "sparsegpt"):
        model = copy.deepcopy(llama)
        config = ts.SparsityConfig(
            sparsity=0.6, importance=importance, scope="layer", include=["model.layers.*"]
        )
        ts.prune_(model, config, data=data)
        with torch.no_grad():
            errors[importance] = float((model(x).logits - ref).square().mean() / ref.square().mean())
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors


def test_gpt2_conv1d_and_bert_blocks_prune(llama: Any) -> None:
    for model, vocab in ((tiny_hf.gpt2().eval(), 64), (tiny_hf.bert().eval(), 64)):
        ts.prune_(model, ts.SparsityConfig(importance="sparsegpt", pattern="2:4"), data=_data(2, vocab))
        masked = list(iter_masks(model))
        assert masked
        for _, module, param, _ in masked:
            w = getattr(module, param)
            rows = w.T if type(module).__name__.endswith("Conv1D") else w
            assert ((rows != 0).reshape(rows.shape[0], -1, 4).sum(-1) <= 2).all()


def test_pruned_model_round_trips_and_stores_compactly(llama: Any, tmp_path: Path) -> None:
    model = copy.deepcopy(llama).half()
    dense_dir = ts.save(copy.deepcopy(model), tmp_path / "dense")
    ts.prune_(model, ts.SparsityConfig(importance="sparsegpt", pattern="2:4"), data=_data())
    ts.make_permanent(model)
    ts.save(model, tmp_path / "sparse")
    back = ts.load(tmp_path / "sparse")
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    manifest = (tmp_path / "sparse" / "manifest.json").read_text()
    assert '"sparse_nm"' in manifest
    size = (tmp_path / "sparse" / "model.safetensors").stat().st_size
    dense = Path(dense_dir) / "model.safetensors" if dense_dir else tmp_path / "dense" / "model.safetensors"
    blocks = sum(w.numel() for w in _block_linears(model).values())
    # 2:4 halves the values, the ranks cost 3 bits per 4 weights; part headers cost the rest at this size
    assert dense.stat().st_size - size > 0.35 * blocks * 2


def test_bad_requests_name_the_fix(llama: Any) -> None:
    model = copy.deepcopy(llama)
    with pytest.raises(UserError, match="needs calibration data"):
        ts.prune_(model, ts.SparsityConfig(sparsity=0.5, importance="wanda"))
    with pytest.raises(UserError, match="threshold"):
        ts.prune_(model, ts.SparsityConfig(threshold=0.1, importance="sparsegpt"), data=_data())
    with pytest.raises(UserError, match="omit sparsity or set it to 0.5"):
        ts.SparsityConfig(sparsity=0.7, pattern="2:4")
    with pytest.raises(UserError, match="'N:M'"):
        ts.SparsityConfig(pattern="4:2")
    with pytest.raises(UserError, match="not a multiple of 8"):
        ts.prune_(torch.nn.Sequential(torch.nn.Linear(30, 4)), ts.SparsityConfig(pattern="4:8"))


def test_include_selects_blocks_and_the_others_pass_their_outputs_on(llama: Any) -> None:
    model = copy.deepcopy(llama)
    rep = ts.prune_(
        model, ts.SparsityConfig(sparsity=0.5, importance="sparsegpt", include=["*.layers.1.*"]), data=_data()
    )
    masked = {n for n, *_ in iter_masks(model)}
    assert masked and all(n.startswith("model.layers.1.") for n in masked)
    assert rep.extra["block_output_error"]["model.layers.0"] == 0.0
    assert rep.extra["block_output_error"]["model.layers.1"] > 0.0


def test_sparsegpt_shares_one_hessian_between_layers_that_read_one_input(llama: Any) -> None:
    from torchslim.llm.sparse import SparseGPT, block_targets

    config = ts.SparsityConfig(sparsity=0.5, importance="sparsegpt")
    targets = {t.module_name: t for t in block_targets(llama, config)}
    method = SparseGPT(config, targets)
    shared: dict[str, Any] = {}

    class Peek(SparseGPT):
        def apply(self, name: str, module: Any) -> None:
            shared[name] = self.hessians[name]

    peek = Peek(config, targets)
    from torchslim.llm import engine

    engine.run(copy.deepcopy(llama), _data(2), peek, set(targets))
    layer = "model.layers.0."
    q, k, v, o = (shared[layer + f"self_attn.{p}_proj"] for p in "qkvo")
    gate, up, down = (shared[layer + f"mlp.{p}_proj"] for p in ("gate", "up", "down"))
    assert q is k is v and gate is up
    assert len({id(q), id(o), id(gate), id(down)}) == 4
    assert q.tokens == 2 * 4 * 16  # each token counted once, not once per reader
    assert method.hessians == {}
