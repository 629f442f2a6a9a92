from pathlib import Path

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.distill.students import repeated_blocks, shallow_student
from torchslim.errors import UserError
from torchslim.io import record_of, set_source


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
    loaded = ts.load(tmp_path / "s", trust_code=True)
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


def _mostly_in_blocks(important: tuple[int, ...]) -> Stack:
    """A residual stack whose other blocks barely change the signal."""
    torch.manual_seed(0)
    teacher = Stack()
    with torch.no_grad():
        for i, block in enumerate(teacher.blocks):
            block[0].weight.mul_(3.0 if i in important else 1e-3)
            block[0].bias.mul_(3.0 if i in important else 1e-3)
    return teacher


def test_blocks_chosen_on_data_are_the_ones_the_outputs_depend_on(tmp_path: Path) -> None:
    teacher = set_source(_mostly_in_blocks((1, 4, 5)), "factory", target=f"{__name__}:make_stack", kwargs={})
    data = [(torch.randn(16, 4), None) for _ in range(2)]
    student = shallow_student(teacher, data=data)
    assert record_of(student).transforms[-1]["params"]["keep"] == [1, 4, 5]
    assert all(
        torch.equal(s[0].weight, teacher.blocks[i][0].weight)
        for s, i in zip(student.blocks, (1, 4, 5), strict=True)
    )
    x = torch.randn(8, 4)
    every_other = shallow_student(teacher)
    gap = (student(x) - teacher(x)).abs().mean()
    assert gap < 0.05 * (every_other(x) - teacher(x)).abs().mean()  # [1, 4, 5] vs [0, 2, 4]
    ts.save(student, tmp_path / "s")
    assert torch.equal(
        ts.load(tmp_path / "s", trust_code=True)(x), student(x)
    )  # the chosen blocks replay on load
    assert len(shallow_student(teacher, blocks=[5, 0]).blocks) == 2
    with pytest.raises(UserError, match=r"indices \[5, 5\] do not fit 'blocks' of 6 blocks"):
        shallow_student(teacher, blocks=[5, 5])


def test_choosing_blocks_without_batches_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="no batches to choose blocks on"):
        shallow_student(Stack(), data=[])


def test_blocks_prune_stage_replaces_the_model_with_the_chosen_blocks() -> None:
    from types import SimpleNamespace

    from torchslim.prune.blocks_stage import BlocksSpec, run_blocks
    from torchslim.recipe import parse_recipe

    teacher = _mostly_in_blocks((1, 4, 5))
    notes: dict = {}
    task = SimpleNamespace(calibration_loader=lambda batches: [(torch.randn(16, 4), None)] * batches)
    ctx = SimpleNamespace(model=teacher, task=task, note=notes.update)
    run_blocks(ctx, BlocksSpec(keep=3))
    assert len(ctx.model.blocks) == 3 and len(teacher.blocks) == 6  # the teacher is left whole
    assert notes == {"blocks_kept": [1, 4, 5], "stack": "blocks"}
    run_blocks(ctx, BlocksSpec(keep=2, choose="evenly"))
    assert notes["blocks_kept"] == [0, 1] and len(ctx.model.blocks) == 2  # of the 3 left, spread evenly
    for block, message in (
        ({"kind": "blocks"}, "exactly one of keep and blocks"),
        ({"kind": "blocks", "keep": 0}, "keep"),
    ):
        with pytest.raises(UserError, match=message):
            parse_recipe({"model": "zoo:tiny-digits", "stages": [{"prune": block}]})
