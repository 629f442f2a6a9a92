"""Heads of torch's nn.MultiheadAttention: the replacement module, head pruning, save/load, ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from test_channel_nets import TorchTransformer

import torchslim as ts
from torchslim.data import call
from torchslim.metrics import count_macs as macs
from torchslim.prune.channel import prune_channels_
from torchslim.prune.mha import PrunedMultiheadAttention
from torchslim.prune.targets import find_targets


class BareAttention(nn.Module):
    """A bare nn.MultiheadAttention between two linears; with `kdim` it attends to a projected memory."""

    def __init__(self, heads: int = 4, kdim: int | None = None, **mha: Any) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 32)
        self.memory = nn.Linear(6, kdim or 32)
        self.attn = nn.MultiheadAttention(32, heads, batch_first=True, kdim=kdim, vdim=kdim, **mha)
        self.out = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.inp(x)
        kv = self.memory(x) if self.attn.kdim != 32 else h
        y, _ = self.attn(h, kv, kv, attn_mask=mask, need_weights=False)
        return self.out(torch.relu(y + h))


class BareHeads(nn.Module):
    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, x: torch.Tensor, padding: torch.Tensor, per_head: torch.Tensor) -> torch.Tensor:
        """`per_head`: [batch, heads, L, S] (the batch first, for export's dynamic batch dim)."""
        x, mask = x.transpose(0, 1), per_head.flatten(0, 1)
        y, _ = self.attn(x, x, x, key_padding_mask=padding, attn_mask=mask, need_weights=False)
        return y.transpose(0, 1)


def encoder_net() -> nn.Module:
    torch.manual_seed(0)
    return TorchTransformer().eval()


def bare_net() -> nn.Module:
    torch.manual_seed(0)
    return BareAttention().eval()


_GEN = torch.Generator().manual_seed(0)
TOKENS = torch.randint(0, 64, (2, 12), generator=_GEN)
X = torch.randn(2, 7, 6, generator=_GEN)
PADDING = torch.zeros(2, 12, dtype=torch.bool)
PADDING[1, 9:] = True


def _torch_mha(batch_first: bool, packed: bool, **kw: Any) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    kdim = None if packed else 12
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first, kdim=kdim, vdim=kdim, **kw).eval()
    if mha.in_proj_bias is not None:
        with torch.no_grad():
            mha.in_proj_bias.normal_()
            mha.out_proj.bias.normal_()
    return mha


def _masks(batch: int, length: int) -> list[dict[str, torch.Tensor]]:
    padding = torch.zeros(batch, length, dtype=torch.bool)
    padding[0, -2:] = True
    blocked = torch.rand(length, length) > 0.7
    blocked[:, 0] = False
    per_head = torch.randn(batch * 4, length, length)
    return [
        {},
        {"key_padding_mask": padding, "attn_mask": blocked},
        {"attn_mask": per_head, "key_padding_mask": padding.float() * -1e9},
    ]


def _both(a: nn.Module, b: nn.Module, *args: torch.Tensor, **kw: Any) -> float:
    with torch.no_grad():
        (ya, wa), (yb, wb) = a(*args, **kw), b(*args, **kw)
    diff = (ya - yb).abs().max().item()
    assert (wa is None) == (wb is None)
    return max(diff, 0.0 if wa is None else (wa - wb).abs().max().item())


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("weights", [(False, True), (True, True), (True, False)])
def test_replacement_reproduces_torch(batch_first: bool, packed: bool, weights: tuple[bool, bool]) -> None:
    mha = _torch_mha(batch_first, packed)
    new = PrunedMultiheadAttention.from_torch(mha)
    q, kv = torch.randn(3, 5, 16), torch.randn(3, 5, 16 if packed else 12)
    q, kv = (q, kv) if batch_first else (q.transpose(0, 1), kv.transpose(0, 1))
    need, average = weights
    for masks in _masks(3, 5):
        for args in [(q, kv, kv), (q, q, q)] if packed else [(q, kv, kv)]:
            kw = {"need_weights": need, "average_attn_weights": average, **masks}
            assert _both(mha, new, *args, **kw) < 1e-5


@pytest.mark.parametrize("need_weights", [True, False])
def test_replacement_extra_keys_unbatched_and_causal(need_weights: bool) -> None:
    mha = _torch_mha(True, True, add_bias_kv=True, add_zero_attn=True)
    new = PrunedMultiheadAttention.from_torch(mha)
    x, padding = torch.randn(2, 5, 16), torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    assert _both(mha, new, x, x, x, key_padding_mask=padding, need_weights=need_weights) < 1e-5
    plain = _torch_mha(True, True)
    new = PrunedMultiheadAttention.from_torch(plain)
    assert _both(plain, new, x[0], x[0], x[0], need_weights=need_weights) < 1e-5  # unbatched
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    kw = {"attn_mask": causal, "is_causal": True, "need_weights": need_weights}
    assert _both(plain, new, x, x, x, **kw) < 1e-5
    with pytest.raises(RuntimeError, match="is_causal"):
        new(x, x, x, is_causal=True)


