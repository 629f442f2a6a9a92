"""Which code a saved model may run: a `factory` source imports and calls what its manifest names, so
`ts.load` refuses it unless the caller trusts it (`trust_code`). Registered models and torchslim's own
sources (zoo, onnx, keras) never need trust: they run only code already in the process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from torchslim.errors import ManifestError

Trust = bool | Sequence[str]
"""`trust_code`: True trusts every factory a manifest names; a list trusts the modules under these
prefixes (`["mypkg"]` trusts `mypkg.models:build`) or these exact `module:function` targets."""
CODE_SOURCES = {"factory"}
"""Source kinds that run code a file names: refused unless trusted."""


ALL = "*"
"""In `trusting`: every factory (a run given trust_code=True)."""
_run_trust: ContextVar[tuple[str, ...]] = ContextVar("torchslim_run_trust", default=())


@contextlib.contextmanager
def trusting(targets: Sequence[str]) -> Iterator[None]:
    """Trust these factories or prefixes (`ALL`: every one) for loads in this context: a run reloading the
    stages it saved itself, or a recipe's teacher directory under the run's own `trust_code`."""
    token = _run_trust.set((*_run_trust.get(), *targets))
    try:
        yield
    finally:
        _run_trust.reset(token)


def entries(trust: Trust) -> tuple[str, ...]:
    """`trust_code` as `trusting` entries: True is `ALL`, False none, a string or list its prefixes."""
    if isinstance(trust, bool):
        return (ALL,) if trust else ()
    return (trust,) if isinstance(trust, str) else tuple(trust)


def is_trusted(target: str, trust: Trust) -> bool:
    """Whether `trust_code` (or the enclosing `trusting` context) covers the factory `module:function`."""
    prefixes = (*entries(trust), *_run_trust.get())
    if ALL in prefixes:
        return True
    module = target.partition(":")[0]
    return any(target == p or module == p or module.startswith(p + ".") for p in prefixes)


def check_trust(source: dict[str, Any], trust: Trust, where: Path) -> None:
    if source["kind"] in CODE_SOURCES and not is_trusted(str(source.get("target")), trust):
        target = source.get("target")
        module = str(target).partition(":")[0].split(".")[0]
        raise ManifestError(
            f"{where}: the model's source is user code, factory {target!r}, which loading would import "
            f"and run; if you trust this directory, load it with trust_code=True (or "
            f"trust_code=[{module!r}], or --trust-code on the command line), or register the factory "
            "in-process with torchslim.register_model and save it under that name"
        )
