"""Starting a narrower student from the teacher's own most important channels (prune, then distill).

When the student is the teacher's architecture with fewer channels (the same module names and types,
every tensor no larger than the teacher's: `task.build(width=0.5)` against the baseline), a copy of
the teacher pruned to the student's widths is a far better start than random weights (Sreenivas et
al. 2024, Minitron; Aghli and Ribeiro 2021). The copy is pruned by torchslim's own channel pruner
(coupled groups, default importance), so any architecture that pruner handles works.

`auto` takes that start only when it is measurably closer to the teacher than the student as given
(the soft loss on one batch): a student that was already pruned by another criterion, fine-tuned or
pretrained keeps its weights. Every decision comes with a one-line reason for the notes.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from torchslim.data import forward
from torchslim.errors import UserError

IMPORTANCE = "l2"
"""Channel ranking of the pruned start (measured on mnist1d-cnn: see `DistillConfig.init`)."""


def subset_copy(student: nn.Module, teacher: nn.Module) -> str | None:
    """None when `student` is a narrower copy of `teacher`; else why not (for the notes)."""
    s_mods, t_mods = dict(student.named_modules()), dict(teacher.named_modules())
    if s_mods.keys() != t_mods.keys():
        return "module names differ from the teacher's"
    if any(type(m) is not type(t_mods[name]) for name, m in s_mods.items()):
        return "module types differ from the teacher's"
    s_state, t_state = student.state_dict(), teacher.state_dict()
    if s_state.keys() != t_state.keys():
        return "parameter names differ from the teacher's"
    narrower = False
    for key, value in s_state.items():
        a, b = tuple(value.shape), tuple(t_state[key].shape)
        if len(a) != len(b) or any(x > y for x, y in zip(a, b, strict=True)):
            return f"{key} {a} is not a subset of the teacher's {b}"
        narrower |= a != b
    return None if narrower else "the student has the teacher's shapes"


def _side_size(model: nn.Module, key: tuple[str, str]) -> int | None:
    """Channels of `model` on one tensor side of a pruning group (module path, role), or None."""
    from torchslim.prune.layers import rule_of

    path, role = key
    module = model.get_submodule(path)
    if role.startswith("param"):
        owner, _, name = path.rpartition(".")
        tensor = getattr(model.get_submodule(owner), name, None)
        return int(tensor.shape[int(role[5:])]) if isinstance(tensor, torch.Tensor) else None
    rule = rule_of(module)
    dims = (rule.in_dims if role == "in" else rule.out_dims)(module) if rule is not None else {}
    for name, dim in dims.items():
        tensor = getattr(module, name, None)
        if isinstance(tensor, torch.Tensor):
            return int(tensor.shape[dim])
    return None


def _plan(student: nn.Module, graph: Any, scores: list[Any]) -> dict[int, Any] | None:
    """Units to remove from each group of the teacher's graph so that every side of it ends at the
    student's size (the lowest-scored units), or None when some group cannot say or disagrees."""
    plan = {}
    for gi, (group, score) in enumerate(zip(graph.groups, scores, strict=True)):
        removes = set()
        for key, pos in group.positions.items():
            size = _side_size(student, key)
            if size is None or (pos < 0).any():  # a side shared with another group: judged there
                continue
            removed = graph.sizes[key] - size
            per_unit = len(pos) // group.units
            if removed % per_unit:
                return None
            removes.add(removed // per_unit)
        if len(removes) != 1 or not 0 <= (n := removes.pop()) < group.units:
            return None
        if n:
            plan[gi] = score.argsort(kind="stable")[:n]
    return plan


def pruned_teacher(
    student: nn.Module, teacher: nn.Module, example_inputs: Any, importance: str = IMPORTANCE
) -> tuple[nn.Module | None, str]:
    """A copy of `teacher` channel-pruned (by `importance`) to exactly the student's shapes, or None;
    and a reason. Each coupled group keeps its highest-scored units, as many as the student has."""
    from torchslim.config import ChannelConfig  # lazily: prune's stages import the trainer
    from torchslim.prune.channel import dependency_graph, finish
    from torchslim.prune.group_importance import Context, group_scores

    why = subset_copy(student, teacher)
    if why is not None:
        return None, f"random init kept: {why}"
    trial = copy.deepcopy(teacher)
    for module in trial.modules():  # the copy is read for its weights only: no capture hooks run
        module._forward_hooks.clear()
    try:
        graph = dependency_graph(trial, example_inputs, ChannelConfig(ratio=0.5))
        plan = _plan(student, graph, group_scores(Context(trial, graph), importance))
        if plan is not None:
            finish(trial, graph, plan)
    except Exception as exc:  # any failure to prune falls back to the student as given
        return None, f"random init kept: the teacher could not be channel-pruned ({type(exc).__name__})"
    shapes = {k: v.shape for k, v in student.state_dict().items()}
    if plan is None or {k: v.shape for k, v in trial.state_dict().items()} != shapes:
        return None, "random init kept: no channel pruning of the teacher gives the student's shapes"
    return trial, f"teacher's channels ({importance} ranking, pruned to the student's widths)"


@torch.no_grad()
def _gap(model: nn.Module, teacher_out: Any, inputs: Any, soft: Any, temperature: float) -> float:
    was = model.training
    model.eval()
    try:
        return float(soft(forward(model, inputs), teacher_out, temperature))
    finally:
        model.train(was)


def init_from_teacher(
    student: nn.Module, teacher: nn.Module, inputs: Any, soft: Any, temperature: float, mode: str
) -> str:
    """Apply `DistillConfig.init` to `student` in place; returns what was done and why.

    `auto`: the pruned teacher's weights when their soft loss to the teacher on `inputs` is lower
    than the student's own; `teacher`: them whenever the shapes allow; `student`: nothing."""
    if mode == "student":
        return "student as given (init=student)"
    candidate, why = pruned_teacher(student, teacher, inputs)
    if candidate is None:
        if mode == "teacher":
            raise UserError(f"DistillConfig.init='teacher': {why.removeprefix('random init kept: ')}")
        return why
    with torch.no_grad():
        t_out = forward(teacher, inputs)
    if mode == "auto":
        own, pruned = (_gap(m, t_out, inputs, soft, temperature) for m in (student, candidate))
        if own <= pruned:
            return f"student as given: its soft loss {own:.3g} <= {pruned:.3g} from the teacher's channels"
    student.load_state_dict(candidate.state_dict())
    return why


FRESH_LR, PRETRAINED_LR = 1e-2, 2e-4
"""`DistillConfig.lr=None`: a CNN-like student (fresh or from the teacher's channels), a pretrained
transformers model (its pretrained weights must not be shaken loose)."""


def default_lr(student: nn.Module) -> float:
    """The peak lr for `student` when `DistillConfig.lr` is None (see FRESH_LR, PRETRAINED_LR)."""
    pretrained = any(_is_pretrained_transformer(m) for m in student.modules())
    return PRETRAINED_LR if pretrained else FRESH_LR


def _is_pretrained_transformer(module: nn.Module) -> bool:
    """A transformers `PreTrainedModel` (checked by class name along the MRO: no import needed)."""
    return any(cls.__name__ == "PreTrainedModel" for cls in type(module).__mro__)
