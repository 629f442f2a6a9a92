"""Block-wise tuning of quantized weights (`method="gptq+tune"`): AutoRound-style sign descent.

GPTQ minimises each Linear's own output error on the inputs it saw; the block as a whole (attention,
norms, the MLP after them) is not what it measures. After GPTQ has rounded every Linear of a block,
this step optimises, for the whole block at once, the block's output MSE against the float model's
block output (the float model's own stream of hidden states, as AutoRound's `enable_quanted_input`)
with the block fed the outputs of the already-quantized previous blocks. Per weight, an offset `d` in
`[-1, 1]` moves the integer by `round(d)` (one step either way from GPTQ's choice), and per group a
scale multiplier `m` in `[1 - SCALE_RANGE, 1 + SCALE_RANGE]`; both start at GPTQ's solution (`d = 0`,
`m = 1`) and follow the sign of their straight-through gradient (signed SGD with a linearly decaying
step, as in Cheng et al. 2023). The weights stay on the layer's grid: integers in `[qmin, qmax]`, zero
points unchanged, each group's scale multiplied by its `m`.

The tuned state is kept only when its output error over all calibration batches is below GPTQ's (the
measured choice `method="auto"` relies on); else the block keeps GPTQ's integers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.quant.modules import QuantLinear
from torchslim.quant.primitives import _RoundSTE

STEPS = 200
"""Sign-descent steps per block (one calibration batch each, cycled)."""
LR = 2.0 / STEPS
"""Initial step of the offsets and multipliers (decays linearly to 0): an offset consistently pushed one
way crosses the 0.5 that flips its integer after about a quarter of the steps."""
SCALE_RANGE = 0.2
"""Group scale multipliers stay within 1 +- this."""


class _Tunable(nn.Module):
    """A quantized Linear with learnable rounding offsets and group scale multipliers (see module doc)."""

    def __init__(self, qmod: QuantLinear) -> None:
        super().__init__()
        values = qmod.quantized_values()
        self.qmod, self.qmin, self.qmax = qmod, values.qmin, values.qmax
        self.q0 = values.values.float()
        self.group = values.group_size
        self.scale = values.scale.float()  # [rows or 1, groups]
        zero = values.zero
        self.zero = zero.float() if zero is not None else torch.zeros_like(self.scale)
        self.offset = nn.Parameter(torch.zeros_like(self.q0))
        self.mult = nn.Parameter(torch.ones_like(self.scale))
        self.smooth = values.input_scale

    def integers(self) -> torch.Tensor:
        return torch.clamp(self.q0 + torch.round(self.offset.detach()), self.qmin, self.qmax)

    def _weight(self) -> torch.Tensor:
        q = torch.clamp(self.q0 + _RoundSTE.apply(self.offset), self.qmin, self.qmax)
        cols = self.q0.shape[1]
        s = (self.scale * self.mult).repeat_interleave(self.group, dim=1)[:, :cols]
        z = self.zero.repeat_interleave(self.group, dim=1)[:, :cols]
        return (q - z) * s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.smooth is not None:
            x = x / self.smooth
        return F.linear(x, self._weight(), self.qmod.bias)

    def commit(self) -> None:
        """Write the tuned integers and scales into the quantized layer's storage."""
        qmod = self.qmod
        q = self.integers().to(torch.int32).reshape(qmod.weight_shape)
        scale = (self.scale * self.mult.detach()).reshape(qmod.w_scale.shape)
        qmod.set_integers(q, scale, qmod._zero())


@dataclass
class TuneReport:
    before: float
    """Relative output error of the block with GPTQ's weights (all calibration batches)."""
    after: float
    """The same with the tuned weights (kept only when lower)."""
    kept: bool


def tune_block(
    block: nn.Module,
    run: Callable[[int], torch.Tensor],
    targets: list[torch.Tensor],
    steps: int = STEPS,
    lr: float = LR,
) -> TuneReport | None:
    """Tune the weight-only `QuantLinear`s inside `block` so that `run(i)` (the block on calibration
    batch `i`) approaches `targets[i]`; None when the block has no such layer."""
    frozen = [p for p in block.parameters() if p.requires_grad]
    tunables = _swap_in(block)
    if not tunables:
        return None
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            before = _error(run, targets)
        params = [p for t in tunables.values() for p in (t.offset, t.mult)]
        with torch.enable_grad():
            _descend(run, targets, params, tunables, steps, lr)
        with torch.no_grad():
            after = _error(run, targets)
        kept = after < before
        if kept:
            for t in tunables.values():
                t.commit()
    finally:
        _swap_out(block, tunables)
        for p in frozen:
            p.requires_grad_(True)
    return TuneReport(before, after, kept)


def _descend(
    run: Callable[[int], torch.Tensor],
    targets: list[torch.Tensor],
    params: list[nn.Parameter],
    tunables: dict[str, _Tunable],
    steps: int,
    lr: float,
) -> None:
    norms = [float(t.float().pow(2).mean()) + 1e-12 for t in targets]
    for step in range(steps):
        i = step % len(targets)
        loss = F.mse_loss(run(i).float(), targets[i].float()) / norms[i]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        rate = lr * (1.0 - step / steps)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                if g is not None:
                    p.sub_(rate * torch.sign(g))
            for t in tunables.values():
                t.offset.clamp_(-1.0, 1.0)
                t.mult.clamp_(1.0 - SCALE_RANGE, 1.0 + SCALE_RANGE)


def _error(run: Callable[[int], torch.Tensor], targets: list[torch.Tensor]) -> float:
    num = den = 0.0
    for i, ref in enumerate(targets):
        num += float((run(i).float() - ref.float()).pow(2).sum())
        den += float(ref.float().pow(2).sum())
    return num / max(den, 1e-30)


def _swap_in(block: nn.Module) -> dict[str, _Tunable]:
    found = {n: m for n, m in block.named_modules() if isinstance(m, QuantLinear) and m.activations is None}
    out = {}
    for name, qmod in found.items():
        out[name] = _Tunable(qmod)
        _set(block, name, out[name])
    return out


def _swap_out(block: nn.Module, tunables: dict[str, _Tunable]) -> None:
    for name, t in tunables.items():
        _set(block, name, t.qmod)


def _set(block: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, attr, module)
