"""The README's "Your own model and data" example, run as written: its files, then its command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import torchslim as ts

README = Path(__file__).parents[1] / "README.md"


def _section() -> str:
    text = README.read_text()
    start = text.index("## Your own model and data")
    return text[start : text.index("\n## ", start + 1)]


def _files(section: str) -> dict[str, str]:
    """Each "`name`:" line followed by a fenced block gives a file."""
    pattern = re.compile(r"^`([\w.-]+\.(?:py|yaml))`[^\n]*:\n```\w*\n(.*?)```", re.S | re.M)
    return {name: body for name, body in pattern.findall(section)}


def test_readme_example_files_are_there() -> None:
    files = _files(_section())
    assert set(files) == {"mymodels.py", "make_data.py", "recipe.yaml"}
    assert "mymodels:mlp" in files["recipe.yaml"]


@pytest.mark.slow
def test_readme_example_runs_as_written(tmp_path: Path) -> None:
    for name, body in _files(_section()).items():
        (tmp_path / name).write_text(body)
    env = {**os.environ, "PYTHONPATH": str(Path(ts.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    exe = Path(sys.executable)
    subprocess.run([str(exe), "make_data.py"], cwd=tmp_path, env=env, check=True, timeout=120)
    done = subprocess.run(
        [str(exe.with_name("torchslim")), "compress", "recipe.yaml", "--out", "runs/iris", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    stages = json.loads(done.stdout)["stages"]
    assert stages[-1]["accuracy"] >= 0.9 and stages[-1]["nonzero_params"] < 0.5 * stages[0]["params"]
