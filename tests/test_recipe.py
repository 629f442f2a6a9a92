from pathlib import Path

import pytest

from torchslim.errors import UserError
from torchslim.recipe import STAGES, load_recipe, parse_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(UserError) as info:
        load_recipe(_write(tmp_path, text))
    return str(info.value)


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_parses(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.model and all(name in STAGES for name, _ in recipe.stages)


def test_valid_recipe_roundtrips_to_a_dict(tmp_path: Path) -> None:
    recipe = load_recipe(
        _write(tmp_path, "model: zoo:tiny-digits\nstages:\n  - finetune: {epochs: 2, lr: 0.01}\n")
    )
    assert recipe.stages[0][0] == "finetune" and recipe.stages[0][1].epochs == 2
    assert parse_recipe(recipe.to_dict()).to_dict() == recipe.to_dict()


def test_unknown_top_level_key_names_key_and_line(tmp_path: Path) -> None:
    msg = _error(tmp_path, "model: zoo:tiny-digits\nstages: []\nouptut: {}\n")
    assert "line 3" in msg and "ouptut: unknown key" in msg and "did you mean output" in msg


def test_unknown_stage_key_names_the_path_and_line(tmp_path: Path) -> None:
    msg = _error(
        tmp_path, "model: zoo:tiny-digits\nstages:\n  - finetune:\n      epochs: 1\n      lrr: 0.1\n"
    )
    assert "line 5" in msg and "stages[0].finetune.lrr: unknown key" in msg and "did you mean lr" in msg


def test_wrong_type(tmp_path: Path) -> None:
    msg = _error(tmp_path, "model: zoo:tiny-digits\nstages:\n  - finetune: {epochs: many}\n")
    assert "stages[0].finetune.epochs" in msg and "'many'" in msg and "line 3" in msg


def test_value_out_of_range(tmp_path: Path) -> None:
    msg = _error(tmp_path, "model: zoo:tiny-digits\nstages:\n  - finetune: {epochs: 1, lr: -1}\n")
    assert "stages[0].finetune.lr" in msg and "greater than 0" in msg


def test_nested_block_unknown_key(tmp_path: Path) -> None:
    msg = _error(tmp_path, "model: zoo:tiny-digits\nstages:\n  - finetune: {regularize: {l3: 1.0}}\n")
    assert "stages[0].finetune.regularize.l3: unknown key" in msg and "l1" in msg


def test_unknown_stage_lists_the_known_ones(tmp_path: Path) -> None:
    msg = _error(tmp_path, "model: zoo:tiny-digits\nstages:\n  - finetun: {}\n")
    assert "unknown stage 'finetun'" in msg and "did you mean 'finetune'" in msg


def test_stage_must_be_a_one_key_mapping(tmp_path: Path) -> None:
    msg = _error(tmp_path, "model: zoo:tiny-digits\nstages:\n  - finetune: {}\n    prune: {}\n")
    assert "stages[0]" in msg and "exactly one key" in msg


def test_missing_model_and_bad_output_format(tmp_path: Path) -> None:
    assert "model: required key is missing" in _error(tmp_path, "stages: []\n")
    msg = _error(tmp_path, "model: zoo:x\noutput: {formats: [pickle]}\n")
    assert "output.formats[0]" in msg and "'pickle'" in msg


def test_several_errors_are_counted(tmp_path: Path) -> None:
    msg = _error(tmp_path, "model: zoo:x\nbad1: 1\nbad2: 2\n")
    assert "and 1 more error" in msg


def test_not_yaml_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    assert "not valid YAML" in _error(tmp_path, "model: [unclosed\n")
    assert "must be a mapping" in _error(tmp_path, "- just a list\n")
    with pytest.raises(UserError, match="no such file"):
        load_recipe(tmp_path / "absent.yaml")
