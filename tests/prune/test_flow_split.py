"""Channel groups through split, chunk, cat, stack and slicing, and the residual streams of modern
CNNs and transformers, on tiny hand-built modules that reproduce timm's structures (no timm here)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.config import ChannelConfig
from torchslim.metrics import count_macs
from torchslim.prune.channel import ChannelReport, prune_channels_
from torchslim.prune.flow_split import SPLITS, SplitRule


def _prune(model: nn.Module, x: torch.Tensor, **config: object) -> tuple[ChannelReport, float]:
    """Prune at ratio 0.5 (head excluded); the output shape is kept; returns the report and MACs kept."""
    model.eval()
    dense_shape, dense_macs = model(x).shape, count_macs(model, x)
    report = prune_channels_(model, ChannelConfig(ratio=0.5, exclude=("head",), **config), x)  # type: ignore[arg-type]
    assert model(x).shape == dense_shape
    return report, count_macs(model, x) / dense_macs


class MixedConv2d(nn.ModuleDict):
    """timm's mixed-kernel depthwise conv: the input split by sizes, one conv per piece, concatenated."""

    def __init__(self, channels: int, splits: list[int]) -> None:
        convs = {str(i): nn.Conv2d(s, s, 3 + 2 * i, padding=1 + i, groups=s) for i, s in enumerate(splits)}
        super().__init__(convs)
        self.splits = splits
        self.in_channels = self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(x, self.splits, 1)
        return torch.cat([conv(pieces[i]) for i, conv in enumerate(self.values())], 1)


class MixNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 3, padding=1)
        self.mixed = MixedConv2d(24, [8, 8, 8])
        self.bn = nn.BatchNorm2d(24)
        self.head = nn.Conv2d(24, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.bn(self.mixed(self.stem(x)))))


def test_mixed_kernel_pieces_shrink_and_their_sizes_are_written_back() -> None:
    model = MixNet()
    report, kept = _prune(model, torch.randn(1, 3, 12, 12))
    assert model.stem.out_channels == 12 and sum(model.mixed.splits) == 12
    assert model.mixed.splits == [c.in_channels for c in model.mixed.values()]
    assert kept < 0.6 and report.kept == {}


class Halves(nn.Module):
    """A cross-stage-partial block: one conv's output split in two halves by a size fixed at build time."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_exp = nn.Conv2d(channels, 2 * channels, 1)
        self.half = channels
        self.blocks = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
        self.transition = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs, xb = self.conv_exp(x).split(self.half, dim=1)
        return self.transition(torch.cat([xs, self.blocks(xb)], dim=1))


class HalvesFixed(Halves):
    pass


SPLITS.register("HalvesFixed", SplitRule("equal", lambda m: setattr(m, "half", m.conv_exp.out_channels // 2)))


class CSP(nn.Module):
    def __init__(self, block: type[Halves]) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stage = block(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(self.stem(x)))


def test_split_by_fixed_sizes_is_kept_whole_and_noted_unless_its_module_is_registered() -> None:
    x = torch.randn(1, 3, 8, 8)
    plain = CSP(Halves)
    report, _ = _prune(plain, x)
    assert plain.stage.conv_exp.out_channels == 16  # the split input is whole
    assert plain.stage.blocks[0].out_channels == 4  # the rest is still cut
    assert "split by sizes" in report.kept["stage"]
    fixed = CSP(HalvesFixed)
    report, _ = _prune(fixed, x)
    assert fixed.stage.conv_exp.out_channels == 8 and fixed.stage.half == 4  # equal halves, written back
    assert report.kept == {}


class Glu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Conv2d(3, 16, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.up(x).chunk(2, dim=1)
        return self.head(a * torch.sigmoid(b))


def test_chunks_lose_the_same_positions() -> None:
    model = Glu()
    report, _ = _prune(model, torch.randn(1, 3, 6, 6))
    assert model.up.out_channels == 8 and model.head.in_channels == 4 and report.kept == {}


class Ghost(nn.Module):
    """GhostNet: a primary conv and a cheap depthwise conv of it, concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.primary = nn.Conv2d(3, 8, 1)
        self.cheap = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        return self.head(torch.cat([y, self.cheap(y)], 1))


def test_ghost_concat_of_a_conv_and_its_depthwise_copy() -> None:
    model = Ghost()
    _prune(model, torch.randn(1, 3, 6, 6))
    assert model.primary.out_channels == 4 and model.cheap.groups == 4 and model.head.in_channels == 8


class PartialResidual(nn.Module):
    """RexNet: the shortcut is added to the first channels only, by a slice fixed at build time."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.conv = nn.Conv2d(8, 12, 1)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        y = self.conv(s)
        return self.head(torch.cat([y[:, :8] + s, y[:, 8:]], dim=1))


def test_partial_slices_are_kept_whole_and_noted() -> None:
    model = PartialResidual()
    report, _ = _prune(model, torch.randn(1, 3, 5, 5))
    assert model.conv.out_channels == 12 and model.stem.out_channels == 8
    assert "sliced" in report.kept["the model's own forward"]


class TinyViT(nn.Module):
    """A class token concatenated along tokens, a position embedding, LayerNorm'd residual blocks."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 5, dim))
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
        t = t + self.gamma * self.fc2(F.gelu(self.fc1(self.norm(t))))
        return self.head(t[:, 0])


