"""Channel flow through registered layers: grouped convolutions narrowed within their groups."""

from __future__ import annotations

import torch
import torch.nn as nn

from torchslim.config import ChannelConfig
from torchslim.prune.channel import prune_channels_


class ResNeXtBlock(nn.Module):
    """1x1 -> grouped 3x3 (4 groups of 4) -> 1x1 with a residual, as in ResNeXt and RegNet."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(8, 16, 1, bias=False)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False)
        self.conv3 = nn.Conv2d(16, 8, 1, bias=False)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(torch.relu(self.grouped(torch.relu(self.conv1(x)))))
        return self.head(x + y)


def test_grouped_conv_keeps_its_groups_and_narrows_each() -> None:
    torch.manual_seed(0)
    model = ResNeXtBlock().eval()
    with torch.no_grad():  # positions 2, 3 of every group feed nothing; 0, 1 of every output group neither
        zero_in = torch.tensor([j + 4 * g for g in range(4) for j in (2, 3)])
        zero_out = torch.tensor([j + 4 * g for g in range(4) for j in (0, 1)])
        model.conv1.weight[zero_in] = 0
        model.grouped.weight[zero_out] = 0
        model.conv3.weight[:, zero_out] = 0
    x = torch.randn(2, 8, 6, 6)
    dense = model(x)
    prune_channels_(model, ChannelConfig(ratio=0.5, exclude=["head"]), x)
    g = model.grouped
    assert (model.conv1.out_channels, g.groups, g.in_channels, g.out_channels) == (8, 4, 8, 8)
    assert g.weight.shape == (8, 2, 3, 3) and model.conv3.in_channels == 8
    assert torch.allclose(model(x), dense, atol=1e-5)  # only channels that carried zeros went


def test_depthwise_conv_still_loses_whole_groups() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 2, 1))
    prune_channels_(model, ChannelConfig(ratio=0.5, exclude=["2"]), torch.randn(1, 3, 5, 5))
    sizes = (model[0].out_channels, model[1].groups, model[1].in_channels, model[2].in_channels)
    assert sizes == (4, 4, 4, 4)
