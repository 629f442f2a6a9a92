import math

import pytest
import torch
import torch.nn.functional as F

from torchslim.distill.losses import Projection, embedding_loss, kd_loss, mixed_loss


def test_kd_loss_is_zero_for_equal_logits_and_matches_the_definition() -> None:
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    assert kd_loss(t, t, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    T = 2.0
    p_t = F.softmax(t / T, dim=-1)
    manual = (p_t * (p_t.log() - F.log_softmax(s / T, dim=-1))).sum(-1).mean() * T * T
    assert kd_loss(s, t, T).item() == pytest.approx(manual.item(), rel=1e-5)


def test_t_squared_keeps_gradient_scale_comparable_across_temperatures() -> None:
    t = torch.randn(64, 10) * 3
    grads = []
    for T in (4.0, 8.0):
        s = torch.randn(64, 10, requires_grad=True)
        torch.manual_seed(0)
        kd_loss(s, t, T).backward()
        grads.append(s.grad.norm().item())  # type: ignore[union-attr]
    # without the T^2 factor the gradient would shrink about 4x from T=4 to T=8 (1/T^2 scaling)
    assert grads[1] > grads[0] / 2.5


def test_mixed_loss_alpha_weights() -> None:
    soft, hard = torch.tensor(2.0), torch.tensor(10.0)
    assert mixed_loss(soft, hard, 0.0).item() == 10.0
    assert mixed_loss(soft, hard, 1.0).item() == 2.0
    assert mixed_loss(soft, hard, 0.25).item() == pytest.approx(0.25 * 2 + 0.75 * 10)
    assert mixed_loss(soft, None, 0.5).item() == 2.0


def test_embedding_loss() -> None:
    e = F.normalize(torch.randn(5, 8), dim=-1)
    assert embedding_loss(e, e, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert embedding_loss(-e, e, 1.0).item() == pytest.approx(2.0 + 4.0 / 8, rel=1e-4)
    assert not math.isnan(embedding_loss(e, e.roll(1, 0), 1.0).item())


def test_feature_projection_shapes() -> None:
    conv = Projection(4, 8, spatial_dims=2)
    assert conv(torch.randn(2, 4, 5, 5)).shape == (2, 8, 5, 5)
    lin = Projection(4, 8, spatial_dims=0)
    assert lin(torch.randn(2, 3, 4)).shape == (2, 3, 8)
