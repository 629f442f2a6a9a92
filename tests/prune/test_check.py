"""Channel pruning never leaves a model broken: a forward that no longer runs, or whose outputs change
shape, puts the model back as it was and names the module that failed."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim import io
from torchslim.prune.check import failing_module


class HardCodedView(nn.Module):
    """Reshapes with a literal channel count the graph cannot see as coupled to conv2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(y.view(y.shape[0], 16, 8, 8).mean((2, 3)))


class PerPixelHead(HardCodedView):
    """`view(B, 16, -1)` still runs on 8 channels (as [B, 16, 32]); the Linear after it does not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(y.view(y.shape[0], 16, -1).transpose(1, 2))


class SilentReshape(HardCodedView):
    """Runs after pruning, but the output shape changes ([2, 64] -> [2, 32])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.conv1(x)))
        return y.view(y.shape[0], 16, -1).mean(1)


X = torch.randn(2, 1, 8, 8)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (
            HardCodedView,
            r"HardCodedView.forward itself \(after module 'conv2' ran\) failed: RuntimeError: shape",
        ),
        (PerPixelHead, r"module 'fc' \(Linear\) failed: RuntimeError: mat1 and mat2 shapes"),
        (SilentReshape, r"output shapes on example_inputs from \[\(2, 64\)\] to \[\(2, 32\)\]"),
    ],
)
def test_a_broken_forward_restores_the_model(cls: type[nn.Module], message: str) -> None:
    torch.manual_seed(0)
    model = cls()
    conv2 = model.conv2
    before, expected = _state(model), model(X)
    with pytest.raises(ts.UserError, match=message):
        ts.prune_(model, ts.ChannelConfig(ratio=0.5), example_inputs=X)
    assert model.conv2 is conv2 and model.conv2.out_channels == 16
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(X), expected)
    assert io.record_of(model).transforms == []  # no channel_prune record survives the restore


def test_failing_module_is_none_for_a_working_forward() -> None:
    assert failing_module(HardCodedView(), X) is None
    assert failing_module(nn.Sequential(nn.Linear(3, 2), nn.Linear(3, 1)), torch.randn(1, 3)) is not None
