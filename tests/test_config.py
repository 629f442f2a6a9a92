import pytest

import torchslim as ts
from torchslim.config import BaseConfig
from torchslim.errors import UserError


@pytest.mark.parametrize(
    "config",
    [
        ts.SparsityConfig(sparsity=0.9, importance="magnitude", scope="global", exclude=("fc*",)),
        ts.ChannelConfig(ratio=0.5, importance="l2", round_to=8),
        ts.QuantConfig(bits=4, weights="per_group", activations=None),
        ts.DistillConfig(temperature=2.0, alpha=0.5, epochs=1),
    ],
)
def test_dict_roundtrip(config: BaseConfig) -> None:
    data = config.to_dict()
    assert data["type"] == type(config).__name__ and data["version"] == 1
    assert BaseConfig.from_dict(data) == config


def test_from_dict_rejects_unknown_fields_and_types() -> None:
    with pytest.raises(UserError, match=r"unknown field\(s\) \['sparsty'\]"):
        ts.SparsityConfig.from_dict({"sparsty": 0.5})
    with pytest.raises(UserError, match="unknown config type 'Pickle'"):
        BaseConfig.from_dict({"type": "Pickle"})
    with pytest.raises(UserError, match="expected a SparsityConfig"):
        ts.SparsityConfig.from_dict(ts.QuantConfig().to_dict())


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: ts.SparsityConfig(sparsity=1.0), "sparsity"),
        (lambda: ts.SparsityConfig(), "sparsity|threshold|retain"),
        (lambda: ts.SparsityConfig(sparsity=0.5, retain=3), "sparsity|threshold|retain"),
        (lambda: ts.ChannelConfig(ratio=0.5, round_to=0), "round_to"),
        (lambda: ts.ChannelConfig(macs_target=0.0), "macs_target"),
        (lambda: ts.QuantConfig(bits=1), "bits"),
        (lambda: ts.QuantConfig(weights="per_row"), "weights"),  # type: ignore[arg-type]
        (lambda: ts.DistillConfig(temperature=0), "temperature"),
        (lambda: ts.DistillConfig(alpha=1.5), "alpha"),
    ],
)
def test_out_of_range_values_name_the_field(make, field: str) -> None:
    with pytest.raises(UserError, match=rf"\.{field}\b"):
        make()


def test_configs_are_frozen() -> None:
    config = ts.SparsityConfig(sparsity=0.5)
    with pytest.raises(AttributeError):
        config.sparsity = 0.6  # type: ignore[misc]
    assert config.replace(sparsity=0.6).sparsity == 0.6
