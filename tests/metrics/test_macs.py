import torch
import torch.nn as nn

from torchslim.metrics import count_macs
from torchslim.metrics.macs import macs_by_module

# conv1: 20 maps of 24x24, 5x5x1 taps; conv2: 50 maps of 8x8, 5x5x20 taps; fc1 800x500; fc2 500x10
LENET5_MACS = 20 * 24 * 24 * 25 + 50 * 8 * 8 * 25 * 20 + 800 * 500 + 500 * 10


def test_lenet5_macs_equal_the_hand_computed_figure(lenet) -> None:
    assert LENET5_MACS == 2_293_000
    assert count_macs(lenet, torch.randn(8, 1, 28, 28)) == LENET5_MACS
    assert count_macs(lenet, torch.randn(8, 1, 28, 28), per_example=False) == 8 * LENET5_MACS


def test_per_module_macs(lenet) -> None:
    per = macs_by_module(lenet, torch.randn(2, 1, 28, 28))
    assert per["conv1"] == 288_000 and per["conv2"] == 1_600_000
    assert per["fc1"] == 400_000 and per["fc2"] == 5_000


def test_grouped_and_1d_convolutions() -> None:
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    assert count_macs(depthwise, torch.randn(1, 8, 10, 10)) == 8 * 10 * 10 * 9
    conv1d = nn.Conv1d(4, 6, 3)
    assert count_macs(conv1d, torch.randn(1, 4, 12)) == 6 * 10 * 4 * 3


def test_attention_counts_projections_and_score_matmuls() -> None:
    seq, dim, heads = 10, 16, 2
    mha = nn.MultiheadAttention(dim, heads, batch_first=True)
    x = torch.randn(1, seq, dim)

    class SelfAttention(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return mha(x, x, x, need_weights=False)[0]

    projections = 4 * seq * dim * dim  # q, k, v and out
    scores_and_mix = 2 * seq * seq * dim  # QK^T and AV over all heads
    assert count_macs(SelfAttention(), x) == projections + scores_and_mix


def test_plain_matmul() -> None:
    class MatMul(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a @ b

    assert count_macs(MatMul(), (torch.randn(1, 3, 4), torch.randn(1, 4, 5))) == 3 * 4 * 5


def test_grouped_query_attention() -> None:
    class GQA(nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    q, kv = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8)
    assert count_macs(GQA(), (q, kv, kv)) == 4 * 6 * 6 * (8 + 8)


def test_torch_transformer_layers_are_counted_in_eval_without_grad() -> None:
    """Their fused eval kernels are invisible to the counter: counting runs with them off."""
    layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True).eval()
    x = torch.randn(2, 12, 32)
    projections = 12 * (4 * 32 * 32 + 2 * 32 * 64)  # per sample: q, k, v, out; feed-forward up, down
    attention = 2 * 4 * 12 * 12 * 8  # scores and weighted sum, per head
    assert count_macs(layer, x) == projections + attention
    assert torch.backends.mha.get_fastpath_enabled()  # restored
