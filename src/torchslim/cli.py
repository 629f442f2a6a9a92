"""`torchslim demo | compress | inspect`. Exit codes: 0 success, 2 bad input, 1 internal error."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torchslim.errors import UserError


def main(argv: Sequence[str] | None = None) -> int:
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchslim", description="Make trained PyTorch networks smaller and faster."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,compress,inspect}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="print nothing but errors")
    common.add_argument("--json", action="store_true", help="print the result as JSON on stdout")

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
    inspect.set_defaults(handler=_inspect)
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
        report = run_recipe(recipe, out, overwrite=args.overwrite, resume=args.resume, reporter=reporter)
    out_dir = Path(out) if out else Path("runs") / Path(getattr(recipe, "source", str(recipe))).stem
    if not quiet:
        print_summary(report, out_dir)
    return report


def _inspect(args: argparse.Namespace) -> dict[str, Any]:
    from torchslim.cli_view import print_layers
    from torchslim.metrics import layer_table
    from torchslim.pipeline import resolve_model, resolve_task

    model = resolve_model(args.model)
    example = _example_inputs(model, resolve_task)
    rows = layer_table(model, example)
    if not (args.quiet or args.json):
        print_layers(args.model, rows)
    return {"model": args.model, "layers": rows}


def _example_inputs(model: Any, resolve_task: Callable[..., Any]) -> Any:
    try:
        return resolve_task(None, model).example_inputs
    except UserError:
        return None  # a non-zoo model: shapes and sparsity without MACs


def _version() -> str:
    from torchslim import __version__

    return f"torchslim {__version__}"


if __name__ == "__main__":
    sys.exit(main())