def test_replacement_traces_with_fx() -> None:
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = PrunedMultiheadAttention.from_torch(_torch_mha(True, True))

        def forward(self, x: torch.Tensor, padding: torch.Tensor) -> tuple[torch.Tensor, Any]:
            return self.attn(x, x, x, key_padding_mask=padding)

    model = Wrapper().eval()
    traced = torch.fx.symbolic_trace(model)
    x, padding = torch.randn(3, 5, 16), torch.zeros(3, 5, dtype=torch.bool)
    padding[0, -1] = True
    for got, want in zip(traced(x, padding), model(x, padding), strict=True):
        assert torch.allclose(got, want)


def _heads(model: nn.Module) -> list[PrunedMultiheadAttention]:
    return [m for m in model.modules() if isinstance(m, PrunedMultiheadAttention)]


def test_encoder_heads_and_feed_forward_prune() -> None:
    model = encoder_net()
    dense_out, dense_macs = model(TOKENS), macs(model, TOKENS)
    report = ts.prune_(model, ts.ChannelConfig(ratio=0.5), example_inputs=TOKENS)
    assert report.groups == 4  # heads and feed-forward of each of the two layers
    for layer in model.encoder.layers:
        assert isinstance(layer.self_attn, PrunedMultiheadAttention)
        assert layer.self_attn.num_heads == 2 and layer.self_attn.in_proj_weight.shape == (48, 32)
        assert layer.self_attn.out_proj.in_features == 16 and layer.linear1.out_features == 32
    assert model(TOKENS).shape == dense_out.shape
    assert macs(model, TOKENS) < 0.7 * dense_macs


def test_pruned_encoder_runs_where_torch_takes_its_fused_paths() -> None:
    """Eval without grad is where nn.TransformerEncoderLayer/Encoder pick fused kernels and nested
    tensors from the attention's attributes; the pruned model must give its plain-path outputs there."""
    model = encoder_net()
    ts.prune_(model, ts.ChannelConfig(ratio=0.5), example_inputs=TOKENS)
    plain = model(TOKENS, PADDING)  # grad enabled: the plain path
    with torch.no_grad():
        fused_conditions = model(TOKENS, PADDING)
    assert torch.allclose(fused_conditions, plain, atol=1e-6)
    assert torch.allclose(model.train()(TOKENS, PADDING), plain, atol=1e-6)  # dropout is 0


def test_bare_attention_heads_prune() -> None:
    model = bare_net()
    dense_macs = macs(model, X)
    ts.prune_(model, ts.ChannelConfig(ratio=0.5), example_inputs=X)
    attn = model.attn
    assert isinstance(attn, PrunedMultiheadAttention) and attn.num_heads == 2
    assert attn.embed_dim == 32 and model.inp.out_features == 32  # the residual stream stays whole
    assert model(X).shape == (2, 7, 3) and macs(model, X) < dense_macs


