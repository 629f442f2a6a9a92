import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from unstructured_fixtures import one_thread as one_thread

import torchslim as ts
from torchslim.errors import UserError
from torchslim.prune.importance import IMPORTANCE, ImportanceInput, collect_inputs, elementwise, entropy_power
from torchslim.prune.targets import find_targets

pytestmark = pytest.mark.usefixtures("one_thread")


def test_entropy_power_of_known_distributions() -> None:
    gen = torch.Generator().manual_seed(0)
    gauss = 2.0 * torch.randn(40_000, 1, generator=gen)
    uniform = torch.rand(40_000, 1, generator=gen)
    assert entropy_power(gauss).item() == pytest.approx(
        4.0, rel=0.05
    )  # a Gaussian's entropy power is its variance
    assert entropy_power(uniform).item() == pytest.approx(1 / (2 * math.pi * math.e), rel=0.05)  # h = 0
    assert entropy_power(torch.full((1000, 1), 3.0)).item() == 0.0  # a constant carries no information
    x = torch.cat([gauss, uniform], 1)
    assert torch.allclose(entropy_power(3 * x), 9 * entropy_power(x), rtol=1e-4)  # N(a x) = a^2 N(x)


def test_entropy_weighs_rarely_active_inputs_by_their_activity_and_constants_at_zero() -> None:
    gen = torch.Generator().manual_seed(0)
    n = 8192
    gauss = torch.randn(n, generator=gen)
    rare = torch.randn(n, generator=gen) * (
        torch.rand(n, generator=gen) < 0.1
    )  # a ReLU-like unit, active 10%
    x = torch.stack([gauss, torch.full((n,), 2.0), rare], 1)
    layer = nn.Linear(3, 1)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    scores = IMPORTANCE.get("entropy").fn(ImportanceInput(layer, find_targets(layer), [(x, None)]))
    s = scores["weight"].flatten()
    assert s[1] == 0.0  # a constant input carries no information
    assert s[2] / s[0] == pytest.approx(
        0.1, rel=0.2
    )  # the atom at zero carries none; the rest counts by activity
    assert s.sum() == pytest.approx(1.0)  # expressed as a share of the layer's per-output total


def test_collect_inputs_sees_each_layer_input(lenet) -> None:
    x = torch.randn(4, 1, 28, 28)
    feats = collect_inputs(lenet, find_targets(lenet), [(x, None)])
    assert feats["conv1"].shape == (4 * 28 * 28, 1) and feats["conv2"].shape == (4 * 12 * 12, 20)
    assert feats["fc1"].shape == (4, 800) and feats["fc2"].shape == (4, 500)


def test_taylor_is_the_mean_squared_gradient_times_weight() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3))
    batches = [(torch.randn(8, 5), torch.randint(0, 3, (8,))) for _ in range(3)]
    scores = IMPORTANCE.get("taylor").fn(ImportanceInput(model, find_targets(model), batches))
    expected = torch.zeros(3, 5)
    for x, y in batches:
        (g,) = torch.autograd.grad(F.cross_entropy(model(x), y), [model[0].weight])
        expected += (g * model[0].weight).detach() ** 2
    assert torch.allclose(scores["0"], expected / 3)
    assert model[0].weight.grad is None  # no gradients left behind


def test_magnitude_l1_l2_rank_alike_and_random_is_seeded(lenet) -> None:
    targets = find_targets(lenet)
    inp = ImportanceInput(lenet, targets)
    mags = IMPORTANCE.get("magnitude").fn(inp)
    assert torch.equal(mags["fc2"], lenet.fc2.weight.detach().abs())
    assert torch.equal(IMPORTANCE.get("l2").fn(inp)["fc2"].argsort(), mags["fc2"].argsort())
    r1, r2 = IMPORTANCE.get("random").fn(inp), IMPORTANCE.get("random").fn(inp)
    assert torch.equal(r1["fc1"], r2["fc1"])


def test_users_register_their_own_criterion(lenet) -> None:
    ts.register_importance("test_cubed", elementwise(lambda w: w.abs() ** 3), replace=True)
    ts.prune_(lenet, ts.SparsityConfig(sparsity=0.5, importance="test_cubed", scope="layer"))
    assert int((lenet.fc2.weight == 0).sum()) == 2500
    with pytest.raises(ValueError, match="already registered"):
        ts.register_importance("magnitude", elementwise(torch.abs))


