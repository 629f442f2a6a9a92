from pathlib import Path
from typing import Any

import pytest
import yaml
from unstructured_fixtures import one_thread as one_thread

import torchslim as ts
from torchslim.errors import UserError
from torchslim.prune.masks import get_mask
from torchslim.prune.stage import PRUNE_KINDS, UnstructuredSpec
from torchslim.recipe import load_recipe, parse_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(*stages: dict[str, Any]) -> dict[str, Any]:
    return {"model": "zoo:tiny-digits", "stages": list(stages)}


def test_prune_block_validates_into_the_unstructured_spec() -> None:
    recipe = parse_recipe(
        _recipe({"prune": {"sparsity": 0.9, "importance": "taylor", "schedule": {"steps": 3}}})
    )
    name, spec = recipe.stages[0]
    assert name == "prune" and isinstance(spec, UnstructuredSpec)
    assert spec.kind == "unstructured" and spec.schedule.resolved() == "iterative"
    assert spec.config() == ts.SparsityConfig(sparsity=0.9, importance="taylor")
    assert recipe.to_dict()["stages"][0]["prune"]["sparsity"] == 0.9
    lamp = parse_recipe(
        _recipe({"prune": {"sparsity": 0.9, "scope": "global", "normalize": "lamp", "rounds": 4}})
    )
    assert lamp.stages[0][1].config() == ts.SparsityConfig(
        sparsity=0.9, scope="global", normalize="lamp", rounds=4
    )


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (
            {"kind": "bogus", "sparsity": 0.5},
            r"stages\[0\]\.prune\.kind: unknown prune kind 'bogus'.*known: .*unstructured",
        ),
        ({"sparsity": 1.5}, r"stages\[0\]\.prune\.sparsity: .*less than 1"),
        ({"threshold": -1.0}, r"prune\.threshold: .*greater than or equal to 0"),
        ({"sparsity": 0.5, "importance": "entropyy"}, r"prune\.importance: .*did you mean 'entropy'"),
        (
            {"sparsity": 0.5, "sparsty": 0.5},
            r"prune\.sparsty: unknown key for kind unstructured; did you mean sparsity",
        ),
        ({"sparsity": 0.5, "retain": 0.5}, r"give exactly one of these"),
        (
            {"threshold": 0.1, "schedule": {"kind": "gradual"}},
            r"need a sparsity or retain target, not a threshold",
        ),
        ({"sparsity": 0.5, "schedule": {"begin": 0.8, "end": 0.5}}, r"begin \(0.8\) must be before end"),
        ({"sparsity": 0.5, "normalize": "lammp"}, r"prune\.normalize: .*did you mean 'lamp'"),
        ({"sparsity": 0.5, "rounds": 0}, r"prune\.rounds: .*greater than or equal to 1"),
    ],
)
def test_bad_prune_blocks_name_the_key(block, message) -> None:
    with pytest.raises(UserError, match=message):
        parse_recipe(_recipe({"prune": block}))


def test_errors_carry_the_yaml_line(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "model: zoo:tiny-digits\nstages:\n  - finetune: {epochs: 1}\n  - prune:\n      sparsity: 2\n"
    )
    with pytest.raises(UserError, match=r"line 5: stages\[1\]\.prune\.sparsity"):
        load_recipe(path)


def test_kinds_are_a_registry() -> None:
    assert "unstructured" in PRUNE_KINDS


def test_oneshot_prune_then_finetune_keeps_the_masks(tmp_path: Path) -> None:
    report = ts.run_recipe(
        _recipe({"prune": {"sparsity": 0.8, "scope": "global"}}, {"finetune": {"epochs": 1}}),
        tmp_path / "run",
    )
    base, pruned, tuned = report["stages"]
    assert pruned["sparsity"] == pytest.approx(1894 / 2368, abs=1e-6) and set(pruned["layer_sparsity"]) == {
        "fc1",
        "fc2",
    }
    assert pruned["nonzero_params"] == base["nonzero_params"] - round(0.8 * 2368)
    assert tuned["nonzero_params"] == pruned["nonzero_params"]  # finetune kept the zeros
    assert pruned["size_bytes"] < 0.6 * base["size_bytes"]  # a tiny model: the manifest is a large share
    model = ts.load(tmp_path / "run" / "model")  # the final model's masks are folded into its weights
    assert get_mask(model.fc1, "weight") is None
    zeros = sum(int((m.weight == 0).sum()) for m in (model.fc1, model.fc2))
    assert zeros >= round(0.8 * 2368)