@pytest.mark.parametrize("criterion", ["l1", "l2", "magnitude", "taylor", "random", "entropy", "bn_scale"])
def test_every_criterion_prunes_heads(criterion: str) -> None:
    model = bare_net()
    data = [(torch.randn(4, 7, 6), torch.randint(0, 3, (4, 7))) for _ in range(2)]

    def loss(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(y.flatten(0, 1), t.flatten())

    ts.prune_(
        model, ts.ChannelConfig(ratio=0.5, importance=criterion), example_inputs=X, data=data, loss=loss
    )
    assert model.attn.num_heads == 2


def test_weakest_heads_go() -> None:
    """A head's importance counts its q, k, v rows and out_proj columns: the two nearly dead heads go."""
    model = bare_net()
    with torch.no_grad():
        for head in (1, 3):
            rows = torch.arange(head * 8, head * 8 + 8)
            model.attn.in_proj_weight[torch.cat([rows, rows + 32, rows + 64])] *= 0.01
            model.attn.out_proj.weight[:, rows] *= 0.01
    ts.prune_(model, ts.ChannelConfig(ratio=0.5, importance="l1"), example_inputs=X)
    assert model.attn.heads == (0, 2)


@pytest.mark.parametrize("kw", [{}, {"kdim": 12, "add_bias_kv": True, "add_zero_attn": True}])
def test_cutting_zeroed_heads_is_exact(kw: dict[str, Any]) -> None:
    """Soft-zeroed heads contribute nothing, so cutting them keeps the output, a per-head mask built
    for the original four heads included (the kept heads' slices of it apply)."""
    torch.manual_seed(0)
    model = BareAttention(**kw).eval()
    report = prune_channels_(model, ts.ChannelConfig(ratio=0.5, soft=True), X)
    assert report.soft is not None
    mask = torch.randn(2 * 4, 7, 7)
    zeroed = model(X, mask)
    report.soft.finalize(model)
    assert model.attn.num_heads == 2 and len(model.attn.heads) == 2
    assert torch.allclose(model(X, mask), zeroed, atol=1e-5)


def test_save_load_replays_the_swap(tmp_path: Path) -> None:
    model = encoder_net()
    ts.prune_(model, ts.ChannelConfig(ratio=0.5), example_inputs=TOKENS)
    ts.save(model, tmp_path / "m", factory="test_mha_heads:encoder_net")
    again = ts.load(tmp_path / "m", trust_code=True)
    assert not any(f.suffix in (".pt", ".pkl", ".bin") for f in (tmp_path / "m").iterdir())
    layer = again.encoder.layers[0]
    assert isinstance(layer.self_attn, PrunedMultiheadAttention)
    assert layer.self_attn.heads == model.encoder.layers[0].self_attn.heads
    assert layer.activation_relu_or_gelu == 0 and not again.encoder.use_nested_tensor
    with torch.no_grad():
        assert torch.equal(again(TOKENS, PADDING), model(TOKENS, PADDING))


def test_pruning_twice_composes_heads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = BareAttention(heads=8).eval()
    ts.prune_(model, ts.ChannelConfig(ratio=0.5), example_inputs=X)
    first = model.attn.heads
    ts.prune_(model, ts.ChannelConfig(ratio=0.5), example_inputs=X)
    assert model.attn.num_heads == 2 and set(model.attn.heads) < set(first)
    ts.save(model, tmp_path / "m", factory="test_mha_heads:BareAttention", kwargs={"heads": 8})
    again = ts.load(tmp_path / "m", trust_code=True)
    assert again.attn.heads == model.attn.heads and torch.equal(again(X), model(X))


def test_unstructured_attention_kind_covers_the_replacement(tmp_path: Path) -> None:
    model = bare_net()
    ts.prune_(model, ts.ChannelConfig(ratio=0.5), example_inputs=X)
    names = {t.key for t in find_targets(model)}
    assert "attn.in_proj_weight" in names and "attn.out_proj.weight" in names
    ts.prune_(model, ts.SparsityConfig(sparsity=0.5, scope="layer"))
    assert (model.attn.in_proj_weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.05)
    ts.save(model, tmp_path / "m", factory="test_mha_heads:bare_net")
    assert torch.equal(ts.load(tmp_path / "m", trust_code=True)(X), model(X))


def test_decoder_layers_and_cross_attention_prune() -> None:
    torch.manual_seed(0)
    model = nn.Transformer(16, 4, 1, 1, 32, dropout=0.0, batch_first=True).eval()
    src, tgt = torch.randn(2, 6, 16), torch.randn(2, 5, 16)
    dense = model(src, tgt)
    ts.prune_(model, ts.ChannelConfig(ratio=0.5), example_inputs=(src, tgt))
    layer = model.decoder.layers[0]
    assert layer.self_attn.num_heads == 2 and layer.multihead_attn.num_heads == 2
    assert layer.linear1.out_features == 16 and model(src, tgt).shape == dense.shape


def _onnx_matches(model: nn.Module, x: Any, path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    ts.export_onnx(model, x, path)
    session = ort.InferenceSession(str(path))
    feeds = {i.name: v.numpy() for i, v in zip(session.get_inputs(), [x], strict=False)}
    got = torch.from_numpy(session.run(None, feeds)[0])
    assert torch.allclose(got, call(model, x), atol=1e-4)


def test_pruned_bare_attention_exports_to_onnx(tmp_path: Path) -> None:
    model = bare_net()
    ts.prune_(model, ts.ChannelConfig(ratio=0.5), example_inputs=X)
    _onnx_matches(model, X, tmp_path / "m.onnx")


def test_replacement_with_masks_exports_to_onnx(tmp_path: Path) -> None:
    """Seq-first layout, a padding mask and a per-head mask for the original heads, exported."""
    ort = pytest.importorskip("onnxruntime")
    model = BareHeads(PrunedMultiheadAttention.from_torch(_torch_mha(False, True))).eval()
    x, per_head = torch.randn(2, 5, 16), torch.randn(2, 4, 5, 5)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    dense = model(x, padding, per_head)
    ts.prune_(model, ts.ChannelConfig(ratio=0.25), example_inputs=(x, padding, per_head))
    assert model.attn.num_heads == 3 and len(model.attn.heads) == 3  # the mask's 4 heads are narrowed
    ts.export_onnx(model, (x, padding, per_head), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    names = [i.name for i in session.get_inputs()]
    feeds = dict(zip(names, [x.numpy(), padding.numpy(), per_head.numpy()], strict=True))
    got = torch.from_numpy(session.run(None, feeds)[0])
    assert torch.allclose(got, model(x, padding, per_head), atol=1e-5) and got.shape == dense.shape


@pytest.mark.slow
def test_pruned_encoder_exports_to_onnx(tmp_path: Path) -> None:
    model = encoder_net()
    ts.prune_(model, ts.ChannelConfig(ratio=0.5), example_inputs=TOKENS)
    _onnx_matches(model, TOKENS, tmp_path / "m.onnx")
