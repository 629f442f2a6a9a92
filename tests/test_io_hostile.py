"""Hostile saved-model directories: every one is refused with a ManifestError (or loads correctly),
no code a file names runs untrusted, nothing huge is allocated, bit flips and links are caught."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import torchslim as ts
from torchslim import cli, io, modeldir, storage
from torchslim.errors import ManifestError, UserError

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
import hostile_models as h  # noqa: E402


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return h.compressed_tiny(tmp_path_factory.mktemp("hostile") / "m")


@pytest.fixture
def saved(original: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(original, tmp_path / "m"))


# -- 1. no code named by a file runs unless trusted ------------------------------------------------
def _factory_dir(tmp_path: Path, target: str, kwargs: dict[str, Any]) -> Path:
    saved = h.compressed_tiny(tmp_path / "f")
    h.edit(saved, source={"kind": "factory", "target": target, "kwargs": kwargs}, transforms=[])
    return saved


@pytest.mark.parametrize(
    ("target", "kwargs"),
    [
        ("os:system", {"command": "touch {marker}"}),
        ("subprocess:Popen", {"args": ["touch", "{marker}"]}),
        ("runpy:run_path", {"path_name": "{marker}"}),
        ("shutil:rmtree", {"path": "{marker}"}),
        ("hostile_models:write_marker", {"path": "{marker}"}),
    ],
)
def test_a_factory_named_by_a_file_never_runs_untrusted(tmp_path: Path, target: str, kwargs: dict) -> None:
    marker = tmp_path / "marker"
    if target in ("runpy:run_path", "shutil:rmtree"):  # would run or delete it: make it a target
        marker.mkdir() if target == "shutil:rmtree" else marker.write_text("open('ran', 'w')")
    text = json.loads(json.dumps(kwargs).replace("{marker}", str(marker)))
    saved = _factory_dir(tmp_path, target, text)
    before = marker.exists()
    with pytest.raises(ManifestError, match=rf"factory '{target}'.*trust_code=True") as err:
        ts.load(saved)
    assert "register_model" in str(err.value)
    assert marker.exists() == before and not (tmp_path / "ran").exists()
    assert cli.main(["inspect", str(saved), "--quiet"]) == 2
    with pytest.raises(ManifestError, match="trust_code"):
        ts.run_recipe({"model": str(saved), "task": "tiny-digits", "stages": []}, tmp_path / "out")
    assert marker.exists() == before and not (tmp_path / "out").exists()


def test_trusted_factories_run_by_flag_or_prefix(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    saved = _factory_dir(tmp_path, "hostile_models:write_marker", {"path": str(marker)})
    with pytest.raises(ManifestError, match="trust_code"):
        ts.load(saved, trust_code=["hostile"])  # a prefix is matched on whole module names
    assert not marker.exists()
    with pytest.raises(UserError, match="returned NoneType, not a torch.nn.Module"):
        ts.load(saved, trust_code=["hostile_models"])
    assert marker.read_text() == "ran"
    marker.unlink()
    assert cli.main(["inspect", str(saved), "--quiet", "--trust-code"]) == 2  # ran, then not a module
    assert marker.exists()


def test_registered_models_load_without_trust(tmp_path: Path) -> None:
    from conftest import make_digits_mlp

    ts.register_model("hostile-test-mlp", make_digits_mlp, replace=True)
    model = make_digits_mlp(8)
    ts.save(model, tmp_path / "m", factory="hostile-test-mlp", kwargs={"hidden": 8})
    assert h.manifest(tmp_path / "m")["source"] == {
        "kind": "registered",
        "name": "hostile-test-mlp",
        "kwargs": {"hidden": 8},
    }
    x = torch.randn(3, 64)
    assert torch.equal(ts.load(tmp_path / "m")(x), model(x))
    h.edit(tmp_path / "m", source={"kind": "registered", "name": "os.system"})
    with pytest.raises(ManifestError, match="unknown registered model 'os.system'"):
        ts.load(tmp_path / "m")


def test_a_recipe_may_name_its_own_factory_and_reload_its_stages(tmp_path: Path) -> None:
    recipe = {"model": "conftest:make_digits_mlp", "task": "tiny-digits", "stages": []}
    report = ts.run_recipe(recipe, tmp_path / "out")
    assert report["stages"][0]["params"] > 0
    with pytest.raises(ManifestError, match="trust_code"):  # outside the run, the output is a file again
        ts.load(tmp_path / "out" / "model")
    assert ts.load(tmp_path / "out" / "model", trust_code=["conftest"]) is not None


# -- 2. every field validated, naming the field ----------------------------------------------------
def _mutate(saved: Path, path: list[Any], value: Any) -> None:
    data = h.manifest(saved)
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    h.write_manifest(saved, data)


DELETE = object()
FC1 = "fc1.qweight"
BITS = "fc2.parametrizations.weight.original"
CASES = [
    (["encodings", BITS, "codec"], DELETE, rf"encodings.{BITS}.codec: Field required"),
    (["encodings", BITS, "parts"], DELETE, "needs parts"),
    (["encodings", BITS, "dtype"], DELETE, "needs dtype"),
    (["encodings", BITS, "dtype"], "Tensor", rf"encodings.{BITS}.dtype: Input should be"),
    (["encodings", BITS, "shape"], [10, -16], r"shape\[1\]: Input should be greater than or equal to 0"),
    (["encodings", BITS, "shape"], "10x16", "shape: Input should be a valid list"),
    (["encodings", BITS, "codec"], "pickle", "unknown tensor encoding 'pickle'"),
    (["encodings", FC1, "zstd", FC1, "dtype"], 5, "zstd.fc1.qweight.dtype"),
    (["source", "kwargs"], "wide", "source.kwargs: Input should be a valid dictionary"),
    (["source", "kwargs", "width"], 1e4, "source.kwargs.width: Input should be less than or equal to 4"),
    (["source", "kwargs", "width"], "1", "source.kwargs.width"),
    (["source", "name"], 7, "source.name: Input should be a valid string"),
    (["source", "name"], "no-such-task", "unknown zoo task 'no-such-task'"),
    (["transforms", 0, "params", "shapes", "fc1", "weight"], [10**12, 64], r"shapes.fc1.weight\[0\]"),
    (["transforms", 0, "params", "shapes", "fc1", "weight"], [-5, 64], r"shapes.fc1.weight\[0\]"),
    (["transforms", 0, "params", "shapes", "fc1", "weight"], [9, 64], "'fc1.*shape"),
    (["transforms", 0, "params", "shapes", "fc1", "forward"], [8], "no parameter or buffer 'forward'"),
    (["transforms", 0, "params", "attrs", "fc1", "forward"], 1, "Linear.forward is not a plain size"),
    (["transforms", 0, "params", "attrs", "fc1", "_parameters"], 1, r"attrs.fc1._parameters.\[key\]"),
    (["transforms", 0, "params", "attrs", "fc1", "out_features"], "8", "attrs.fc1.out_features"),
    (["transforms", 0, "params", "attrs", "__class__"], {"x": 1}, "no layer '__class__'"),
    (["transforms", 0, "params", "shapes", "fc1.weight.__class__"], {"x": [1]}, "no layer"),
    (
        ["transforms", 1, "params", "layers", "fc1.weight", "soft"],
        "yes",
        "soft: Input should be a valid boolean",
    ),
    (["transforms", 1, "params", "layers"], ["fc1.weight"], "layers: Input should be a valid dictionary"),
    (["transforms", 1, "params", "layers", "fc1.forward"], {}, "no parameter or buffer 'forward'"),
    (["transforms", 2, "params", "layers", "fc1", "bits"], 40, r"layers.fc1.bits: Input should be less"),
    (["transforms", 2, "params", "layers", "fc1", "granularity"], "per_atom", "granularity"),
    (["transforms", 2, "params", "layers", "fc1", "folded_bn"], "act.__init__", "no layer .act.__init__."),
    (["transforms", 2, "params", "layers", "os.system"], {}, "layers.os.system.bits: Field required"),
    (["transforms", 2, "name"], "quantize_pickle", "unknown transform 'quantize_pickle'"),
    (["transforms", 2], "quantize", r"transforms\[2\]: Input should be a valid dictionary"),
    (["weights"], "../outside.safetensors", "weights: String should match"),
    (["weights"], "/etc/passwd", "weights: String should match"),
    (["tensor_bytes"], 10**15, "tensor_bytes: Input should be less"),
    (["files"], DELETE, "format_version 2 needs files"),
    (["format_version"], True, "format_version True is not readable"),
    # found by the long fuzz (tests/test_io_fuzz.py, -m slow) before these were handled:
    (["source", "kwargs", "widt3h"], 1, "source cannot be rebuilt as recorded.*widt3h"),
    (["source", "kind"], ["zoo"], "source.kind: unknown model source"),
    (["transforms", 0, "params", "shapes", "fc1", "weight"], [], "fc1.weight cannot take shape"),
]


@pytest.mark.parametrize(("path", "value", "message"), CASES, ids=lambda v: str(v)[:40])
def test_wrong_manifest_fields_are_named(saved: Path, path: list[Any], value: Any, message: str) -> None:
    _mutate(saved, path, value)
    with pytest.raises(ManifestError, match=message):
        ts.load(saved)


def test_deep_nesting_is_refused_before_parsing(saved: Path) -> None:
    data = h.manifest(saved)
    text = json.dumps(data)[:-1] + ', "deep": ' + "[" * 200_000 + "]" * 200_000 + "}"
    (saved / "manifest.json").write_text(text)
    with pytest.raises(ManifestError, match="nested deeper than 32 levels"):
        ts.load(saved)
    assert h.manifest  # the stdlib parser itself would raise RecursionError on this text
    with pytest.raises(RecursionError):
        json.loads(text)


@pytest.mark.parametrize("text", [b"", b"\xff\xfe\x00garbage", b"[]", b'{"format": "torchslim"}', b"1e999"])
def test_garbage_manifests_are_clear_errors(saved: Path, text: bytes) -> None:
    (saved / "manifest.json").write_bytes(text)
    with pytest.raises(ManifestError, match="manifest|format"):
        ts.load(saved)


# -- 3. bounded work ----------------------------------------------------------------------------
def _never_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("decoding started")

    monkeypatch.setattr(modeldir, "decode_state", refuse)


def _claim(saved: Path, meta: list[Any], shape: list[int], itemsize: int, consistent: bool = True) -> None:
    """Make the manifest claim `shape` for the encoding metadata at `meta` (and, if `consistent`,
    adjust tensor_bytes to match, so that only the later checks can catch it)."""
    data = h.manifest(saved)
    node = data["encodings"]
    for key in meta:
        node = node[key]
    old = node["shape"]
    node["shape"] = shape
    if consistent:
        data["tensor_bytes"] += (math.prod(shape) - math.prod(old)) * itemsize
    h.write_manifest(saved, data)


def test_a_small_zstd_part_claiming_a_gibibyte_is_refused_before_decoding(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _never_decode(monkeypatch)
    _claim(saved, [FC1, "zstd", FC1], [1 << 30], 1, consistent=False)
    with pytest.raises(ManifestError, match="corrupted: the encodings declare 10737"):
        ts.load(saved)
    data = h.manifest(saved)
    data["tensor_bytes"] += (1 << 30) - 256  # consistent totals: the ratio to the file still refuses
    h.write_manifest(saved, data)
    with pytest.raises(ManifestError, match="more than 4096x.*refusing to allocate"):
        ts.load(saved)


def test_a_zstd_frame_must_declare_the_size_the_manifest_claims(saved: Path) -> None:
    _claim(saved, [FC1, "zstd", FC1], [1024], 1)
    with pytest.raises(ManifestError, match="zstd frame declares 256 bytes, the manifest 1024"):
        ts.load(saved)


def test_huge_codec_shapes_are_refused_before_decoding(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _claim(saved, [BITS], [50000, 10000], 4)
    _never_decode(monkeypatch)
    with pytest.raises(ManifestError, match="refusing to allocate"):
        ts.load(saved)


def test_codec_parts_must_fit_the_declared_shape(saved: Path) -> None:
    _claim(saved, [BITS], [20, 8], 4)  # twice the elements the stored bits describe
    with pytest.raises(ManifestError, match="corrupted: part '::bits'"):
        ts.load(saved)


def test_zoo_kwargs_are_probed_before_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(io, "MAX_BUILD_ELEMENTS", 1000)
    saved = h.compressed_tiny(tmp_path / "m")
    with pytest.raises(ManifestError, match="more than the 1000 allowed"):
        ts.load(saved)


def test_memory_errors_while_loading_are_clear(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def exhausted(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(modeldir, "load_file", exhausted)
    with pytest.raises(ManifestError, match="out of memory while loading"):
        ts.load(saved)


# -- 4. integrity -------------------------------------------------------------------------------
def test_every_single_bit_flip_in_the_weights_is_detected(saved: Path) -> None:
    weights = saved / "model.safetensors"
    data = weights.read_bytes()
    offsets = range(0, len(data), max(1, len(data) // 60))
    for offset in offsets:
        flipped = bytearray(data)
        flipped[offset] ^= 1 << (offset % 8)
        weights.write_bytes(bytes(flipped))
        with pytest.raises(ManifestError, match="model.safetensors: corrupted"):
            ts.load(saved)
    weights.write_bytes(data)
    assert ts.load(saved) is not None and len(offsets) >= 60


def test_manifests_record_checksums_and_format_1_still_loads(saved: Path, original: Path) -> None:
    data = h.manifest(saved)
    size = (saved / "model.safetensors").stat().st_size
    assert data["format_version"] == 2 and data["files"]["model.safetensors"]["bytes"] == size
    old = {k: v for k, v in data.items() if k not in ("files", "tensor_bytes")}
    h.write_manifest(saved, {**old, "format_version": 1})
    x = torch.randn(4, 64)
    assert torch.equal(ts.load(saved)(x), ts.load(original)(x))


# -- 5. files stay inside the directory ----------------------------------------------------------
@pytest.mark.parametrize("name", ["model.safetensors", "manifest.json"])
def test_links_out_of_the_directory_are_refused(saved: Path, tmp_path: Path, name: str) -> None:
    outside = tmp_path / f"outside-{name}"
    shutil.move(saved / name, outside)
    os.symlink(outside, saved / name)
    with pytest.raises(ManifestError, match="outside the model directory"):
        ts.load(saved)


def test_links_inside_the_directory_are_fine(saved: Path) -> None:
    data = h.manifest(saved)
    shutil.move(saved / "model.safetensors", saved / "real.safetensors")
    os.symlink("real.safetensors", saved / "model.safetensors")
    assert ts.load(saved) is not None and data == h.manifest(saved)


def test_weight_files_get_the_manifests_permissions(saved: Path) -> None:
    modes = {p.name: p.stat().st_mode & 0o777 for p in saved.iterdir()}
    assert modes["model.safetensors"] == modes["manifest.json"] == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_decode_state_accepts_plain_dicts_as_written(original: Path) -> None:
    encodings = copy.deepcopy(h.manifest(original)["encodings"])
    from safetensors.torch import load_file

    state = storage.decode_state(load_file(str(original / "model.safetensors")), encodings)
    assert state[BITS].shape == (10, 8) and int(state[BITS].count_nonzero()) <= 24