def test_wrongly_shaped_scores_are_a_user_error(lenet) -> None:
    ts.register_importance("test_bad", lambda inp: {t.name: torch.ones(3) for t in inp.targets}, replace=True)
    with pytest.raises(UserError, match="shape"):
        ts.prune_(lenet, ts.SparsityConfig(sparsity=0.5, importance="test_bad"))


@pytest.mark.parametrize("criterion", ["magnitude", "taylor", "entropy"])
def test_every_criterion_beats_random_at_high_sparsity(tiny_task, criterion) -> None:
    data = tiny_task.calibration_loader()

    def accuracy(name: str) -> float:
        model = tiny_task.model()
        ts.prune_(
            model,
            # the raw one-shot ranking: on this tiny MLP without fine-tuning LAMP and rounds score lower
            ts.SparsityConfig(sparsity=0.9, importance=name, scope="global", normalize="none", rounds=1),
            data=data,
            loss=tiny_task.loss,
        )
        return tiny_task.evaluate(model)

    assert accuracy(criterion) > accuracy("random") + 0.15  # random: 0.12, the dense model: 0.88


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3, bias=False)
        self.bn = nn.BatchNorm1d(4)
        self.side = nn.Conv1d(1, 4, 3)
        self.bn2 = nn.BatchNorm1d(4)
        self.head = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = self.side(x)  # goes to bn2 and to the sum: no single BatchNorm to fold
        return self.head((self.bn(self.conv(x)) + self.bn2(side) + side).flatten(1))


def test_magnitude_bn_scores_the_weight_with_the_batchnorm_folded_in() -> None:
    from torchslim.prune.importance import batchnorm_gains

    torch.manual_seed(0)
    model = ConvBN().eval()
    gamma, var = torch.tensor([4.0, -1.0, 1.0, 0.25]), torch.tensor([1.0, 4.0, 1.0, 1.0])
    with torch.no_grad():
        model.bn.weight.copy_(gamma)
        model.bn.running_var.copy_(var)
    data = [(torch.randn(5, 1, 10), torch.zeros(5, dtype=torch.long))]
    gains = batchnorm_gains(model, find_targets(model), data[0][0])
    assert set(gains) == {"conv"}
    assert torch.allclose(gains["conv"], gamma.abs() / torch.sqrt(var + 1e-5))
    scores = IMPORTANCE.get("magnitude_bn").fn(ImportanceInput(model, find_targets(model), data))
    w = model.conv.weight.detach()
    assert torch.allclose(scores["conv"], (w * gains["conv"].view(-1, 1, 1)).square())
    assert torch.allclose(scores["side"], model.side.weight.detach().square())
    assert torch.allclose(scores["head"], model.head.weight.detach().square())


def _masks_after(model: torch.nn.Module, importance: str, data: list | None, **options: object) -> dict:
    pruned = copy.deepcopy(model)
    ts.prune_(pruned, ts.SparsityConfig(importance=importance, **options), data=data)
    layers = (nn.Conv1d, nn.Linear)
    return {name: m.weight == 0 for name, m in pruned.named_modules() if isinstance(m, layers)}


def test_default_importance_folds_batchnorms_in_when_data_is_given() -> None:
    from torchslim.prune.importance import auto_choice

    torch.manual_seed(0)
    model = ConvBN().eval()
    with torch.no_grad():  # one channel's BatchNorm amplifies it 50x: folded in, it outranks the rest
        model.bn.weight.copy_(torch.tensor([50.0, 0.1, 0.1, 0.1]))
    data = [(torch.randn(5, 1, 10), torch.zeros(5, dtype=torch.long))]
    assert ts.SparsityConfig(sparsity=0.5).importance == "auto"
    assert auto_choice(model, has_data=True) == "magnitude_bn"
    assert auto_choice(model, has_data=False) == "magnitude"
    assert auto_choice(torch.nn.Linear(3, 2), has_data=True) == "magnitude"
    auto = _masks_after(model, "auto", data, sparsity=0.6)
    folded = _masks_after(model, "magnitude_bn", data, sparsity=0.6)
    plain = _masks_after(model, "magnitude", data, sparsity=0.6)
    assert all(torch.equal(auto[k], folded[k]) for k in auto)
    assert any(not torch.equal(auto[k], plain[k]) for k in auto)
    assert auto["conv"][1:].all() and not plain["conv"][1:].all()  # the damped channels go first
    no_data = _masks_after(model, "auto", None, sparsity=0.6)
    assert all(torch.equal(no_data[k], plain[k]) for k in no_data)
