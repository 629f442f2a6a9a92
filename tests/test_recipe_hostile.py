"""Hostile recipes and command lines: every one ends in exit 2 with one line, before anything is written."""

import json
from pathlib import Path

import pytest
import torch

from recipe_mutations import HAND_WRITTEN, OK, mutations
from torchslim import bounded, pipeline
from torchslim.cli import main
from torchslim.errors import UserError
from torchslim.recipe import parse_recipe


def _cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str]:
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(args)
    err = capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, not even OUT's parent
    return code, err


@pytest.mark.parametrize(("text", "message"), [p[1:] for p in HAND_WRITTEN], ids=[p[0] for p in HAND_WRITTEN])
def test_hostile_recipe_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | bytes, message: str
) -> None:
    (tmp_path / "empty.onnx").write_bytes(b"")
    recipe = tmp_path / "recipe.yaml"
    if isinstance(text, str):
        text = text.replace("EMPTY_ONNX", str(tmp_path / "empty.onnx")).encode()
    recipe.write_bytes(text)
    code, err = _cli(tmp_path, capsys, ["compress", str(recipe), "--out", str(tmp_path / "a" / "b" / "out")])
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and len(err) < 600 and "Traceback" not in err


def test_a_recipe_larger_than_the_limit_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(OK + "#" * bounded.MAX_TEXT_BYTES)
    code, err = _cli(tmp_path, capsys, ["compress", str(recipe), "--out", str(tmp_path / "out")])
    assert code == 2 and "more than the 262144 accepted" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compress", "r" * 10**6], "path of 1000000 bytes"),
        (["compress", "RECIPE", "--out", "o" * 300], "component of 300 bytes"),
        (["compress", "RECIPE", "--out", "o" * 240], "the directory name is too long"),
        (["inspect", "m" * 10**6], "longer than 4096 characters"),
        (["inspect", "zoo:" + "m" * 10**6], "longer than 4096 characters"),
        (["inspect", "os:system"], "the factory needs arguments"),
        (["inspect", "EMPTY_ONNX"], "the file is empty (0 bytes)"),
        (["inspect", "NO_OUTPUT_ONNX"], "the ONNX graph has no outputs"),
    ],
)
def test_hostile_command_lines_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    files = {
        "RECIPE": tmp_path / "r.yaml",
        "EMPTY_ONNX": tmp_path / "e.onnx",
        "NO_OUTPUT_ONNX": tmp_path / "n.onnx",
    }
    files["RECIPE"].write_text(OK)
    files["EMPTY_ONNX"].write_bytes(b"")
    files["NO_OUTPUT_ONNX"].write_bytes(b"\x08\x08")  # a ModelProto with ir_version 8 and no graph
    code, err = _cli(tmp_path, capsys, [str(files.get(a, a)) for a in args])
    assert code == 2 and message in err and err.count("\n") == 1


def test_the_unknown_key_comes_first_even_with_a_missing_one(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        parse_recipe({"modle": "zoo:tiny-digits", "stages": []})
    assert str(info.value).startswith("<recipe>: modle: unknown key; did you mean model?")
    assert str(info.value).endswith("(and 1 more error)")


def test_a_model_of_a_million_characters_given_as_data(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="model: a string of 1000000 characters, longer than 4096"):
        pipeline.run_recipe({"model": "m" * 10**6}, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_nesting_in_a_recipe_given_as_data(tmp_path: Path) -> None:
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(UserError, match="stages.*nested more than 64 levels deep"):
        pipeline.run_recipe({"model": "zoo:tiny-digits", "stages": deep}, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_the_fit_check_leaves_the_model_as_it_was(tiny_task) -> None:  # type: ignore[no-untyped-def]
    from torchslim.resolve import check_fits

    model = tiny_task.model().train()
    model.fc2.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_fits(model, tiny_task)
    assert model.training and not model.fc2.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bounded_json() -> None:
    assert bounded.json_depth('{"a": ["[[[[", {"b": "]]}"}]}') == 3  # brackets inside strings do not count
    with pytest.raises(UserError, match="nested more than 64"):
        bounded.load_json("[" * 65 + "]" * 65, "x")
    assert bounded.load_json("[" * 64 + "]" * 64, "x") is not None
    with pytest.raises(UserError, match="not valid JSON"):
        bounded.load_json('{"work": ', "x")


def test_a_corrupt_stage_record_on_resume_is_a_clean_error(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(pipeline, "write_report", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    recipe = {"model": "zoo:tiny-digits", "stages": []}
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_recipe(recipe, tmp_path / "run")
    monkeypatch.undo()
    work = tmp_path / json.loads((tmp_path / ".run.resume.json").read_text())["work"]
    (work / "stages" / "00-baseline.json").write_text("[" * 100_000)
    with pytest.raises(UserError, match="stage record .* nested more than 64"):
        pipeline.run_recipe(recipe, tmp_path / "run", resume=True)


def _outcome(path: Path, data: str | bytes, capsys: pytest.CaptureFixture[str]) -> int:
    """Exit code of `torchslim compress` on `data`, parsing and validating only (the run is stubbed)."""
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    code = main(["compress", str(path), "--out", str(path.parent / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code in (0, 2), err
    assert (err == "") if code == 0 else (err.count("\n") == 1 and "Traceback" not in err and len(err) < 2000)
    return code


def _fuzz(tmp_path: Path, capsys, monkeypatch, seed: int, count: int) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(pipeline, "run_recipe", lambda recipe, out, **kwargs: {})
    codes = [_outcome(tmp_path / "r.yaml", text, capsys) for text in mutations(seed, count)]
    assert 0 < codes.count(2) < count  # mutations that are still valid recipes do exist
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_fuzzed_recipes_exit_0_or_2_with_one_line(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _fuzz(tmp_path, capsys, monkeypatch, seed=0, count=150)


@pytest.mark.slow
def test_fuzzed_recipes_at_length(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _fuzz(tmp_path, capsys, monkeypatch, seed=1, count=3000)


@pytest.mark.slow
def test_fuzzed_recipes_through_the_checks_before_a_run(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Model resolution, task and the fit check run for real; the run stops where the lock is taken."""

    class Stop(Exception):
        pass

    def stop(*args: object, **kwargs: object) -> None:
        raise Stop

    monkeypatch.setattr(pipeline.runslot, "claim", stop)
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)  # shipped recipes name tests/fixtures
    outs = []
    for i, text in enumerate(mutations(2, 300)):
        recipe = tmp_path / f"{i}.yaml"
        recipe.write_bytes(text if isinstance(text, bytes) else text.encode())
        try:
            code = main(["compress", str(recipe), "--out", str(tmp_path / "out"), "--quiet"])
        except Stop:
            code = 0
        err = capsys.readouterr().err
        assert code in (0, 2) and (code == 0 or err.count("\n") == 1), err
        outs.append(code)
    assert not (tmp_path / "out").exists() and 0 < outs.count(2) < len(outs)


@pytest.mark.slow
def test_lenet_with_the_minilm_task_is_named_before_any_work(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: zoo:lenet5-digits\ntask: minilm\nstages: []\n")
    code, err = _cli(tmp_path, capsys, ["compress", str(recipe), "--out", str(tmp_path / "out")])
    assert code == 2 and "model 'zoo:lenet5-digits' does not fit task 'minilm'" in err
