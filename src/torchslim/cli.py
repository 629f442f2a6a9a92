"""`torchslim demo | compress | inspect | compare`. Exit codes: 0 success, 2 bad input, 1 internal error."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torchslim.errors import UserError


def main(argv: Sequence[str] | None = None) -> int:
    _working_dir_on_path()
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except UserError as exc:
        print(f"torchslim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("torchslim: interrupted; no output was written", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def _working_dir_on_path() -> None:
    """The user's modules (`model: mypkg.models:build`) import from the working directory, as under
    `python -m torchslim`; the console script alone would not see them."""
    cwd = os.getcwd()
    if not any(p in ("", ".", cwd) for p in sys.path):
        sys.path.insert(0, cwd)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchslim", description="Make trained PyTorch networks smaller and faster."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,compress,inspect,compare}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="print nothing but errors")
    common.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    common.add_argument(
        "--trust-code",
        action="store_true",
        help="allow loading saved models whose manifest names a Python factory to import and run",
    )

    demo = sub.add_parser("demo", parents=[common], help="the main job on the embedded default task")
    demo.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    demo.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    demo.add_argument("--resume", action="store_true", help="continue an interrupted run into OUT")
    demo.set_defaults(handler=_demo)

    compress = sub.add_parser("compress", parents=[common], help="run a recipe")
    compress.add_argument("recipe", help="recipe YAML file")
    compress.add_argument("--out", help="output directory (default: runs/<recipe name>)")
    compress.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    compress.add_argument("--resume", action="store_true", help="continue an interrupted run into OUT")
    compress.set_defaults(handler=_compress)

    inspect = sub.add_parser("inspect", parents=[common], help="per-layer table of a model")
    inspect.add_argument("model", help="saved model directory, zoo:NAME or package.module:factory")
    inspect.add_argument(
        "--input-shape",
        action="append",
        metavar="SHAPE",
        help="example input shape such as 1,3,224,224 (repeat for several inputs); default: the task's",
    )
    inspect.add_argument("--dtype", choices=["float32", "float16", "int64"], default="float32")
    inspect.add_argument("--task", help="task whose example inputs to use (name or package.module:factory)")
    inspect.set_defaults(handler=_inspect)

    compare = sub.add_parser("compare", parents=[common], help="compare runs: a table and an HTML page")
    compare.add_argument("runs", nargs="+", metavar="RUN_DIR", help="output directories of compress/demo")
    compare.add_argument("--out", default="compare.html", help="HTML page to write (default: compare.html)")
    compare.set_defaults(handler=_compare)
    return parser


def _demo(args: argparse.Namespace) -> dict[str, Any]:
    from torchslim.pipeline import DEMO_RECIPE

    return _run(DEMO_RECIPE, args.out, args)


def _compress(args: argparse.Namespace) -> dict[str, Any]:
    from torchslim.recipe import load_recipe

    recipe = load_recipe(args.recipe)  # validate before anything else is touched
    return _run(recipe, args.out, args)


def _run(recipe: Any, out: str | None, args: argparse.Namespace) -> dict[str, Any]:
    from torchslim.cli_view import RichReporter, print_summary
    from torchslim.pipeline import run_recipe

    quiet = args.quiet or args.json
    with RichReporter(enabled=not quiet) as reporter:
        report = run_recipe(
            recipe,
            out,
            overwrite=args.overwrite,
            resume=args.resume,
            reporter=reporter,
            trust_code=args.trust_code,
        )
    out_dir = Path(out) if out else Path("runs") / Path(getattr(recipe, "source", str(recipe))).stem
    if not quiet:
        print_summary(report, out_dir)
    return report


def _inspect(args: argparse.Namespace) -> dict[str, Any]:
    from torchslim.cli_view import print_inspect
    from torchslim.inspect_model import example_from_shapes, inspect_model
    from torchslim.pipeline import resolve_model, resolve_task

    model = resolve_model(args.model, trust_code=args.trust_code)
    if args.input_shape:
        example = example_from_shapes(args.input_shape, args.dtype)
    else:
        example = _example_inputs(model, args.task, resolve_task)
    result = {"model": args.model, **inspect_model(model, example)}
    if not (args.quiet or args.json):
        print_inspect(args.model, result)
    return result


def _example_inputs(model: Any, task: str | None, resolve_task: Callable[..., Any]) -> Any:
    try:
        return resolve_task(task, model).example_inputs
    except UserError:
        if task is not None:
            raise
        return None  # no task and no --input-shape: shapes and sparsity without MACs


def _compare(args: argparse.Namespace) -> dict[str, Any]:
    from torchslim.cli_view import print_compare
    from torchslim.compare import compare

    result = compare(args.runs, args.out)
    if not (args.quiet or args.json):
        print_compare(result)
    return result


def _version() -> str:
    from torchslim import __version__

    return f"torchslim {__version__}"


if __name__ == "__main__":
    sys.exit(main())
