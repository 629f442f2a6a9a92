"""Heads of attention written out in a forward (timm's `Attention`, no timm here), Swin's shifted
windows, and views sized by a tracked tensor's channel count."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.config import ChannelConfig
from torchslim.prune.channel import prune_channels_


class Attention(nn.Module):
    """timm's layout: fused qkv viewed as (B, N, 3, heads, head_dim), fused or explicit attention."""

    def __init__(self, dim: int, num_heads: int, fused: bool) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attn_dim, self.scale, self.fused_attn = dim, (dim // num_heads) ** -0.5, fused
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            x = attn.softmax(dim=-1) @ v
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj(x)


class Block(nn.Module):
    def __init__(self, fused: bool, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(6, dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, 4, fused)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        return self.head(x + self.attn(self.norm(x)))


@pytest.mark.parametrize("fused", [True, False])
def test_zeroed_heads_are_cut_exactly(fused: bool) -> None:
    torch.manual_seed(0)
    model = Block(fused).eval()
    d = model.attn.head_dim
    with torch.no_grad():  # heads 1 and 3 contribute nothing
        for h in (1, 3):
            for part in range(3):
                rows = slice(part * 16 + h * d, part * 16 + (h + 1) * d)
                model.attn.qkv.weight[rows] = 0
                model.attn.qkv.bias[rows] = 0
            model.attn.proj.weight[:, h * d : (h + 1) * d] = 0
    x = torch.randn(2, 5, 6)
    dense = model(x)
    config = ChannelConfig(ratio=0.5, include=("attn.qkv", "attn.proj"))
    prune_channels_(model, config, x)
    att = model.attn
    assert (att.num_heads, att.head_dim, att.attn_dim) == (2, 4, 8)
    assert att.qkv.out_features == 24 and att.proj.in_features == 8 and att.proj.out_features == 16
    assert torch.allclose(model(x), dense, atol=1e-5)


def test_heads_and_embedding_cut_together() -> None:
    model = Block(fused=True).eval()
    x = torch.randn(1, 5, 6)
    prune_channels_(model, ChannelConfig(ratio=0.5, exclude=("head",)), x)
    assert model.attn.num_heads == 2 and model.norm.weight.shape == (8,)  # the residual stream too
    assert model(x).shape == (1, 5, 3)


def test_heads_stay_whole_without_a_rule() -> None:
    """The same forward in a class no `HEADS` rule names: its view by `num_heads` keeps them whole."""
    model = Block(fused=True).eval()
    model.attn.__class__ = type("Attn", (nn.Module,), {"forward": Attention.forward})
    x = torch.randn(1, 5, 6)
    prune_channels_(model, ChannelConfig(ratio=0.5, exclude=("head",)), x)
    assert model.attn.qkv.out_features == 48 and model(x).shape == (1, 5, 3)


class Shifted(nn.Module):
    """Swin's shifted window: the map is rolled over its spatial dims between two layers."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.roll(self.fc1(x), shifts=(1, 1), dims=(1, 2))
        return self.fc2(y.flip(1))


def test_roll_and_flip_over_other_dims_keep_channels() -> None:
    model = Shifted()
    x = torch.randn(1, 3, 3, 4)
    report = prune_channels_(model, ChannelConfig(ratio=0.5, exclude=("fc2",)), x)
    assert model.fc1.out_features == 4 and report.kept == {} and model(x).shape == (1, 3, 3, 2)


class SizedByInput(nn.Module):
    """EdgeNeXt's XCA: the output is viewed back to the input's channel count (`C = x.shape[-1]`)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.fc, self.proj = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        B, N, C = x.shape
        y = self.fc(x)  # excluded: its outputs stay
        return self.head(x + self.proj(y.reshape(B, N, C)))


def test_view_sized_by_tracked_channels_keeps_them_whole() -> None:
    model = SizedByInput()
    x = torch.randn(1, 5, 4)
    prune_channels_(model, ChannelConfig(ratio=0.5, exclude=("head", "fc")), x)  # used to break the forward
    assert model.embed.out_features == 8 and model.fc.in_features == 8 and model(x).shape == (1, 5, 2)
