from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from torchslim.errors import UserError
from torchslim.recipe import load_recipe
from torchslim.tasks.resolve import resolve_task
from torchslim.tasks.spec import DataTaskSpec, build_task


def _npz(path: Path, n: int = 50, **extra: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, n)
    np.savez(path, x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:], **extra)
    return path


def test_npz_and_safetensors_read_the_same(tmp_path: Path) -> None:
    npz = _npz(tmp_path / "d.npz")
    arrays = {k: torch.from_numpy(v) for k, v in np.load(npz).items()}
    save_file(arrays, str(tmp_path / "d.safetensors"))
    a = build_task(DataTaskSpec(data=str(npz)))
    b = build_task(DataTaskSpec(data=str(tmp_path / "d.safetensors")))
    assert a.name == "d" and a.metric == "accuracy" and a.higher_is_better
    assert torch.equal(a.splits["train"].inputs, b.splits["train"].inputs)  # type: ignore[arg-type]
    assert a.splits["test"].targets.dtype == torch.int64 and len(a.splits["test"]) == 10
    batches = list(a.train_loader(batch_size=16, seed=3))
    assert [len(t) for _, t in batches] == [16, 16, 8]
    assert torch.equal(batches[0][1], next(iter(a.train_loader(batch_size=16, seed=3)))[1])


def test_missing_arrays_and_pickled_npz_are_clear_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((4, 2)), y_train=np.zeros(4))
    with pytest.raises(UserError, match="missing arrays x_test, y_test"):
        build_task(DataTaskSpec(data=str(tmp_path / "bad.npz")))
    np.savez(tmp_path / "obj.npz", x_train=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UserError, match="cannot read as .npz"):
        build_task(DataTaskSpec(data=str(tmp_path / "obj.npz")))


def test_regression_targets_and_lower_is_better(tmp_path: Path) -> None:
    lines = ["a,b,price"] + [f"{i},{2 * i},{3.5 * i}" for i in range(30)]
    (tmp_path / "t.csv").write_text("\n".join(lines))
    task = build_task(DataTaskSpec(data=str(tmp_path / "t.csv"), target="price", metric="mae"))
    assert not task.higher_is_better and task.outputs == "regression"
    assert len(task.splits["test"]) == 6 and task.splits["train"].targets.dtype == torch.float32
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.5, 0.0]]))
        model.bias.zero_()
    assert task.evaluate(model) == pytest.approx(0.0, abs=1e-5)
    assert task.better(0.1, 0.2) and not task.better(0.2, 0.1)


def test_csv_non_numeric_feature_names_column_and_line(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a,colour,label\n1,red,0\n2,blue,1\n")
    with pytest.raises(UserError, match=r"t.csv, line 2: column 'colour' is not numeric"):
        build_task(DataTaskSpec(data=str(tmp_path / "t.csv")))
    (tmp_path / "short.csv").write_text("a,b,label\n1,2,0\n3,1\n")
    with pytest.raises(UserError, match=r"short.csv, line 3: 2 fields where the header names 3"):
        build_task(DataTaskSpec(data=str(tmp_path / "short.csv")))
    with pytest.raises(UserError, match="no column 'y'"):
        build_task(DataTaskSpec(data=str(tmp_path / "t.csv"), target="y", features=["a"]))


def test_val_split_is_what_validation_scores(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    npz = _npz(tmp_path / "d.npz", x_val=rng.normal(size=(7, 4)).astype(np.float32), y_val=np.zeros(7, int))
    task = build_task(DataTaskSpec(data=str(npz)))
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))  # always class 0: right on every val row
    assert task.validate(model, 0.1) == 1.0
    assert len(next(iter(task.train_loader(batch_size=100, holdout=0.1)))[1]) == 40  # val given: no holdout


def test_recipe_task_mapping_errors_name_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("model: m.n:f\ntask:\n  data: d.npz\n  metrc: accuracy\nstages: []\n")
    with pytest.raises(UserError, match=r"line 4: task.metrc: unknown key; did you mean metric\?"):
        load_recipe(path)
    path.write_text("model: m.n:f\ntask:\n  data: d.npz\n  metric: mape\nstages: []\n")
    with pytest.raises(UserError, match=r"line 4: task.metric: .*unknown metric 'mape'"):
        load_recipe(path)
    path.write_text("model: m.n:f\ntask: {data: {train: a.csv, tset: b.csv}}\nstages: []\n")
    with pytest.raises(UserError, match=r"line 2: task.data: .*split files"):
        load_recipe(path)
    path.write_text("model: m.n:f\ntask: {data: d.npz, batch_size: 8}\nstages: []\n")
    assert load_recipe(path).task == {"data": "d.npz", "batch_size": 8}


def test_tasks_by_name_and_factory(tmp_path: Path) -> None:
    import torchslim as ts

    npz = _npz(tmp_path / "d.npz")
    ts.register_task("mine-test", lambda: build_task(DataTaskSpec(data=str(npz), name="mine")), replace=True)
    assert resolve_task("mine-test").name == "mine"
    with pytest.raises(UserError, match="not a torchslim.Task"):
        resolve_task("torchslim.zoo:names")
    with pytest.raises(UserError, match="cannot import 'nowhere'"):
        resolve_task("nowhere:task")
    with pytest.raises(UserError, match="recipe.task: required"):
        resolve_task(None, nn.Linear(2, 2))
