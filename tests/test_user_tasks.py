"""Bring your own model and data: a user's package in a directory, run by `torchslim compress` from
that directory (no PYTHONPATH for the package) and by `ts.run_recipe`; the saved model is reloaded and
re-scored to the report's number."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import torchslim as ts
from torchslim.tasks.resolve import resolve_task
from user_project import write_project

PRUNE = {"prune": {"kind": "unstructured", "sparsity": 0.5, "importance": "magnitude"}}
CASES: dict[str, dict[str, Any]] = {
    "factory": {
        "model": "mypkg.models:mlp",
        "task": "mypkg.tasks:blobs",
        "stages": [{"finetune": {"epochs": 3, "lr": 0.01}}, PRUNE],
    },
    "npz": {
        "model": "mypkg.models:mlp",
        "task": {"data": "data.npz", "metric": "accuracy", "batch_size": 32, "lr": 0.01},
        "stages": [{"finetune": {"epochs": 3}}, PRUNE],
    },
    "csv": {
        "model": "mypkg.models:mlp",
        "task": {"data": {"train": "train.csv", "test": "test.csv"}, "target": "label", "metric": "f1"},
        "stages": [{"finetune": {"epochs": 3, "lr": 0.01}}, PRUNE],
    },
    "images": {
        "model": "mypkg.models:cnn",
        "task": {"data": "images", "image_size": 12, "batch_size": 4, "lr": 0.02},
        "stages": [{"finetune": {"epochs": 4}}],
    },
}
THRESHOLD = {"factory": 0.9, "npz": 0.9, "csv": 0.9, "images": 0.75}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's directory as working directory; `mypkg` importable here only through it."""
    root = write_project(tmp_path / "project")
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        del sys.modules[name]


def _check(root: Path, out: Path, recipe: dict[str, Any], case: str) -> None:
    report = json.loads((out / "report.json").read_text())
    final = report["stages"][-1]["accuracy"]
    task = resolve_task(recipe["task"])
    reloaded = ts.load(out / "model", trust_code=["mypkg"])  # the saved source names mypkg's factory
    assert task.evaluate(reloaded) == pytest.approx(final, abs=1e-6)
    assert final >= THRESHOLD[case], report["stages"]
    assert report["metric"] == ("f1" if case == "csv" else "accuracy") and report["higher_is_better"]


@pytest.mark.parametrize("case", list(CASES))
def test_run_recipe_on_user_model_and_data(project: Path, case: str) -> None:
    recipe = CASES[case]
    ts.run_recipe(recipe, project / "out")
    _check(project, project / "out", recipe, case)


def _console(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed console script with torchslim (only) on PYTHONPATH, run from `root`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(Path(ts.__file__).parents[1])  # this checkout's torchslim, not mypkg
    env["OMP_NUM_THREADS"] = "1"
    exe = Path(sys.executable).with_name("torchslim")
    return subprocess.run([str(exe), *args], cwd=root, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "case", ["factory", *(pytest.param(c, marks=pytest.mark.slow) for c in ("npz", "csv", "images"))]
)
def test_console_script_from_the_user_directory(project: Path, case: str) -> None:
    recipe = CASES[case]
    (project / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    done = _console(project, "compress", "recipe.yaml", "--out", "run", "--quiet")
    assert done.returncode == 0, done.stderr
    _check(project, project / "run", recipe, case)


def test_console_script_task_that_cannot_be_built_fails_before_writing(project: Path) -> None:
    recipe = {"model": "mypkg.models:mlp", "task": {"data": "missing.npz"}, "stages": []}
    (project / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    done = _console(project, "compress", "recipe.yaml", "--out", "run")
    assert done.returncode == 2 and "missing.npz" in done.stderr and "Traceback" not in done.stderr
    assert not any(p.name.startswith((".run", "run")) for p in project.iterdir())


def test_saved_model_directory_with_a_data_mapping(project: Path) -> None:
    """A model saved by one run is the `model:` of the next, with the same data mapping."""
    first = CASES["npz"]
    ts.run_recipe(first, project / "out")
    again = {**first, "model": "out/model", "stages": []}
    report = ts.run_recipe(again, project / "again", trust_code=["mypkg"])
    assert report["stages"][0]["accuracy"] == pytest.approx(
        json.loads((project / "out" / "report.json").read_text())["stages"][-1]["accuracy"], abs=1e-6
    )


def test_lower_is_better_metric_through_validation_and_report(project: Path) -> None:
    """mse on a regression CSV: validation keeps the lowest epoch and the report says lower is better."""
    recipe = {
        "model": "mypkg.models:regressor",
        "task": {"data": "reg.csv", "target": "y", "metric": "mse", "lr": 0.01, "batch_size": 16},
        "stages": [{"finetune": {"epochs": 4, "validation": {"holdout": 0.2}}}],
    }
    report = ts.run_recipe(recipe, project / "out")
    assert report["metric"] == "mse" and report["higher_is_better"] is False
    baseline, final = report["stages"][0]["accuracy"], report["stages"][-1]["accuracy"]
    assert final < 0.25 * baseline  # training lowered the error
    history = report["stages"][-1]["history"]
    best = min(h["metric"] for h in history)
    assert resolve_task(recipe["task"]).validate(
        ts.load(project / "out" / "model", trust_code=True), 0.2
    ) == pytest.approx(best)
    assert "mse (lower is better)" in (project / "out" / "report.html").read_text()
