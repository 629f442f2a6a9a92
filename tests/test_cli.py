import json
import subprocess
import sys
from pathlib import Path

import pytest

from torchslim.cli import main


def _recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


GOOD = "model: zoo:tiny-digits\nstages:\n  - finetune: {epochs: 1}\n"


def test_compress_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["compress", str(_recipe(tmp_path, GOOD)), "--out", str(tmp_path / "out"), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "tiny-digits" and len(report["stages"]) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "model: zoo:tiny-digits\nstages:\n  - finetune: {epoch: 1}\n",
            "stages[0].finetune.epoch: unknown key",
        ),
        ("model: zoo:tiny-digits\nstages:\n  - finetune: {epochs: many}\n", "stages[0].finetune.epochs"),
        ("model: zoo:no-such-task\nstages: []\n", "unknown zoo task 'no-such-task'"),
    ],
)
def test_bad_recipes_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    code = main(["compress", str(_recipe(tmp_path, text)), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_missing_recipe_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compress", str(tmp_path / "absent.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_existing_output_exits_2_unless_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out").mkdir()
    recipe = str(_recipe(tmp_path, GOOD))
    assert main(["compress", recipe, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["compress", recipe, "--out", str(tmp_path / "out"), "--quiet", "--overwrite"]) == 0


def test_inspect_saved_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["compress", str(_recipe(tmp_path, GOOD)), "--out", str(tmp_path / "out"), "--quiet"])
    assert main(["inspect", str(tmp_path / "out" / "model"), "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert [r["name"] for r in layers] == ["fc1", "fc2"] and layers[0]["macs"] == 64 * 32


def test_inspect_missing_model_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path / "nothing")]) == 2
    assert "torchslim: error:" in capsys.readouterr().err


def test_console_script_help_and_usage_errors() -> None:
    exe = Path(sys.executable).with_name("torchslim")
    ok = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "compress" in ok.stdout and "inspect" in ok.stdout
    bad = subprocess.run([str(exe), "frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
