import pytest
import torch.nn as nn
from unstructured_fixtures import one_thread as one_thread

from torchslim.errors import UserError
from torchslim.prune.targets import LAYER_KINDS, find_targets, kind_of

pytestmark = pytest.mark.usefixtures("one_thread")


class Zoo(nn.Module):
    """One of every registered layer kind."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.lstm = nn.LSTM(8, 8, num_layers=2)
        self.gru = nn.GRU(8, 8)
        self.attn = nn.MultiheadAttention(8, 2)
        self.conv = nn.Conv1d(8, 8, 3)
        self.deconv = nn.ConvTranspose1d(8, 4, 3)
        self.head = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)


def test_every_layer_kind_yields_its_weights_and_no_biases() -> None:
    names = [t.name for t in find_targets(Zoo())]
    assert names == [
        "emb",
        "lstm.weight_ih_l0",
        "lstm.weight_hh_l0",
        "lstm.weight_ih_l1",
        "lstm.weight_hh_l1",
        "gru.weight_ih_l0",
        "gru.weight_hh_l0",
        "attn.in_proj_weight",
        "attn.out_proj",
        "conv",
        "deconv",
        "head",
    ]
    assert set(LAYER_KINDS) >= {"linear", "conv", "conv_transpose", "embedding", "rnn", "attention"}


def test_separate_qkv_projections_are_targets() -> None:
    attn = nn.MultiheadAttention(8, 2, kdim=4, vdim=6)
    assert [t.param for t in find_targets(attn)] == [
        "q_proj_weight",
        "k_proj_weight",
        "v_proj_weight",
        "weight",
    ]


def test_subclasses_inherit_their_kind() -> None:
    class MyLinear(nn.Linear):
        pass

    assert kind_of(MyLinear(2, 2)) is LAYER_KINDS.get("linear")
    assert kind_of(nn.ReLU()) is None


def test_include_and_exclude_globs() -> None:
    model = Zoo()
    assert [t.name for t in find_targets(model, include=["conv", "deconv"])] == ["conv", "deconv"]
    only_rnn = find_targets(model, include=["lstm", "gru"], exclude=["gru"])
    assert {t.module_name for t in only_rnn} == {"lstm"}
    assert "head" not in [t.name for t in find_targets(model, exclude=["head"])]


def test_include_matching_no_layer_is_an_error() -> None:
    with pytest.raises(UserError, match=r"include pattern 'classifier\*' matches no prunable layer"):
        find_targets(Zoo(), include=["classifier*"])
    with pytest.raises(UserError, match="matches no prunable layer"):
        find_targets(Zoo(), include=["norm"])  # a layer, but not a prunable one


def test_nothing_selected_is_an_error() -> None:
    with pytest.raises(UserError, match="no prunable layer selected"):
        find_targets(nn.Sequential(nn.Linear(2, 2)), exclude=["*"])
