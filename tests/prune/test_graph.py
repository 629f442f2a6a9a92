"""Dependency graph: coupled channels found from the traced model; what it cannot follow is noted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from test_channel_nets import build

from torchslim.config import ChannelConfig
from torchslim.prune.channel import dependency_graph, prune_channels_
from torchslim.prune.graph import Graph, Group


def _graph(name: str, **config: object) -> Graph:
    model, x = build(name)
    return dependency_graph(model, x, ChannelConfig(ratio=0.5, **config))  # type: ignore[arg-type]


def _group_with(graph: Graph, path: str, role: str = "out") -> Group:
    return next(g for g in graph.groups if (path, role) in g.positions)


def test_lenet_conv_to_flatten_to_linear() -> None:
    graph = _graph("lenet5")
    assert [(g.name, g.units) for g in graph.groups] == [("conv1", 20), ("conv2", 50), ("fc1", 500)]
    fc1_in = _group_with(graph, "conv2").positions[("fc1", "in")]
    assert len(fc1_in) == 800 and list(fc1_in[:17]) == [0] * 16 + [1]  # each channel spans 4x4 positions
    assert ("fc2", "out") not in {k for g in graph.groups for k in g.positions}  # the output stays whole


def test_residual_additions_couple_block_outputs() -> None:
    graph = _graph("resnet-bottleneck")
    group = _group_with(graph, "layers.0.body.2")
    assert {("layers.0.short", "out"), ("layers.0.bn", "both"), ("layers.1.body.2", "out")} <= set(
        group.positions
    )
    assert ("layers.2.short", "in") in group.positions  # the next stage's shortcut consumes it


def test_concatenation_maps_positions_to_their_producers() -> None:
    graph = _graph("densenet")
    stem = _group_with(graph, "stem")
    bn = stem.positions[("blocks.2.0", "both")]  # sees [stem 16, block0 8, block1 8]
    assert len(bn) == 32 and (bn[:16] >= 0).all() and (bn[16:] == -1).all()
    block0 = _group_with(graph, "blocks.0.2").positions[("head.4", "in")]
    assert (block0[16:24] >= 0).all() and (block0[:16] == -1).all()


def test_depthwise_conv_follows_its_input_channels() -> None:
    graph = _graph("mobilenetv2")
    group = _group_with(graph, "features.1.conv.0.0")
    assert ("features.1.conv.1.0", "in") in group.positions and (
        "features.1.conv.1.0",
        "out",
    ) in group.positions


def test_transposed_conv_upsampling_groupnorm() -> None:
    graph = _graph("unet")
    up = _group_with(graph, "up2")
    assert ("dec2.0", "in") in up.positions
    # GroupNorm(4, 48) after cat([up(d2): 32, e1: 16]): each norm group of 12 channels is one unit
    seen = np.zeros(48, dtype=bool)
    for group in graph.groups:
        pos = group.positions.get(("dec1.0", "both"))
        if pos is None:
            continue
        for chunk in pos.reshape(4, 12):
            assert (chunk == -1).all() or (chunk == chunk[0]).all()
        seen |= pos >= 0
    assert seen.all()


class Cumsum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.mix = Mixer()
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(self.conv(x)))


class Mixer(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(x, dim=1)


class Branchy(Cumsum):
    def __init__(self) -> None:
        super().__init__()
        self.mix = DataDependent()


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


@pytest.mark.parametrize(
    ("model", "message"), [(Cumsum, "op 'cumsum' is not followed"), (Branchy, "cannot be traced")]
)
def test_unknown_op_or_untraceable_module_is_kept_and_noted(model: type[nn.Module], message: str) -> None:
    net, x = model(), torch.randn(1, 3, 8, 8)
    graph = dependency_graph(net, x, ChannelConfig(ratio=0.5))
    assert graph.groups == []  # conv's channels flow into the module we cannot follow: left alone
    assert list(graph.notes) == ["mix"] and message in graph.notes["mix"]
    report = prune_channels_(net, ChannelConfig(ratio=0.5), x)
    assert report.kept == graph.notes and net.conv.out_channels == 8
    excluded = dependency_graph(net, x, ChannelConfig(ratio=0.5, exclude=("mix",)))
    assert excluded.groups == [] and excluded.notes == {}


class PoolIfSmall(nn.Module):
    """VGG's ConvMlp head: pools to the kernel size when the map is smaller (control flow on a shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(8, 16, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] < 7 or x.dim() != 4:
            x = nn.functional.adaptive_avg_pool2d(x, (7, 7))
        return self.fc1(x)


class ShapeBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.mlp = PoolIfSmall()
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp(self.conv(x)))


def test_control_flow_on_an_inner_shape_traces_with_the_example() -> None:
    """Branches on an intermediate value's shape are taken as the example takes them: nothing kept whole."""
    net, x = ShapeBranch().eval(), torch.randn(1, 3, 4, 4)
    dense = net(x).shape
    graph = dependency_graph(net, x, ChannelConfig(ratio=0.5, exclude=("head",)))
    assert graph.notes == {} and len(graph.groups) == 2
    prune_channels_(net, ChannelConfig(ratio=0.5, exclude=("head",)), x)
    assert (net.conv.out_channels, net.mlp.fc1.in_channels, net.mlp.fc1.out_channels) == (4, 4, 8)
    assert net(x).shape == dense


class OwnShapeBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.head(y if y.shape[-1] > 2 else -y)


def test_control_flow_on_a_shape_in_the_models_own_forward() -> None:
    net, x = OwnShapeBranch().eval(), torch.randn(1, 3, 4, 4)
    prune_channels_(net, ChannelConfig(ratio=0.5, exclude=("head",)), x)
    assert net.conv.out_channels == 4 and net(x).shape == (1, 2, 4, 4)


def test_exclude_and_include_globs() -> None:
    graph = _graph("lenet5", exclude=("conv2",))
    assert [g.name for g in graph.groups] == ["conv1", "fc1"]  # conv2 keeps its outputs, its inputs may go
    graph = _graph("lenet5", exclude=("conv2",), exclude_mode="coupled")
    assert [g.name for g in graph.groups] == ["fc1"]  # conv1 feeds conv2's input, conv2 is whole
    graph = _graph("lenet5", include=("fc*",))
    assert [g.name for g in graph.groups] == ["fc1"]


def test_keep_combines_groups() -> None:
    graph = _graph("lenet5")
    keep = graph.keep({1: np.array([0, 2])})
    assert len(keep[("conv2", "out")]) == 48 and len(keep[("fc1", "in")]) == 800 - 32
