import copy
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from unstructured_fixtures import one_thread as one_thread

import torchslim as ts
from torchslim import io
from torchslim.metrics import layer_table
from torchslim.metrics.size import effective_weights, nonzero_params, param_count
from torchslim.prune.masks import get_mask, harden, iter_masks, make_permanent, set_mask

pytestmark = pytest.mark.usefixtures("one_thread")


def _half_mask(w: torch.Tensor) -> torch.Tensor:
    return torch.arange(w.numel()).view(w.shape) % 2 == 0


def _train(model: nn.Module, steps: int, *, weight_decay: float = 0.1, lr: float = 0.05) -> None:
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        x = torch.randn(16, 8)
        loss = F.mse_loss(model(x), torch.randn(16, 4))
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_hard_masks_stay_zero_through_adamw_with_weight_decay() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    keep = _half_mask(layer.weight)
    set_mask(layer, "weight", keep, soft=False)
    before = layer.weight.detach().clone()
    _train(layer, 20)
    assert torch.count_nonzero(layer.weight[~keep]) == 0
    assert (
        torch.count_nonzero(layer.parametrizations.weight.original[~keep]) == 0
    )  # no drift in storage either
    assert not torch.equal(layer.weight[keep], before[keep])  # the kept weights did train


def test_hard_masks_get_no_gradient() -> None:
    layer = nn.Linear(8, 4)
    keep = _half_mask(layer.weight)
    set_mask(layer, "weight", keep, soft=False)
    layer(torch.randn(3, 8)).sum().backward()
    grad = layer.parametrizations.weight.original.grad
    assert grad is not None and torch.count_nonzero(grad[~keep]) == 0 and torch.count_nonzero(grad[keep]) > 0


def test_stale_optimizer_state_cannot_leak_into_the_effective_weight_or_the_file() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.05, weight_decay=0.1)
    for _ in range(5):  # build momentum before pruning
        opt.zero_grad()
        layer(torch.randn(4, 8)).pow(2).sum().backward()
        opt.step()
    keep = _half_mask(layer.weight)
    set_mask(layer, "weight", keep, soft=False)
    opt = torch.optim.AdamW([layer.parametrizations.weight.original, layer.bias], lr=0.05, weight_decay=0.1)
    opt.state[layer.parametrizations.weight.original] = {
        "step": torch.tensor(5.0),
        "exp_avg": torch.ones(4, 8),
        "exp_avg_sq": torch.ones(4, 8),
    }
    opt.zero_grad()
    layer(torch.randn(4, 8)).pow(2).sum().backward()
    opt.step()
    assert torch.count_nonzero(layer.parametrizations.weight.original[~keep]) > 0  # momentum moved them
    assert torch.count_nonzero(layer.weight[~keep]) == 0
    assert torch.count_nonzero(layer.state_dict()["parametrizations.weight.original"][~keep]) == 0


def test_soft_masks_pass_gradients_and_let_weights_regrow() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    keep = _half_mask(layer.weight)
    set_mask(layer, "weight", keep, soft=True)
    pruned_before = layer.parametrizations.weight.original[~keep].detach().clone()
    assert torch.count_nonzero(layer.weight[~keep]) == 0  # the forward pass sees them pruned
    _train(layer, 20, weight_decay=0.0)
    latent = layer.parametrizations.weight.original
    assert not torch.equal(latent[~keep], pruned_before)  # straight-through gradients kept them learning
    assert torch.count_nonzero(layer.weight[~keep]) == 0
    # recompute the mask from the latent weights: some pruned weights grew back above kept ones
    regrown = latent.detach().abs() >= latent.detach().abs().flatten().kthvalue(16).values
    assert (regrown & ~keep).any()
    set_mask(layer, "weight", regrown, soft=True)
    assert torch.equal(layer.weight != 0, regrown)


def test_harden_then_make_permanent_folds_masks_into_plain_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    keep = _half_mask(model[0].weight)
    set_mask(model[0], "weight", keep, soft=True)
    x = torch.randn(5, 8)
    expected = model(x)
    assert harden(model) == 1 and not get_mask(model[0], "weight").soft
    assert torch.count_nonzero(model[0].parametrizations.weight.original[~keep]) == 0
    assert make_permanent(model) == 1
    assert set(model.state_dict()) == {"0.weight", "0.bias"}
    assert isinstance(model[0].weight, nn.Parameter) and torch.equal(model[0].weight != 0, keep)
    assert torch.allclose(model(x), expected)
    assert not list(iter_masks(model))


