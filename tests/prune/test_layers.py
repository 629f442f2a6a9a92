"""Layer surgery: a cut layer computes exactly the kept slice of what the dense layer computed."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from torchslim.prune.layers import LAYERS, prune_module, rule_of


def _keep(n: int) -> torch.Tensor:
    return torch.arange(0, n, 2)


@pytest.mark.parametrize(
    ("layer", "x", "dim"),
    [
        (nn.Linear(6, 8), torch.randn(3, 6), -1),
        (nn.Conv1d(4, 8, 3), torch.randn(2, 4, 9), 1),
        (nn.Conv2d(4, 8, 3), torch.randn(2, 4, 9, 9), 1),
        (nn.ConvTranspose2d(4, 8, 2, stride=2), torch.randn(2, 4, 5, 5), 1),
        (nn.Embedding(10, 8), torch.randint(0, 10, (2, 5)), -1),
    ],
)
def test_output_cut_is_a_slice(layer: nn.Module, x: torch.Tensor, dim: int) -> None:
    dense = layer(x)
    keep = _keep(dense.shape[dim])
    prune_module(layer, "out", keep)
    assert torch.allclose(layer(x), dense.index_select(dim, keep), atol=1e-6)


@pytest.mark.parametrize(
    ("layer", "x", "dim"),
    [
        (nn.Linear(8, 5), torch.randn(3, 8), -1),
        (nn.Conv2d(8, 5, 3), torch.randn(2, 8, 7, 7), 1),
        (nn.ConvTranspose1d(8, 5, 3), torch.randn(2, 8, 7), 1),
    ],
)
def test_input_cut_equals_zeroed_inputs(layer: nn.Module, x: torch.Tensor, dim: int) -> None:
    keep = _keep(x.shape[dim])
    dropped = torch.ones(x.shape[dim], dtype=torch.bool)
    dropped[keep] = False
    zeroed = x.clone()
    zeroed.index_fill_(dim % x.ndim, dropped.nonzero().flatten(), 0.0)
    dense = layer(zeroed)
    prune_module(layer, "in", keep)
    assert torch.allclose(layer(x.index_select(dim, keep)), dense, atol=1e-5)


@pytest.mark.parametrize(
    ("layer", "x"),
    [
        (nn.BatchNorm2d(8).eval(), torch.randn(2, 8, 4, 4)),
        (nn.GroupNorm(4, 8), torch.randn(2, 8, 4, 4)),
    ],
)
def test_norms_keep_their_channels(layer: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(0.5, 1.5)
    dim = 1
    keep = (
        torch.tensor([0, 1, 4, 5]) if isinstance(layer, nn.GroupNorm) else _keep(8)
    )  # GroupNorm: whole groups
    dense = layer(x).index_select(dim, keep)
    prune_module(layer, "both", keep)
    out = layer(x.index_select(dim, keep))
    if isinstance(layer, nn.BatchNorm2d):
        assert layer.num_features == 4 and layer.running_mean.shape == (4,)
    if isinstance(layer, nn.GroupNorm):
        assert (layer.num_groups, layer.num_channels) == (2, 4)
    assert torch.allclose(out, dense, atol=1e-5)


def test_layer_norm_normalizes_the_kept_channels() -> None:
    """Statistics over fewer channels differ, so a LayerNorm cut is exact only on the kept values."""
    layer = nn.LayerNorm(8)
    prune_module(layer, "both", _keep(8))
    x = torch.randn(2, 3, 4)
    assert layer.normalized_shape == (4,) and layer.weight.shape == (4,)
    assert torch.allclose(layer(x), nn.functional.layer_norm(x, (4,)), atol=1e-5)


def test_grouped_conv_loses_whole_groups() -> None:
    conv = nn.Conv2d(8, 16, 3, groups=4)
    x = torch.randn(2, 8, 6, 6)
    dense = conv(x)
    keep_in, keep_out = torch.tensor([0, 1, 6, 7]), torch.tensor([0, 1, 2, 3, 12, 13, 14, 15])
    prune_module(conv, "in", keep_in)
    prune_module(conv, "out", keep_out)
    assert (conv.groups, conv.in_channels, conv.out_channels) == (2, 4, 8)
    assert torch.allclose(conv(x.index_select(1, keep_in)), dense.index_select(1, keep_out), atol=1e-5)


def test_grouped_conv_narrowed_within_groups() -> None:
    """Every group keeps its count and loses the same positions: the group count stays."""
    conv = nn.Conv2d(8, 12, 3, groups=4)  # 2 inputs and 3 outputs per group
    x = torch.randn(2, 8, 6, 6)
    keep_in, keep_out = torch.tensor([1, 3, 5, 7]), torch.tensor([0, 2, 3, 5, 6, 8, 9, 11])
    x_kept = torch.zeros_like(x)
    x_kept[:, keep_in] = x[:, keep_in]
    dense = conv(x_kept).index_select(1, keep_out)
    prune_module(conv, "in", keep_in)
    prune_module(conv, "out", keep_out)
    assert (conv.groups, conv.in_channels, conv.out_channels) == (4, 4, 8)
    assert conv.weight.shape == (8, 1, 3, 3)
    assert torch.allclose(conv(x.index_select(1, keep_in)), dense, atol=1e-5)


def test_transformers_conv1d_rule() -> None:
    transformers = pytest.importorskip("transformers")
    layer = transformers.pytorch_utils.Conv1D(8, 6)
    x = torch.randn(2, 3, 6)
    dense = layer(x)
    prune_module(layer, "out", _keep(8))
    assert layer.nf == 4 and torch.allclose(layer(x), dense[..., ::2], atol=1e-6)


def test_rules_are_registered_by_class_name_and_inherited() -> None:
    class MyLinear(nn.Linear):
        pass

    assert {"Linear", "Conv2d", "_BatchNorm", "GroupNorm", "Embedding", "Conv1D"} <= set(LAYERS)
    assert rule_of(MyLinear(2, 2)) is LAYERS.get("Linear")
    assert rule_of(nn.ReLU()) is None
