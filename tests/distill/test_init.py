"""Where a distilled student starts: the teacher's own channels when it is a narrower copy (`init`)."""

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.distill.init import FRESH_LR, PRETRAINED_LR, default_lr, init_from_teacher, pruned_teacher
from torchslim.distill.losses import kd_loss
from torchslim.errors import UserError


@pytest.fixture
def teacher(tiny_task) -> nn.Module:
    return tiny_task.model()


def _batch(tiny_task) -> torch.Tensor:
    return next(iter(tiny_task.train_loader()))[0]


def test_a_narrower_copy_starts_from_the_teachers_strongest_channels(tiny_task, teacher) -> None:
    torch.manual_seed(0)
    student = tiny_task.build(width=0.5)  # fc1 16 wide, the teacher's 32
    random_acc = tiny_task.evaluate(student)
    note = init_from_teacher(student, teacher, _batch(tiny_task), kd_loss, 4.0, "auto")
    assert note.startswith("teacher's channels")
    rows = [int((teacher.fc1.weight == row).all(1).nonzero()) for row in student.fc1.weight]
    assert len(set(rows)) == 16 and rows == sorted(rows)  # 16 of the teacher's hidden units, in order
    assert torch.equal(student.fc2.weight, teacher.fc2.weight[:, rows])  # and their outgoing weights
    # the kept units are the ones with the largest L2 norm over everything they touch (group l2)
    norms = teacher.fc1.weight.pow(2).sum(1) + teacher.fc1.bias.pow(2) + teacher.fc2.weight.pow(2).sum(0)
    assert sorted(rows) == sorted(norms.argsort(descending=True)[:16].tolist())
    assert random_acc < 0.3 and tiny_task.evaluate(student) > 0.6  # half the hidden units of a trained MLP


def test_auto_keeps_a_student_that_is_already_closer_to_the_teacher(tiny_task, teacher) -> None:
    pruned, _ = pruned_teacher(tiny_task.build(width=0.5), teacher, _batch(tiny_task))
    assert pruned is not None
    student = tiny_task.build(width=0.5)
    ts.distill(
        student, teacher, tiny_task.train_loader(), ts.DistillConfig(epochs=8, lr=2e-2, init="student")
    )
    trained = {k: v.clone() for k, v in student.state_dict().items()}
    note = init_from_teacher(student, teacher, _batch(tiny_task), kd_loss, 4.0, "auto")
    assert note.startswith("student as given: its soft loss")
    assert all(torch.equal(v, trained[k]) for k, v in student.state_dict().items())


def test_other_architectures_keep_their_weights_and_say_why(tiny_task, teacher) -> None:
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    note = init_from_teacher(other, teacher, _batch(tiny_task), kd_loss, 4.0, "auto")
    assert note == "random init kept: module names differ from the teacher's"
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    with pytest.raises(UserError, match="init='teacher': module names differ"):
        init_from_teacher(other, teacher, _batch(tiny_task), kd_loss, 4.0, "teacher")
    same = tiny_task.build()
    assert "the teacher's shapes" in init_from_teacher(same, teacher, _batch(tiny_task), kd_loss, 4.0, "auto")


def test_plain_training_and_init_student_never_read_the_teachers_weights(tiny_task, teacher) -> None:
    torch.manual_seed(0)
    a, b = tiny_task.build(width=0.5), tiny_task.build(width=0.5)
    b.load_state_dict(a.state_dict())
    notes: dict = {}
    ts.distill(a, teacher, tiny_task.train_loader(), ts.DistillConfig(epochs=0, init="student"), notes=notes)
    assert notes["init"] == "student as given (init=student)" and torch.equal(a.fc1.weight, b.fc1.weight)
    ts.distill(a, teacher, tiny_task.train_loader(), ts.DistillConfig(epochs=0, alpha=0.0), notes=notes)
    assert torch.equal(a.fc1.weight, b.fc1.weight)
    ts.distill(a, teacher, tiny_task.train_loader(), ts.DistillConfig(epochs=0), notes=notes)
    assert notes["init"].startswith("teacher's channels") and not torch.equal(a.fc1.weight, b.fc1.weight)


def test_default_lr_is_low_for_pretrained_transformers_only() -> None:
    class PreTrainedModel(nn.Module):  # transformers' base class, matched by name along the MRO
        pass

    class Encoder(PreTrainedModel):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 4)

    assert default_lr(nn.Sequential(nn.Conv1d(1, 4, 3))) == FRESH_LR == 1e-2
    assert default_lr(nn.Sequential(Encoder())) == PRETRAINED_LR == 2e-4
    with pytest.raises(UserError, match="init"):
        ts.DistillConfig(init="copy")  # type: ignore[arg-type]
