import torch.nn as nn

from torchslim.targeting import is_selected, select, weighted_modules


def test_exclude_wins_over_include_and_globs_cover_children() -> None:
    names = ["conv1", "conv2", "fc1", "fc2", "block.0.conv"]
    assert select(names, exclude=["fc*"]) == ["conv1", "conv2", "block.0.conv"]
    assert select(names, include=["block"]) == ["block.0.conv"]
    assert select(names, include=["conv*", "fc2"], exclude=["conv2"]) == ["conv1", "fc2"]
    assert not is_selected("fc1", include=["conv*"])


def test_weighted_modules_in_model_order() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2))
    assert list(weighted_modules(model)) == ["0", "3"]
    assert list(weighted_modules(model, exclude=["3"])) == ["0"]
