import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.errors import UserError


@pytest.fixture
def teacher(tiny_task) -> nn.Module:
    return tiny_task.model()


def test_student_learns_from_the_teacher(tiny_task, teacher) -> None:
    torch.manual_seed(0)
    student = tiny_task.build(width=0.5)
    before = tiny_task.evaluate(student)
    history = ts.distill(
        student,
        teacher,
        tiny_task.train_loader(),
        ts.DistillConfig(temperature=4, alpha=0.9, epochs=10, lr=2e-2),
        hard_loss=tiny_task.loss,
        evaluate=tiny_task.evaluate,
    )
    assert len(history) == 10 and history[-1]["loss"] < history[0]["loss"]
    assert before < 0.3 and tiny_task.evaluate(student) > 0.8


def test_feature_distillation_with_projection(tiny_task, teacher) -> None:
    student = tiny_task.build(width=0.5)  # fc1 is 16 wide, the teacher's 32
    config = ts.DistillConfig(epochs=1, features=("fc1:fc1",))
    ts.distill(student, teacher, tiny_task.train_loader(), config, hard_loss=tiny_task.loss)
    assert not any(h for m in (student, teacher) for h in m.fc1._forward_hooks.values())  # hooks removed


def test_a_conv_block_gets_a_channel_projection() -> None:
    from torchslim.distill.api import _projection

    block = nn.Sequential(nn.Conv1d(1, 8, 3), nn.BatchNorm1d(8))  # not a conv itself: channels at dim 1
    proj = _projection(torch.zeros(4, 8, 10), torch.zeros(4, 32, 10), block)
    assert isinstance(proj.map, nn.Conv1d) and proj(torch.zeros(4, 8, 10)).shape == (4, 32, 10)
    tokens = _projection(torch.zeros(4, 5, 16), torch.zeros(4, 5, 32), nn.Identity())
    assert isinstance(tokens.map, nn.Linear)  # widths differ in the last dim: a Linear
    with pytest.raises(UserError, match="cannot be matched"):
        _projection(torch.zeros(4, 8, 10), torch.zeros(4, 32, 5), block)  # two dims differ


def test_alpha_zero_is_plain_training(tiny_task, teacher) -> None:
    a, b = tiny_task.build(width=0.5), tiny_task.build(width=0.5)
    b.load_state_dict(a.state_dict())
    config = ts.DistillConfig(alpha=0.0, epochs=1, seed=3)
    other_teacher = tiny_task.build()  # an untrained teacher cannot matter when alpha is 0
    ts.distill(a, teacher, tiny_task.train_loader(), config, hard_loss=tiny_task.loss)
    ts.distill(b, other_teacher, tiny_task.train_loader(), config, hard_loss=tiny_task.loss)
    assert torch.allclose(a.fc1.weight, b.fc1.weight)


def test_bad_inputs_fail_before_training(tiny_task, teacher) -> None:
    student = tiny_task.build(width=0.5)
    snapshot = {k: v.clone() for k, v in student.state_dict().items()}
    mismatched = nn.Sequential(nn.Linear(64, 7))
    with pytest.raises(
        UserError, match=r"teacher output \(128, 10\) does not match student output \(128, 7\)"
    ):
        ts.distill(mismatched, teacher, tiny_task.train_loader(), ts.DistillConfig(epochs=1))
    with pytest.raises(UserError, match="no layer 'fc3'; close matches: fc2, fc1"):
        ts.distill(
            student, teacher, tiny_task.train_loader(), ts.DistillConfig(epochs=1, features=("fc3:fc1",))
        )
    with pytest.raises(UserError, match="student_layer:teacher_layer"):
        ts.distill(student, teacher, tiny_task.train_loader(), ts.DistillConfig(epochs=1, features=("fc1",)))
    with pytest.raises(UserError, match="temperature"):
        ts.DistillConfig(temperature=0)
    with pytest.raises(UserError, match="alpha"):
        ts.DistillConfig(alpha=-0.1)
    assert all(torch.equal(v, snapshot[k]) for k, v in student.state_dict().items())


def test_distill_stage_in_a_recipe(tmp_path) -> None:
    recipe = {
        "model": "zoo:tiny-digits",
        "stages": [{"distill": {"teacher": "baseline", "temperature": 2, "alpha": 0.5, "epochs": 1}}],
    }
    report = ts.run_recipe(recipe, tmp_path / "run")
    assert [s["name"] for s in report["stages"]] == ["baseline", "distill"]
    assert report["stages"][1]["accuracy"] > 0.85


def test_callbacks_see_the_student_not_the_training_wrapper(tiny_task, teacher) -> None:
    seen = []

    class Spy:
        def after_step(self, model, step, total):
            seen.append(type(model).__name__)

    student = tiny_task.build(width=0.5)
    ts.distill(student, teacher, tiny_task.train_loader(), ts.DistillConfig(epochs=1), callbacks=[Spy()])
    assert set(seen) == {type(student).__name__}