def test_iterative_schedule_rises_over_rounds(tmp_path: Path) -> None:
    block = {"sparsity": 0.9, "scope": "layer", "schedule": {"steps": 3}, "finetune_epochs": 1, "lr": 0.001}
    report = ts.run_recipe(_recipe({"prune": block}), tmp_path / "run")
    stage = report["stages"][1]
    rounds = [r["sparsity"] for r in stage["rounds"]]
    assert rounds == pytest.approx([0.9 * (1 - (2 / 3) ** 3), 0.9 * (1 - (1 / 3) ** 3), 0.9], abs=1e-3)
    assert stage["layer_sparsity"] == pytest.approx({"fc1": 0.9, "fc2": 0.9}, abs=1e-3)
    assert stage["accuracy"] > 0.3  # trained between rounds (measured 0.41); one-shot random gives 0.12


def test_gradual_schedule_is_driven_by_the_next_finetune(tmp_path: Path) -> None:
    stages = (
        {"prune": {"sparsity": 0.9, "scope": "layer", "schedule": {"kind": "gradual", "end": 0.5}}},
        {"finetune": {"epochs": 2}},
    )
    report = ts.run_recipe(_recipe(*stages), tmp_path / "run")
    base, prune, tuned = report["stages"]
    assert prune["nonzero_params"] == base["nonzero_params"]  # masks attached, nothing pruned yet
    assert "gradual" in prune["schedule"]
    assert tuned["nonzero_params"] == base["nonzero_params"] - round(0.9 * 2048) - round(0.9 * 320)
    model = ts.load(tmp_path / "run" / "model")
    assert int((model.fc1.weight == 0).sum()) == round(0.9 * 2048)


def test_auto_allocation_notes_sensitivity_curves(tmp_path: Path) -> None:
    report = ts.run_recipe(
        _recipe({"prune": {"sparsity": 0.9, "allocation": "auto", "batches": 4}}), tmp_path / "r"
    )
    stage = report["stages"][1]
    assert set(stage["sensitivity"]) == {"fc1", "fc2"}
    assert all(len(curve) >= 8 and curve[0][0] == 0.0 for curve in stage["sensitivity"].values())
    assert stage["layer_sparsity"]["fc1"] > stage["layer_sparsity"]["fc2"]


def test_soft_oneshot_regrows_during_the_next_stage_then_hardens(tmp_path: Path) -> None:
    stages = ({"prune": {"sparsity": 0.7, "soft": True, "scope": "layer"}}, {"finetune": {"epochs": 1}})
    report = ts.run_recipe(_recipe(*stages), tmp_path / "run")
    model = ts.load(tmp_path / "run" / "model")
    assert get_mask(model.fc1, "weight") is None  # hardened, then folded into the final weights
    assert int((model.fc1.weight == 0).sum()) == round(0.7 * 2048)
    assert report["stages"][-1]["nonzero_params"] == report["stages"][1]["nonzero_params"]
    first = ts.load(tmp_path / "run" / "stages" / "01-prune")
    assert get_mask(first.fc1, "weight").soft
    assert not (first.fc1.weight == 0).equal(model.fc1.weight == 0)  # the mask changed while training


def test_shipped_recipe_style_yaml_parses(tmp_path: Path) -> None:
    text = yaml.safe_dump(
        _recipe(
            {"prune": {"kind": "unstructured", "sparsity": 0.9, "schedule": {"kind": "gradual"}}},
            {"finetune": {"epochs": 3}},
        )
    )
    path = tmp_path / "r.yaml"
    path.write_text(text)
    assert load_recipe(path).stages[0][1].schedule.kind == "gradual"


def test_prune_block_takes_a_pattern_and_layerwise_criteria_one_shot() -> None:
    recipe = parse_recipe(_recipe({"prune": {"importance": "sparsegpt", "pattern": "2:4", "batches": 4}}))
    config = recipe.stages[0][1].config()
    assert config == ts.SparsityConfig(sparsity=0.5, importance="sparsegpt", pattern="2:4")
    for block in (
        {"importance": "wanda", "sparsity": 0.5, "schedule": {"steps": 3}},
        {"pattern": "2:4", "soft": True},
    ):
        with pytest.raises(UserError, match="one-shot"):
            parse_recipe(_recipe({"prune": block}))
    with pytest.raises(UserError, match="omit sparsity"):
        parse_recipe(_recipe({"prune": {"pattern": "4:8", "sparsity": 0.6}}))
