"""Coverage architectures for channel pruning, built tiny with random weights (shared with the benchmark).

`NETS` maps a name to `(build, example_inputs)`; the transformers ones need `transformers` and are
built from tiny configs (hidden 32, 2 layers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, stride), nn.Conv2d(mid, cout, 1))
        self.bn = nn.BatchNorm2d(cout)
        self.short = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.body(x)) + self.short(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.c1, self.c2 = conv_bn(cin, cout, 3, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn2(self.c2(self.c1(x))) + self.short(x))


class ResNet(nn.Module):
    """ResNet-18-like (`basic`) or bottleneck ResNet; `width` scales channels."""

    def __init__(self, widths: tuple[int, ...] = (16, 32), bottleneck: bool = True, blocks: int = 2) -> None:
        super().__init__()
        self.stem = conv_bn(3, widths[0], 3)
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                stride = 2 if i > 0 and b == 0 else 1
                layers.append(
                    Bottleneck(cin, w // 2, w * 2, stride) if bottleneck else BasicBlock(cin, w, stride)
                )
                cin = w * 2 if bottleneck else w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class DenseNet(nn.Module):
    """Dense blocks: every layer sees the concatenation of all earlier outputs."""

    def __init__(self, growth: int = 8, layers: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.blocks = nn.ModuleList()
        c = 16
        for _ in range(layers):
            self.blocks.append(
                nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, growth, 3, padding=1))
            )
            c += growth
        self.head = nn.Sequential(
            nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = torch.cat([x, block(x)], dim=1)
        return self.head(x)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            conv_bn(cin, mid, 1),
            conv_bn(mid, mid, 3, stride, groups=mid),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16, 3, 2),
            InvertedResidual(16, 16, 4, 1),
            InvertedResidual(16, 24, 4, 2),
            InvertedResidual(24, 24, 4, 1),
            conv_bn(24, 64, 1),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean([2, 3]))


class UNet(nn.Module):
    """Encoder-decoder: strided convs down, transposed convs and upsampling up, concatenated skips."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1, self.enc2 = conv_bn(3, 16), conv_bn(16, 32, 3, 2)
        self.mid = conv_bn(32, 64, 3, 2)
        self.up2 = nn.ConvTranspose2d(64, 32, 2, stride=2)
        self.dec2 = conv_bn(64, 32)
        self.up1 = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec1 = nn.Sequential(nn.GroupNorm(4, 48), nn.Conv2d(48, 16, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(16, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        d2 = self.dec2(torch.cat([self.up2(self.mid(e2)), e2], 1))
        return self.out(self.dec1(torch.cat([self.up1(d2), e1], 1)))


class TorchTransformer(nn.Module):
    """torch's own transformer: embedding, nn.TransformerEncoder (batch-first layers), mean-pooled head."""

    def __init__(self, d_model: int = 32, nhead: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(64, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead, 2 * d_model, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=True)
        self.head = nn.Linear(d_model, 10)

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens), src_key_padding_mask=padding).mean(1))


def lenet5() -> nn.Module:
    from torchslim.zoo.lenet import LeNet5

    return LeNet5()


def mnist1d_cnn() -> nn.Module:
    from torchslim.zoo.mnist1d import CNN1d

    return CNN1d()


def _hf(kind: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        transformers = pytest.importorskip("transformers")
        torch.manual_seed(0)
        return HF_BUILDERS[kind](transformers).eval()

    return build


def _tiny(name: str, **overrides: Any) -> nn.Module:
    # imported here: a fresh process importing this module to load a saved ResNet lacks tests/ on its path
    import tiny_hf

    return getattr(tiny_hf, name)(**overrides)


HF_BUILDERS: dict[str, Callable[[Any], nn.Module]] = {
    "hf-resnet": lambda t: t.ResNetForImageClassification(
        t.ResNetConfig(
            num_channels=3,
            embedding_size=16,
            hidden_sizes=[16, 32],
            depths=[1, 1],
            layer_type="bottleneck",
            num_labels=10,
        )
    ),
    "hf-convnext": lambda t: t.ConvNextForImageClassification(
        t.ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10)
    ),
    "hf-mobilenetv2": lambda t: t.MobileNetV2ForImageClassification(
        t.MobileNetV2Config(
            num_channels=3, image_size=32, depth_multiplier=0.25, num_labels=10, tf_padding=False
        )
    ),
    "hf-vit": lambda t: _tiny("vit"),
    "hf-bert": lambda t: _tiny("bert"),
    "hf-gpt2": lambda t: _tiny("gpt2", use_cache=False),
    "hf-llama": lambda t: _tiny("llama", use_cache=False),
}

IMAGE = torch.randn(2, 3, 32, 32)
TOKENS = torch.randint(0, 64, (2, 12))
NETS: dict[str, tuple[Callable[[], nn.Module], Any]] = {
    "lenet5": (lenet5, torch.randn(2, 1, 28, 28)),
    "mnist1d-cnn": (mnist1d_cnn, torch.randn(2, 1, 40)),
    "resnet-bottleneck": (lambda: ResNet(bottleneck=True), IMAGE),
    "densenet": (DenseNet, IMAGE),
    "mobilenetv2": (MobileNetV2, IMAGE),
    "unet": (UNet, IMAGE),
    "torch-transformer": (TorchTransformer, TOKENS),
    "hf-resnet": (_hf("hf-resnet"), IMAGE),
    "hf-convnext": (_hf("hf-convnext"), IMAGE),
    "hf-mobilenetv2": (_hf("hf-mobilenetv2"), IMAGE),
    "hf-vit": (_hf("hf-vit"), IMAGE),
    "hf-bert": (_hf("hf-bert"), TOKENS),
    "hf-gpt2": (_hf("hf-gpt2"), TOKENS),
    "hf-llama": (_hf("hf-llama"), TOKENS),
}


def build(name: str) -> tuple[nn.Module, Any]:
    torch.manual_seed(0)
    make, x = NETS[name]
    return make().eval(), x


@pytest.mark.parametrize("name", ["resnet-bottleneck", "densenet", "mobilenetv2", "unet"])
def test_nets_run(name: str) -> None:
    model, x = build(name)
    assert model(x).shape[0] == 2


def bert() -> nn.Module:
    """The tiny BERT as a `package.module:factory` for save/load tests."""
    return _hf("hf-bert")()
