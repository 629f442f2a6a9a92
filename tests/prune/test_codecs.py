import json
from pathlib import Path

import pytest
import torch
from unstructured_fixtures import one_thread as one_thread

import torchslim as ts
from torchslim import io
from torchslim.prune.codecs import PackedBits, SparseBitmask, SparseIndex, SparseNM
from torchslim.prune.masks import iter_masks

pytestmark = pytest.mark.usefixtures("one_thread")


def _sparse(
    shape: tuple[int, ...], sparsity: float, dtype: torch.dtype = torch.float32, seed: int = 0
) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=gen)
    return (t * (torch.rand(shape, generator=gen) >= sparsity)).to(dtype)


@pytest.mark.parametrize("codec", [SparseBitmask(), SparseIndex()])
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.999])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sparse_float_codecs_round_trip_exactly(codec, sparsity, dtype) -> None:
    t = _sparse((64, 33), sparsity, dtype)
    out = codec.encode("w", t)
    assert out is not None
    decoded = codec.decode(*out)
    assert decoded.dtype == dtype and decoded.shape == t.shape and torch.equal(decoded, t)


def test_codecs_decline_when_they_do_not_pay() -> None:
    assert SparseIndex().encode("w", _sparse((64, 33), 0.3, torch.float16)) is None  # 3 bytes per nonzero > 2
    assert SparseBitmask().encode("w", torch.randn(64, 33)) is None
    assert SparseBitmask().encode("w", torch.zeros(3)) is None  # too small to matter


@pytest.mark.parametrize("fill", [0.02, 0.5, 0.98])
def test_bool_codecs_round_trip_exactly(fill) -> None:
    mask = torch.rand(50, 40, generator=torch.Generator().manual_seed(1)) < fill
    for codec in (PackedBits(), SparseIndex()):
        out = codec.encode("m", mask)
        if out is not None:
            assert torch.equal(codec.decode(*out), mask)
    assert PackedBits().encode("m", mask)[0]["m::bits"].numel() == 250  # 2000 bits


def test_index_codes_escape_long_gaps_and_pick_the_narrower_type() -> None:
    t = torch.zeros(300_000)
    t[[0, 70_000, 70_001, 299_999]] = torch.tensor([1.0, -2.0, 3.0, 4.0])
    stored, meta = SparseIndex().encode("w", t)
    assert torch.equal(SparseIndex().decode(stored, meta), t)
    assert meta["limit"] == 65535 and stored["w::index"].dtype == torch.uint16
    dense_gaps = _sparse((10_000,), 0.9)
    stored, meta = SparseIndex().encode("w", dense_gaps)
    assert meta["limit"] == 255 and stored["w::index"].dtype == torch.uint8
    assert torch.equal(SparseIndex().decode(stored, meta), dense_gaps)


def test_encode_state_picks_the_smallest_codec() -> None:
    state = {
        "half": _sparse((100, 100), 0.5),
        "most": _sparse((100, 100), 0.97),
        "dense": torch.randn(100, 100),
        "mask": torch.rand(100, 100) < 0.5,
    }
    stored, encodings = io.encode_state(state)
    assert encodings["half"]["codec"] == "sparse_bitmask"
    assert encodings["most"]["codec"] == "sparse_index"
    assert encodings.get("dense", {"codec": "dense"})["codec"] == "dense"  # at most entropy-coded
    assert encodings["mask"]["codec"] == "packed_bits"
    decoded = io.decode_state(stored, encodings)
    assert all(torch.equal(decoded[k], v) for k, v in state.items())


def _lenet_task_model(lenet, sparsity: float):
    io.set_source(lenet, "zoo", name="lenet5-digits")
    if sparsity:
        ts.prune_(lenet, ts.SparsityConfig(sparsity=sparsity))
    return lenet


def test_pruned_lenet_round_trips_with_identical_outputs_and_masks(tmp_path: Path, lenet) -> None:
    model = _lenet_task_model(lenet, 0.9)
    ts.save(model, tmp_path / "m")
    loaded = ts.load(tmp_path / "m")
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))
    masks = {n: m.mask for n, _, _, m in iter_masks(model)}
    assert {n: m.mask for n, _, _, m in iter_masks(loaded)}.keys() == masks.keys()
    assert all(torch.equal(m.mask, masks[n]) for n, _, _, m in iter_masks(loaded))
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["encodings"]["fc1.parametrizations.weight.0.mask"]["codec"] in (
        "sparse_index",
        "packed_bits",
    )


def test_saved_size_falls_with_sparsity_and_meets_the_target_at_90(lenet) -> None:
    dense = io.saved_size(_lenet_task_model(lenet, 0.0))
    sizes = []
    for s in (0.5, 0.8, 0.9, 0.95):
        torch.manual_seed(0)
        sizes.append(io.saved_size(_lenet_task_model(type(lenet)(), s)))
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[2] <= 0.2 * dense  # 90% sparsity: at most a fifth of the dense fp32 file
    assert sizes[0] < 0.62 * dense


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_sparse_nm_round_trips_exactly_and_beats_the_bitmask(n: int, m: int, dtype: torch.dtype) -> None:
    from torchslim.prune.pattern import keep_nm

    gen = torch.Generator().manual_seed(5)
    w = torch.randn(32, 64, generator=gen)
    t = (w * keep_nm(w.abs(), n, m)).to(dtype)
    t[0, :8] = 0  # groups with fewer than n nonzeros are still N:M
    stored, meta = SparseNM().encode("w", t)
    assert (meta["n"], meta["m"]) == (n, m)
    assert torch.equal(SparseNM().decode(stored, meta), t)
    rank_bits = {(2, 4): 3, (4, 8): 7, (1, 4): 2}[(n, m)]
    assert stored["w::ranks"].numel() == t.numel() // m * rank_bits // 8
    bitmask = SparseBitmask().encode("w", t)
    assert bitmask is not None and sum(p.numel() * p.element_size() for p in stored.values()) < sum(
        p.numel() * p.element_size() for p in bitmask[0].values()
    )
    keep = keep_nm(w.abs(), n, m)
    stored, meta = SparseNM().encode("k", keep)  # an N:M mask: ranks only
    assert list(stored) == ["k::ranks"] and torch.equal(SparseNM().decode(stored, meta), keep)


def test_sparse_nm_declines_tensors_that_break_every_pattern() -> None:
    assert SparseNM().encode("w", _sparse((16, 16), 0.3)) is None
    assert SparseNM().encode("m", torch.rand(16, 16) < 0.3) is None


def test_sparse_nm_refuses_corrupt_ranks() -> None:
    t = torch.tensor([1.0, 0.0, 2.0, 0.0] * 8)
    stored, meta = SparseNM().encode("w", t)
    stored["w::ranks"] = torch.full_like(stored["w::ranks"], 255)  # rank 7 of 6 choices
    with pytest.raises(ts.ManifestError, match="rank"):
        SparseNM().decode(stored, meta)
