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
    ratio = report["stages"][0]["size_bytes"] / final["size_bytes"]
    assert report["compression_ratio"] == pytest.approx(ratio, abs=1e-4)  # the report rounds to 4 places
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
    names = sorted(p.name for p in tmp_path.iterdir())  # kept for --resume, hidden; the lock is gone
    assert len(names) == 2 and names[0].startswith(".run.partial-") and names[1] == ".run.resume.json"
    assert json.loads((tmp_path / names[1]).read_text()) == {"work": names[0]}


def test_resume_reuses_finished_stages_and_matches_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchslim import pipeline

    recipe = {**TINY, "stages": [{"finetune": {"epochs": 2, "lr": 0.001}}, {"finetune": {"epochs": 1}}]}
    reference = ts.run_recipe(recipe, tmp_path / "reference")
    calls = []
    real = pipeline._run_stage

    def crash_on_second_finetune(ctx, index, *args):  # type: ignore[no-untyped-def]
        calls.append(index)
        if index == 2 and len(calls) == 3:
            raise KeyboardInterrupt
        return real(ctx, index, *args)

    monkeypatch.setattr(pipeline, "_run_stage", crash_on_second_finetune)
    with pytest.raises(KeyboardInterrupt):
        ts.run_recipe(recipe, tmp_path / "run")
    report = ts.run_recipe(recipe, tmp_path / "run", resume=True)
    assert calls == [0, 1, 2, 2]  # the baseline and first finetune were not run again
    assert [s["accuracy"] for s in report["stages"]] == [s["accuracy"] for s in reference["stages"]]
    final = ts.load(tmp_path / "run" / "model").state_dict()
    expected = ts.load(tmp_path / "reference" / "model").state_dict()
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    assert sorted(p.name for p in (tmp_path / "run" / "stages").iterdir()) == [
        "00-baseline",
        "01-finetune",
        "02-finetune",
    ]


def test_resume_refuses_a_different_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchslim import pipeline

    monkeypatch.setattr(pipeline, "write_report", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        ts.run_recipe(TINY, tmp_path / "run")
    monkeypatch.undo()
    other = {**TINY, "stages": [{"finetune": {"epochs": 2}}]}
    with pytest.raises(UserError, match="different recipe"):
        ts.run_recipe(other, tmp_path / "run", resume=True)


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


def test_resume_recreates_a_gradual_schedule_the_next_stage_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchslim import pipeline

    prune = {"kind": "unstructured", "sparsity": 0.8, "schedule": {"kind": "gradual"}}
    recipe = {**TINY, "stages": [{"prune": prune}, {"finetune": {"epochs": 2}}]}
    reference = ts.run_recipe(recipe, tmp_path / "reference")
    real = pipeline._run_stage

    def crash_in_finetune(ctx, index, *args):  # type: ignore[no-untyped-def]
        if index == 2:
            raise KeyboardInterrupt
        return real(ctx, index, *args)

    monkeypatch.setattr(pipeline, "_run_stage", crash_in_finetune)
    with pytest.raises(KeyboardInterrupt):
        ts.run_recipe(recipe, tmp_path / "run")
    monkeypatch.undo()
    report = ts.run_recipe(recipe, tmp_path / "run", resume=True)
    final = report["stages"][-1]
    assert final["nonzero_params"] == reference["stages"][-1]["nonzero_params"] < 0.3 * final["params"]
    assert final["accuracy"] == reference["stages"][-1]["accuracy"]


def test_sensitivity_curves_of_auto_pruning_reach_the_report(tmp_path: Path) -> None:
    prune = {"kind": "unstructured", "sparsity": 0.8, "allocation": "auto"}
    report = ts.run_recipe({**TINY, "stages": [{"prune": prune}]}, tmp_path / "run")
    assert set(report["sensitivity"]) == {"fc1", "fc2"}
    assert report["sensitivity_metric"].startswith("held-out loss")
    html = (tmp_path / "run" / "report.html").read_text()
    assert "<h2>Sensitivity</h2>" in html
