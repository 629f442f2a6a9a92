import pytest
import torch
import torch.nn as nn
from unstructured_fixtures import one_thread as one_thread

import torchslim as ts
from torchslim.errors import UserError
from torchslim.prune.masks import get_mask, iter_masks

pytestmark = pytest.mark.usefixtures("one_thread")

LENET = {"conv1": 500, "conv2": 25_000, "fc1": 400_000, "fc2": 5000}


def _zeros(model: nn.Module, layer: str) -> int:
    return int((model.get_submodule(layer).weight == 0).sum())


def test_layer_scope_prunes_exactly_the_sparsity_in_every_layer(lenet) -> None:
    report = ts.prune_(lenet, ts.SparsityConfig(sparsity=0.9, scope="layer"))
    for layer, n in LENET.items():
        assert _zeros(lenet, layer) == round(0.9 * n)
    assert report.layer_sparsity == {k: round(round(0.9 * n) / n, 6) for k, n in LENET.items()}


def test_global_scope_reaches_the_exact_total_with_unequal_layers(lenet) -> None:
    report = ts.prune_(lenet, ts.SparsityConfig(sparsity=0.8, scope="global"))
    assert sum(_zeros(lenet, k) for k in LENET) == round(0.8 * sum(LENET.values()))
    assert report.sparsity == pytest.approx(0.8, abs=1e-6)
    assert (
        report.layer_sparsity["conv1"] < 0.5 < 0.8 < report.layer_sparsity["fc1"]
    )  # magnitude ranks across layers


def test_global_scope_never_empties_a_layer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 10))
    with torch.no_grad():
        model[1].weight.mul_(1e-4)  # globally the least important: a plain ranking would remove it all
    report = ts.prune_(model, ts.SparsityConfig(sparsity=0.9, scope="global", normalize="none"))
    assert report.layer_sparsity["1"] == pytest.approx(0.98, abs=1e-3)  # capped at 1 - (1 - 0.9) / 5
    assert sum(_zeros(model, k) for k in ("0", "1")) == round(0.9 * 11_000)


def _two_layers(scale: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 10))
    with torch.no_grad():
        model[1].weight.mul_(scale)
    return model


def test_lamp_is_blind_to_a_layer_scale_that_a_raw_ranking_follows() -> None:
    def layer1(scale: float, normalize: str) -> float:
        config = ts.SparsityConfig(sparsity=0.5, scope="global", normalize=normalize)
        return ts.prune_(_two_layers(scale), config).layer_sparsity["1"]

    assert layer1(1e-3, "none") == pytest.approx(0.9, abs=1e-3)  # stripped to its cap
    assert layer1(1e-3, "lamp") == layer1(1.0, "lamp") == layer1(1e3, "lamp")
    assert layer1(1e-3, "mean") == layer1(1e3, "mean")


def test_the_default_is_one_global_ranking_normalised_by_lamp() -> None:
    config = ts.SparsityConfig(sparsity=0.5)
    assert (config.scope, config.normalize) == ("global", "auto")
    lamp = ts.SparsityConfig(sparsity=0.5, scope="global", normalize="lamp")
    for scale in (1e-3, 1e3):
        default = ts.prune_(_two_layers(scale), config).layer_sparsity
        assert default == ts.prune_(_two_layers(scale), lamp).layer_sparsity
    # blind to the layer's scale, where the raw ranking strips the small layer to its cap
    assert default["1"] == ts.prune_(_two_layers(1.0), lamp).layer_sparsity["1"] < 0.8


def test_auto_normalisation_falls_back_to_the_raw_ranking_for_negative_scores() -> None:
    ts.register_importance(
        "test_signed", lambda inp: {t.name: inp.weight(t) for t in inp.targets}, replace=True
    )
    config = ts.SparsityConfig(sparsity=0.5, importance="test_signed")
    default = ts.prune_(_two_layers(1.0), config).layer_sparsity
    assert default == ts.prune_(_two_layers(1.0), config.replace(normalize="none")).layer_sparsity


def test_gradient_criteria_are_rescored_in_rounds_by_default(lenet) -> None:
    from torchslim.prune.api import resolved_rounds

    assert resolved_rounds(ts.SparsityConfig(sparsity=0.9, importance="taylor")) == 10
    assert resolved_rounds(ts.SparsityConfig(sparsity=0.9, importance="magnitude")) == 1
    assert resolved_rounds(ts.SparsityConfig(sparsity=0.9, importance="taylor", rounds=2)) == 2
    calls = []

    def counting(inp):
        calls.append(1)
        return {t.name: inp.weight(t).abs() for t in inp.targets}

    ts.register_importance("test_rounds3", counting, rounds=3, replace=True)
    report = ts.prune_(lenet, ts.SparsityConfig(sparsity=0.9, importance="test_rounds3"))
    assert len(calls) == 3 and report.sparsity == pytest.approx(0.9, abs=1e-6)