def test_vit_embedding_dim_is_a_group_with_class_token_position_embedding_and_layer_scale() -> None:
    model = TinyViT()
    _, kept = _prune(model, torch.randn(1, 3, 8, 8))
    assert model.patch.out_channels == 8 and model.cls_token.shape == (1, 1, 8)
    assert model.pos_embed.shape == (1, 5, 8) and model.gamma.shape == (8,)
    assert model.norm.weight.shape == (8,)
    assert model.fc1.out_features == 32 and model.head.in_features == 8 and kept < 0.35


class LayerNorm2d(nn.LayerNorm):
    """timm's channels-first LayerNorm (a LayerNorm subclass that permutes NCHW to NHWC and back)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.norm = nn.Conv2d(3, 16, 2, stride=2), LayerNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.ln = nn.LayerNorm(16)
        self.pw1, self.pw2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.gamma = nn.Parameter(torch.ones(16))
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.stem(x))
        y = self.pw2(F.gelu(self.pw1(self.ln(self.dw(x).permute(0, 2, 3, 1))))) * self.gamma
        return self.head(x + y.permute(0, 3, 1, 2))


def test_convnext_residual_stream_with_channels_first_layernorm_and_layer_scale() -> None:
    model = ConvNeXtish()
    _, kept = _prune(model, torch.randn(1, 3, 8, 8))
    assert model.stem.out_channels == 8 and model.norm.weight.shape == (8,) and model.dw.groups == 8
    assert model.gamma.shape == (8,) and model.pw1.out_features == 16 and kept < 0.35


class Mixer(nn.Module):
    """MLP-Mixer: a token MLP applied along the tokens, between channel MLPs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.norm = nn.GroupNorm(1, 16)
        self.token = nn.Linear(4, 4)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x)
        t = t + self.token(t.transpose(1, 2)).transpose(1, 2)
        t = self.norm(t.transpose(1, 2)).transpose(1, 2)
        return self.head((t + self.fc2(F.relu(self.fc1(t)))).mean(1))


def test_token_mlp_passes_channels_through_and_one_group_groupnorm_cuts() -> None:
    model = Mixer()
    _prune(model, torch.randn(1, 4, 6))
    assert model.embed.out_features == 8 and model.norm.num_channels == 8 and model.norm.num_groups == 1
    assert model.token.in_features == 4 and model.fc1.out_features == 16


class Windows(nn.Module):
    """Swin: channels-last windows partitioned and merged back, and 2x2 patch merging."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.fc = nn.Linear(8, 8)
        self.merge = nn.Linear(32, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, H, W, 3]
        b, h, w, _ = x.shape
        t = self.embed(x)
        c = t.shape[-1]  # read from the tensor, as Swin does, so the view follows a cut
        win = t.view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, 4, c)
        win = self.fc(win).view(b, h // 2, w // 2, 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        t = t + win
        merged = t.view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.head(self.merge(merged).mean((1, 2)))


def test_window_partitions_and_patch_merging_keep_channels_tracked() -> None:
    model = Windows()
    _prune(model, torch.randn(1, 4, 4, 3))
    assert model.embed.out_features == 4 and model.fc.out_features == 4
    assert model.merge.in_features == 16 and model.merge.out_features == 8


class KernelPaths(nn.Module):
    """SKNet: paths stacked along a new dim, weighted and summed."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 5, padding=2)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        paths = torch.stack([self.a(x), self.b(x)], dim=1)
        return self.head(paths.softmax(dim=1).mul(paths).sum(1))


def test_stacked_paths_share_channels() -> None:
    model = KernelPaths()
    _prune(model, torch.randn(1, 3, 6, 6))
    assert model.a.out_channels == model.b.out_channels == 4 and model.head.in_channels == 4


class Shuffle(nn.Module):
    """ShuffleNet's channel shuffle: the channels are interleaved by a view with group count fixed."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1, groups=1)
        self.grouped = nn.Conv2d(8, 8, 1, groups=2)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.grouped(self.conv(x))
        b, c, h, w = y.shape
        y = y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.head(y)


def test_channel_shuffle_is_left_whole_and_the_model_still_runs() -> None:
    model = Shuffle()
    _prune(model, torch.randn(1, 3, 4, 4))
    # the shuffled tensor stays; the grouped conv's inputs are narrowed within its two groups
    assert model.grouped.out_channels == model.head.in_channels == 8
    assert (model.conv.out_channels, model.grouped.in_channels, model.grouped.groups) == (4, 4, 2)
    assert model(torch.randn(1, 3, 4, 4)).shape == (1, 2, 4, 4)


class Scale(nn.Module):
    """MetaFormer's layer scale: `x * scale.view(self.shape)`, a shape fixed at build time."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shape = (dim, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(self.shape)


class FixedView(nn.Module):
    """The same, unregistered: the constant shape keeps its channels whole."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shape = (dim, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(self.shape)


class PoolFormer(nn.Module):
    def __init__(self, scale: type[Scale] | type[FixedView]) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.norm = nn.GroupNorm(1, 8)
        self.mlp = nn.Sequential(nn.Conv2d(8, 16, 1), nn.GELU(), nn.Conv2d(16, 8, 1))
        self.scale = scale(8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(x + self.scale(self.mlp(self.norm(x))))


def test_layer_scale_viewed_by_a_fixed_shape_is_cut_where_its_module_writes_the_shape_back() -> None:
    x = torch.randn(1, 3, 4, 4)
    model = PoolFormer(Scale)
    _prune(model, x)
    assert model.stem.out_channels == 4 and model.scale.shape == (4, 1, 1)
    assert model.scale.scale.shape == (4,)
    whole = PoolFormer(FixedView)
    _prune(whole, x)
    assert whole.stem.out_channels == 8 and whole.mlp[0].out_channels == 8
