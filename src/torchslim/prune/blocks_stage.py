"""Depth pruning in a recipe: `prune: {kind: blocks, ...}` keeps fewer of a model's repeated blocks.

    - prune: {kind: blocks, keep: 3}                  # the 3 blocks the outputs depend on most
    - prune: {kind: blocks, keep: 3, choose: evenly}  # DistilBERT's every-other choice
    - prune: {kind: blocks, blocks: [0, 4, 5]}        # these
    - distill: {teacher: baseline, epochs: 8}         # the shallow student learns from the deep model

The kept blocks keep the teacher's weights (`torchslim.distill.students.shallow_student`) and are
replayed on load (`keep_blocks`). `choose: data` measures on the task's calibration batches.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from torchslim.distill.students import shallow_student
from torchslim.io import record_of
from torchslim.prune.stage import register_prune_kind
from torchslim.recipe import StageSpec


class BlocksSpec(StageSpec):
    kind: Literal["blocks"] = "blocks"
    keep: int | None = Field(None, ge=1)
    """How many blocks of the longest repeated stack are kept."""
    blocks: list[int] | None = None
    """Instead of keep: the indices of the blocks kept."""
    choose: Literal["data", "evenly"] = "data"
    """data: drop, one at a time, the block whose removal moves the outputs least on calibration
    batches; evenly: blocks spread from the first (every other one for half)."""
    path: str | None = None
    """Dotted name of the stack (default: the longest stack of same-type blocks)."""
    batches: int = Field(4, ge=1, le=1024)
    """Calibration batches for `choose: data`."""

    @model_validator(mode="after")
    def _one_target(self) -> BlocksSpec:
        if (self.keep is None) == (self.blocks is None):
            raise ValueError("give exactly one of keep and blocks")
        if self.blocks is not None and (not self.blocks or min(self.blocks) < 0):
            raise ValueError(f"blocks must be non-negative indices, got {self.blocks}")
        return self


@register_prune_kind("blocks", BlocksSpec)
def run_blocks(ctx: Any, spec: BlocksSpec) -> None:
    data = ctx.task.calibration_loader(batches=spec.batches) if spec.choose == "data" else None
    count = spec.keep if spec.keep is not None else len(spec.blocks or [])
    ctx.model = shallow_student(ctx.model, count=count, path=spec.path, blocks=spec.blocks, data=data)
    kept = next(t for t in reversed(record_of(ctx.model).transforms) if t["name"] == "keep_blocks")
    ctx.note(blocks_kept=kept["params"]["keep"], stack=kept["params"]["path"])