def test_effective_weights_param_counts_and_layer_table_see_masked_weights(lenet) -> None:
    ts.prune_(lenet, ts.SparsityConfig(sparsity=0.5, scope="layer"))
    assert param_count(lenet) == 431_080
    weights = {n for n, _ in effective_weights(lenet)}
    assert "fc1.weight" in weights and not any("original" in n or "mask" in n for n in weights)
    nonzero = 431_080 - sum(round(0.5 * n) for n in (500, 25_000, 400_000, 5000))
    assert nonzero_params(lenet) == nonzero
    rows = {r["name"]: r for r in layer_table(lenet, torch.randn(1, 1, 28, 28))}
    assert list(rows) == ["conv1", "conv2", "fc1", "fc2"]
    assert rows["fc1"]["shape"] == [500, 800] and rows["fc1"]["params"] == 400_500
    assert rows["fc1"]["sparsity"] == pytest.approx(200_000 / 400_500, abs=1e-6)


def test_deepcopy_keeps_masks_and_outputs(lenet) -> None:
    ts.prune_(lenet, ts.SparsityConfig(sparsity=0.8, scope="layer"))
    clone = copy.deepcopy(lenet)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(clone(x), lenet(x))
    get_mask(clone.fc1, "weight").mask.fill_(True)  # independent buffers
    assert torch.count_nonzero(lenet.fc1.weight) == 80_000


def test_changing_masks_on_a_deepcopy_leaves_the_original_working(lenet) -> None:
    ts.prune_(lenet, ts.SparsityConfig(sparsity=0.5, include=("fc1",), scope="layer"))
    x = torch.randn(2, 1, 28, 28)
    expected = lenet(x)
    folded, extended = copy.deepcopy(lenet), copy.deepcopy(lenet)
    make_permanent(folded)  # torch deletes the masked property from the (shared) generated class
    set_mask(extended.fc1, "bias", torch.ones(500, dtype=torch.bool), soft=False)
    torch.testing.assert_close(lenet(x), expected)
    torch.testing.assert_close(folded(x), expected)
    assert get_mask(lenet.fc1, "bias") is None and not hasattr(type(lenet.fc1), "bias")


def test_recurrent_attention_and_embedding_masks_change_outputs_as_masked_weights_would() -> None:
    torch.manual_seed(0)
    lstm, attn, emb = nn.LSTM(4, 6), nn.MultiheadAttention(8, 2), nn.Embedding(10, 4)
    ref = [copy.deepcopy(m) for m in (lstm, attn, emb)]
    for module, reference in zip((lstm, attn, emb), ref, strict=True):
        ts.prune_(module, ts.SparsityConfig(sparsity=0.5, scope="layer"))
        with torch.no_grad():
            for name, p in reference.named_parameters():
                if name.startswith("weight") or name.endswith("weight"):
                    p.mul_(_effective(module, name) != 0)
    x, q, ids = torch.randn(3, 2, 4), torch.randn(5, 2, 8), torch.tensor([1, 2, 3])
    assert torch.allclose(lstm(x)[0], ref[0](x)[0])
    assert torch.allclose(attn(q, q, q)[0], ref[1](q, q, q)[0])
    assert torch.equal(emb(ids), ref[2](ids))
    assert torch.count_nonzero(attn.in_proj_weight) == 96 and torch.count_nonzero(attn.out_proj.weight) == 32


def _effective(module: nn.Module, name: str) -> torch.Tensor:
    owner, _, attr = name.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, attr)


@pytest.mark.slow
def test_pruned_model_exports_to_onnx(tmp_path: Path, lenet) -> None:
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    ts.prune_(lenet, ts.SparsityConfig(sparsity=0.9, scope="layer"))
    lenet.eval()
    x = torch.randn(2, 1, 28, 28)
    path = ts.export_onnx(lenet, x, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path))
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert torch.allclose(torch.from_numpy(out[0]), lenet(x), atol=1e-5)


def test_replayed_transform_rebuilds_masks_before_values_load(tmp_path: Path, tiny_task) -> None:
    model = tiny_task.model()
    ts.prune_(model, ts.SparsityConfig(sparsity=0.7, soft=True, include=["fc1"]))
    harden(model)
    assert [t["name"] for t in io.record_of(model).transforms] == [
        "unstructured_masks"
    ]  # the flag is a value
    ts.save(model, tmp_path / "m")
    loaded = ts.load(tmp_path / "m")
    assert get_mask(loaded.fc1, "weight") is not None and not get_mask(loaded.fc1, "weight").soft
    assert get_mask(loaded.fc2, "weight") is None
    make_permanent(loaded)
    ts.save(loaded, tmp_path / "folded")
    again = ts.load(tmp_path / "folded")
    assert not list(iter_masks(again))
    assert torch.equal(again.fc1.weight, model.fc1.weight)
