import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim import io
from torchslim.errors import ManifestError, UserError

TESTS = Path(__file__).parent


def _factory_model() -> nn.Module:
    sys.path.insert(0, str(TESTS))
    from conftest import make_digits_mlp

    return make_digits_mlp(16)


def test_save_load_roundtrip_in_a_new_process(tmp_path: Path) -> None:
    model = _factory_model()
    ts.save(model, tmp_path / "m", factory="conftest:make_digits_mlp", kwargs={"hidden": 16})
    x = torch.randn(5, 64)
    torch.save(x, tmp_path / "x.pt")  # test-owned file, trusted
    expected = model(x)
    code = (
        "import sys, torch, torchslim as ts; sys.path.insert(0, sys.argv[1]);"
        "m = ts.load(sys.argv[2], trust_code=True); x = torch.load(sys.argv[3]);"
        "torch.save(m(x), sys.argv[4])"
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(TESTS),
            str(tmp_path / "m"),
            str(tmp_path / "x.pt"),
            str(tmp_path / "y.pt"),
        ],
        check=True,
    )
    assert torch.equal(torch.load(tmp_path / "y.pt"), expected)


def test_directory_holds_manifest_and_safetensors_only(tmp_path: Path) -> None:
    ts.save(_factory_model(), tmp_path / "m", factory="conftest:make_digits_mlp", kwargs={"hidden": 16})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["manifest.json", "model.safetensors"]
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["source"] == {
        "kind": "factory",
        "target": "conftest:make_digits_mlp",
        "kwargs": {"hidden": 16},
    }
    assert manifest["format"] == "torchslim" and manifest["transforms"] == []


def test_zoo_models_remember_their_source(tmp_path: Path, tiny_task) -> None:
    model = tiny_task.build(width=0.5)
    ts.save(model, tmp_path / "m")
    loaded = ts.load(tmp_path / "m")
    assert loaded.fc1.out_features == 16
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )


def test_model_without_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no recorded source"):
        ts.save(nn.Linear(2, 2), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_tied_weights_are_stored_once(tmp_path: Path) -> None:
    model = _factory_model()
    model.fc2.weight = nn.Parameter(torch.zeros(10, 16))
    shared = nn.Sequential(model, nn.Linear(16, 10))
    shared[1].weight = model.fc2.weight
    io.set_source(shared, "factory", target="conftest:make_digits_mlp")
    stored, encodings = io.encode_state(shared.state_dict())
    assert encodings["1.weight"] == {"codec": "alias", "of": "0.fc2.weight"}
    assert "1.weight" not in stored
    assert torch.equal(io.decode_state(stored, encodings)["1.weight"], shared[1].weight.detach())


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return ts.save(
        _factory_model(), tmp_path / "m", factory="conftest:make_digits_mlp", kwargs={"hidden": 16}
    )


def test_corrupted_manifest_is_a_clear_error(saved: Path) -> None:
    (saved / "manifest.json").write_text("{ not json")
    with pytest.raises(ManifestError, match="corrupted manifest"):
        ts.load(saved, trust_code=True)


def test_missing_weights_file_is_a_clear_error(saved: Path) -> None:
    (saved / "model.safetensors").unlink()
    with pytest.raises(ManifestError, match="weights file 'model.safetensors'.*missing"):
        ts.load(saved, trust_code=True)


def test_truncated_weights_file_is_a_clear_error(saved: Path) -> None:
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ManifestError, match="model.safetensors: corrupted"):
        ts.load(saved, trust_code=True)


def _edit(saved: Path, **changes: object) -> None:
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest.update(changes)
    (saved / "manifest.json").write_text(json.dumps(manifest))


def test_unknown_transform_is_a_clear_error(saved: Path) -> None:
    _edit(saved, transforms=[{"name": "mystery_surgery", "params": {}}])
    with pytest.raises(ManifestError, match="unknown transform 'mystery_surgery'"):
        ts.load(saved, trust_code=True)


def test_unknown_source_kind_is_a_clear_error(saved: Path) -> None:
    _edit(saved, source={"kind": "pickle"})
    with pytest.raises(ManifestError, match="unknown model source 'pickle'"):
        ts.load(saved, trust_code=True)


def test_newer_format_is_refused(saved: Path) -> None:
    _edit(saved, format_version=99)
    with pytest.raises(ManifestError, match="format_version 99"):
        ts.load(saved, trust_code=True)


def test_weights_that_do_not_fit_name_the_keys(saved: Path) -> None:
    _edit(saved, source={"kind": "factory", "target": "conftest:make_digits_mlp", "kwargs": {"hidden": 8}})
    with pytest.raises((ManifestError, RuntimeError), match="fc1"):
        ts.load(saved, trust_code=True)


def test_missing_directory_and_bad_factory(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such model directory"):
        ts.load(tmp_path / "nothing")
    with pytest.raises(UserError, match="package.module:function"):
        ts.save(_factory_model(), tmp_path / "m", factory="no_colon")
    with pytest.raises(UserError, match="cannot import"):
        ts.save(_factory_model(), tmp_path / "m", factory="not_a_module_xyz:f")


def test_save_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a torchslim model directory"):
        ts.save(_factory_model(), tmp_path / "m", factory="conftest:make_digits_mlp", kwargs={"hidden": 16})
    assert (tmp_path / "m" / "precious.txt").read_text() == "keep me"


def test_save_replaces_a_previous_save_atomically(saved: Path) -> None:
    model = _factory_model()
    with torch.no_grad():
        model.fc1.weight.fill_(1.0)
    ts.save(model, saved, factory="conftest:make_digits_mlp", kwargs={"hidden": 16})
    assert torch.all(ts.load(saved, trust_code=True).fc1.weight == 1.0)
    assert [p.name for p in saved.parent.iterdir()] == ["m"]


def test_loading_never_unpickles(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", refuse)
    ts.load(saved, trust_code=True)


def test_sparse_quantized_tensors_are_entropy_coded_and_restored_exactly() -> None:
    torch.manual_seed(0)
    mask = torch.rand(500, 800) < 0.08
    q = (torch.randint(-7, 8, (500, 800)) * mask).to(torch.int8)
    stored, encodings = io.encode_state({"w": q, "dense": torch.randn(10, 10)})
    assert "zstd" in encodings["w"]
    assert sum(t.numel() * t.element_size() for t in stored.values()) < q.numel() * 0.15
    decoded = io.decode_state(stored, encodings)
    assert torch.equal(decoded["w"], q) and decoded["w"].dtype == torch.int8
