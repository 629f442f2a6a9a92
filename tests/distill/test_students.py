from pathlib import Path

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.distill.students import repeated_blocks, shallow_student
from torchslim.errors import UserError
from torchslim.io import set_source


class Stack(nn.Module):
    def __init__(self, depth: int = 6) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(depth))
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def make_stack(depth: int = 6) -> Stack:
    return Stack(depth)


def test_every_other_block_is_kept_with_the_teachers_weights() -> None:
    teacher = Stack()
    assert repeated_blocks(teacher) == "blocks"
    student = shallow_student(teacher)
    assert len(student.blocks) == 3 and len(teacher.blocks) == 6
    assert torch.equal(student.blocks[1][0].weight, teacher.blocks[2][0].weight)
    assert student(torch.randn(3, 4)).shape == (3, 2)


def test_shallow_student_saves_and_loads(tmp_path: Path) -> None:
    teacher = set_source(Stack(), "factory", target=f"{__name__}:make_stack", kwargs={})
    student = shallow_student(teacher)
    ts.save(student, tmp_path / "s")
    loaded = ts.load(tmp_path / "s")
    x = torch.randn(2, 4)
    assert len(loaded.blocks) == 3 and torch.equal(loaded(x), student(x))


def test_transformers_student_updates_the_config() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, vocab_size=100
    )
    teacher = transformers.BertModel(config).eval()
    student = shallow_student(teacher)
    assert student.config.num_hidden_layers == 2 and len(student.encoder.layer) == 2
    assert teacher.config.num_hidden_layers == 4
    ids = torch.randint(0, 100, (2, 5))
    assert student(input_ids=ids).last_hidden_state.shape == (2, 5, 32)


def test_no_repeated_blocks_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="no stack of repeated blocks"):
        shallow_student(nn.Linear(2, 2))
