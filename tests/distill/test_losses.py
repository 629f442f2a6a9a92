import math

import pytest
import torch
import torch.nn.functional as F

from torchslim.distill.losses import Projection, attention_kl, embedding_loss, kd_loss, mixed_loss
from torchslim.errors import UserError


def test_kd_loss_is_zero_for_equal_logits_and_matches_the_definition() -> None:
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    assert kd_loss(t, t, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    T = 2.0
    p_t = F.softmax(t / T, dim=-1)
    manual = (p_t * (p_t.log() - F.log_softmax(s / T, dim=-1))).sum(-1).mean() * T * T
    assert kd_loss(s, t, T).item() == pytest.approx(manual.item(), rel=1e-5)


def test_kd_loss_of_language_model_logits_is_a_mean_over_tokens() -> None:
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 7, generator=gen), torch.randn(2, 5, 7, generator=gen)
    per_token = [kd_loss(s[b, i : i + 1], t[b, i : i + 1], 2.0) for b in range(2) for i in range(5)]
    assert kd_loss(s, t, 2.0).item() == pytest.approx(torch.stack(per_token).mean().item(), rel=1e-5)


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


def _maps(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).mul(3).softmax(dim=-1)


def test_attention_kl_is_zero_for_equal_maps_and_matches_the_definition() -> None:
    s, t = _maps(2, 4, 5, 5), _maps(2, 4, 5, 5)
    assert attention_kl(t, t).item() == pytest.approx(0.0, abs=1e-6)
    manual = (t * (t.log() - s.log())).sum(-1).mean()
    assert attention_kl(s, t).item() == pytest.approx(manual.item(), rel=1e-5)
    assert attention_kl(s, t).item() > 0


def test_attention_kl_groups_heads_when_counts_differ() -> None:
    s, t = _maps(2, 2, 5, 5), _maps(2, 4, 5, 5)
    grouped = t.reshape(2, 2, 2, 5, 5).mean(dim=2)  # teacher heads (0, 1) -> student head 0, (2, 3) -> 1
    assert attention_kl(s, t).item() == pytest.approx(attention_kl(s, grouped).item(), rel=1e-6)
    assert attention_kl(grouped, t).item() == pytest.approx(0.0, abs=1e-6)
    coprime = _maps(2, 3, 5, 5)  # gcd 1: head-averaged maps
    assert attention_kl(coprime, t).item() == pytest.approx(
        attention_kl(coprime.mean(1, keepdim=True), t.mean(1, keepdim=True)).item(), rel=1e-6
    )


def test_attention_kl_ignores_padded_queries_and_survives_zero_probabilities() -> None:
    s, t = _maps(2, 2, 4, 4), _maps(2, 2, 4, 4)
    valid = torch.tensor([[True] * 4, [True, True, False, False]])
    changed = s.clone()
    changed[1, :, 2:] = _maps(2, 2, 4)  # only padded query rows differ
    assert attention_kl(changed, t, valid).item() == pytest.approx(attention_kl(s, t, valid).item(), rel=1e-6)
    zeros = s.clone().requires_grad_()
    loss = attention_kl(zeros * torch.tensor([1.0, 1.0, 1.0, 0.0]), t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zeros.grad).all()  # type: ignore[arg-type]


def test_attention_kl_needs_equal_lengths() -> None:
    with pytest.raises(UserError, match=r"sequence length: student \(1, 2, 4, 4\), teacher \(1, 2, 5, 5\)"):
        attention_kl(_maps(1, 2, 4, 4), _maps(1, 2, 5, 5))