def test_lamp_scores_are_one_at_the_top_and_rise_along_the_sorted_tail() -> None:
    from torchslim.prune.select import lamp

    scores = torch.tensor([4.0, 1.0, -torch.inf, 3.0, 2.0])
    out = lamp(scores)
    assert out.tolist()[:2] == [1.0, pytest.approx(1 / 10)] and out[2] == -torch.inf
    assert out[3] == pytest.approx(3 / 7) and out[4] == pytest.approx(2 / 9)
    with pytest.raises(UserError, match="needs importance scores >= 0"):
        lamp(torch.tensor([1.0, -1.0]))


def test_rounds_reach_the_exact_target_and_rescore_between_rounds(lenet) -> None:
    calls = []

    def counting(inp):
        calls.append(sum(int((t.weight() == 0).sum()) for t in inp.targets))
        return {t.name: inp.weight(t).abs() for t in inp.targets}

    ts.register_importance("test_counting", counting, replace=True)
    report = ts.prune_(
        lenet, ts.SparsityConfig(sparsity=0.9, importance="test_counting", rounds=4, scope="layer")
    )
    assert report.layer_sparsity["fc1"] == pytest.approx(0.9, abs=1e-6)
    assert len(calls) == 4 and calls[0] == 0 < calls[1] < calls[2] < calls[3]  # re-scored as weights go
    one = ts.prune_(type(lenet)(), ts.SparsityConfig(sparsity=0.9, importance="magnitude", scope="layer"))
    assert one.layer_sparsity == report.layer_sparsity  # magnitude: rounds do not change the counts


def test_threshold_prunes_every_weight_below_it(lenet) -> None:
    before = lenet.fc1.weight.detach().clone()
    ts.prune_(lenet, ts.SparsityConfig(threshold=0.02))
    assert torch.equal(lenet.fc1.weight == 0, before.abs() < 0.02)
    assert 0 < _zeros(lenet, "fc1") < 400_000


def test_retain_keeps_that_fraction(lenet) -> None:
    report = ts.prune_(lenet, ts.SparsityConfig(retain=0.9, scope="global"))
    assert report.sparsity == pytest.approx(0.1, abs=1e-6)


def test_include_and_exclude_leave_other_layers_dense(lenet) -> None:
    ts.prune_(lenet, ts.SparsityConfig(sparsity=0.5, include=["conv*"], scope="layer"))
    assert [_zeros(lenet, k) for k in LENET] == [250, 12_500, 0, 0]
    assert get_mask(lenet.fc1, "weight") is None
    ts.prune_(lenet, ts.SparsityConfig(sparsity=0.7, exclude=["fc2"], scope="layer"))
    assert [_zeros(lenet, k) for k in LENET] == [350, 17_500, 280_000, 0]


def test_re_pruning_never_revives_hard_pruned_weights(lenet) -> None:
    ts.prune_(lenet, ts.SparsityConfig(sparsity=0.5, importance="random", scope="layer"), seed=1)
    first = lenet.fc1.weight == 0
    ts.prune_(lenet, ts.SparsityConfig(sparsity=0.7, importance="random", scope="layer"), seed=2)
    second = lenet.fc1.weight == 0
    assert bool((first & ~second).sum() == 0) and int(second.sum()) == 280_000
    assert len(list(iter_masks(lenet))) == 4


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ts.SparsityConfig(sparsity=1.0), r"sparsity: must be in \[0, 1\)"),
        (lambda: ts.SparsityConfig(sparsity=-0.1), r"sparsity: must be in \[0, 1\)"),
        (lambda: ts.SparsityConfig(threshold=-1.0), "threshold: must be >= 0"),
        (
            lambda: ts.SparsityConfig(sparsity=0.5, importance="magnitud"),
            r"did you mean 'magnitude'.*known: .*entropy",
        ),
        (
            lambda: ts.SparsityConfig(sparsity=0.5, include=["classifier"]),
            "'classifier' matches no prunable layer",
        ),
        (
            lambda: ts.SparsityConfig(sparsity=0.5, importance="taylor"),
            "importance 'taylor' needs calibration data",
        ),
        (
            lambda: ts.SparsityConfig(sparsity=0.5, importance="entropy"),
            "importance 'entropy' needs calibration data",
        ),
        (
            lambda: ts.SparsityConfig(sparsity=0.5, allocation="auto"),
            "allocation='auto' needs calibration data",
        ),
        (lambda: ts.SparsityConfig(threshold=0.1, allocation="auto"), "needs a sparsity or retain target"),
        (
            lambda: ts.SparsityConfig(sparsity=0.5, scope="global", normalize="lamb"),
            r"unknown score normalizer 'lamb'; did you mean 'lamp'.*known: lamp, mean, none",
        ),
        (lambda: ts.SparsityConfig(sparsity=0.5, rounds=0), "rounds: must be >= 1"),
    ],
)
def test_bad_input_is_a_user_error_before_any_weight_changes(lenet, make, message) -> None:
    before = {k: v.clone() for k, v in lenet.state_dict().items()}
    with pytest.raises(UserError, match=message):
        ts.prune_(lenet, make())
    assert _unchanged(lenet, before)


def test_unknown_config_type_is_a_user_error(lenet) -> None:
    with pytest.raises(UserError, match="unknown pruning config 'QuantConfig'"):
        ts.prune_(lenet, ts.QuantConfig())
