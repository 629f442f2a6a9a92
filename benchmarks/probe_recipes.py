"""Hostile-recipe probes: how many end cleanly (exit 2 with one line, or a valid recipe), how many do not.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/probe_recipes.py [--mutations 150] [--seed 3]

Each probe is a recipe file given to `torchslim compress` with everything before the run done for
real (validation, model resolution, task, the fit check); the run itself is stopped where it would
start (`pipeline._run`), so valid recipes cost nothing. Probes: the hand-written rows of
tests/recipe_mutations.py and seeded mutations of the shipped recipes (tests/recipe_mutations.py).
A probe is clean when it exits 0, or exits 2 with one line on stderr and leaves no directory behind.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

import conftest  # noqa: E402, F401  (registers the tiny task the probes name)
from recipe_mutations import HAND_WRITTEN, mutations  # noqa: E402
from torchslim import pipeline  # noqa: E402
from torchslim.cli import main  # noqa: E402


class _Stop(Exception):
    pass


def _stop(*args: object, **kwargs: object) -> None:
    raise _Stop


class _Timeout(BaseException):
    """Not an `Exception`, so no handler in the code under test can turn it into a clean error."""


def _timeout(*args: object) -> None:
    raise _Timeout


def probe(data: str | bytes, tmp: Path) -> str:
    """'ok' (valid), 'refused' (clean exit 2) or what went wrong."""
    for p in tmp.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    (tmp / "empty.onnx").write_bytes(b"")
    recipe = tmp / "recipe.yaml"
    if isinstance(data, str):
        data = data.replace("EMPTY_ONNX", str(tmp / "empty.onnx")).encode()
    recipe.write_bytes(data)
    err = io.StringIO()
    signal.alarm(120)
    try:
        with contextlib.redirect_stderr(err):
            code = main(["compress", str(recipe), "--out", str(tmp / "a" / "out"), "--quiet"])
    except _Stop:
        return "ok"
    except BaseException as exc:
        return f"raised {type(exc).__name__}"
    finally:
        signal.alarm(0)
    left = [p.name for p in tmp.iterdir() if p.is_dir()]
    if code == 2 and err.getvalue().count("\n") == 1 and not left:
        return "refused"
    lines = err.getvalue().count("\n")
    return f"exit {code}, {lines} stderr lines ({err.getvalue()[-300:]!r}), left {left}"


def main_(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mutations", type=int, default=150)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    pipeline._run = _stop  # type: ignore[assignment]
    signal.signal(signal.SIGALRM, _timeout)
    os.chdir(TESTS.parent)  # shipped recipes name tests/fixtures/...
    groups = {
        "hand-written": [(name, text) for name, text, _ in HAND_WRITTEN],
        f"mutations (seed {args.seed})": list(enumerate(mutations(args.seed, args.mutations))),
    }
    with tempfile.TemporaryDirectory() as tmp:
        print("| probes | tried | clean | valid (exit 0) | refused (exit 2) | defects |")
        print("|---|---|---|---|---|---|")
        for group, probes in groups.items():
            results = [(name, probe(data, Path(tmp))) for name, data in probes]
            bad = [f"{name}: {r}" for name, r in results if r not in ("ok", "refused")]
            valid = sum(r == "ok" for _, r in results)
            refused = sum(r == "refused" for _, r in results)
            row = [group, len(results), valid + refused, valid, refused, "; ".join(bad)]
            print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main_()
