import json
from pathlib import Path

import pytest
import torch

import torchslim as ts
from torchslim.errors import UserError
from torchslim.pipeline import resolve_model, resolve_task

TINY = {"model": "zoo:tiny-digits", "stages": [{"finetune": {"epochs": 1, "lr": 0.001}}]}


def test_run_writes_report_model_and_stage_checkpoints(tmp_path: Path) -> None:
    out = tmp_path / "run"
    report = ts.run_recipe(TINY, out)
    assert sorted(p.name for p in out.iterdir()) == ["model", "report.html", "report.json", "stages"]
    assert [p.name for p in sorted((out / "stages").iterdir())] == ["00-baseline", "01-finetune"]
    assert json.loads((out / "report.json").read_text()) == report
    assert [s["name"] for s in report["stages"]] == ["baseline", "finetune"]
    final = report["stages"][-1]
    assert final["size_bytes"] == sum(f.stat().st_size for f in (out / "model").iterdir())
    assert final["accuracy"] == pytest.approx(ts.zoo.get("tiny-digits").evaluate(ts.load(out / "model")))
    assert report["compression_ratio"] == pytest.approx(
        report["stages"][0]["size_bytes"] / final["size_bytes"]
    )
    assert report["stages"][1]["history"][0]["epoch"] == 1.0


def test_finetune_changes_weights_and_the_loaded_model_continues(tmp_path: Path) -> None:
    ts.run_recipe(TINY, tmp_path / "run")
    before = ts.load(tmp_path / "run" / "stages" / "00-baseline")
    after = ts.load(tmp_path / "run" / "model")
    assert not torch.equal(before.fc1.weight, after.fc1.weight)


def test_existing_output_needs_overwrite_and_is_left_intact(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="exists.*--overwrite"):
        ts.run_recipe(TINY, out)
    assert (out / "keep.txt").exists()
    ts.run_recipe(TINY, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "report.json").exists()


def test_a_failing_stage_leaves_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchslim import pipeline

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pipeline, "write_report", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ts.run_recipe(TINY, tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_resolve_model_forms(tmp_path: Path) -> None:
    model = resolve_model("zoo:tiny-digits")
    assert resolve_task(None, model).name == "tiny-digits"
    ts.save(model, tmp_path / "saved")
    assert resolve_task(None, resolve_model(str(tmp_path / "saved"))).name == "tiny-digits"
    with pytest.raises(UserError, match="unknown zoo task 'nope'"):
        resolve_model("zoo:nope")
    with pytest.raises(UserError, match="not zoo:NAME"):
        resolve_model(str(tmp_path / "missing_dir"))


def test_factory_model_needs_a_task() -> None:
    model = resolve_model("conftest:make_digits_mlp")
    with pytest.raises(UserError, match="recipe.task"):
        resolve_task(None, model)
    assert resolve_task("tiny-digits", model).name == "tiny-digits"


def test_onnx_output_runs_in_onnxruntime(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    ts.run_recipe({**TINY, "output": {"formats": ["torchslim", "onnx"]}}, tmp_path / "run")
    task = ts.zoo.get("tiny-digits")
    session = ort.InferenceSession(str(tmp_path / "run" / "model.onnx"))
    x = task.example_inputs
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    expected = ts.load(tmp_path / "run" / "model")(x).detach().numpy()
    assert abs(got - expected).max() < 1e-4
