"""Keras 3 interop: `.keras` files read (outputs equal Keras'), saved, loaded, compressed and written back."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

import torchslim as ts  # noqa: E402
from torchslim.cli import main  # noqa: E402
from torchslim.errors import UserError  # noqa: E402
from torchslim.interop.keras import KerasNet, import_keras, write_keras  # noqa: E402

if keras.backend.backend() != "torch":
    pytest.skip("Keras runs with another backend than torch", allow_module_level=True)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:keras.*")
ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
FIXTURE = FIXTURES / "keras_digits.keras"
L = keras.layers


def keras_out(model: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))


def torch_out(net: nn.Module, x: np.ndarray, channels_last: bool = True) -> np.ndarray:
    """Run `net` on Keras-layout input `x` and return its output in Keras layout."""
    t = torch.from_numpy(x)
    if channels_last and t.ndim > 2:
        t = t.movedim(-1, 1)
    with torch.no_grad():
        y = net.eval()(t).numpy()
    return np.moveaxis(y, 1, -1) if channels_last and y.ndim > 2 else y


def roundtrip(model: Any, tmp_path: Path) -> KerasNet:
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    net = import_keras(path)
    assert isinstance(net, KerasNet)
    return net


def randomize_bn(model: Any) -> None:
    """Give every BatchNormalization non-trivial statistics, so a wrong mapping shows."""
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()])


# -- small models: every supported layer, both layouts ---------------------------------------------------
def mlp() -> Any:
    return keras.Sequential(
        [
            keras.Input((20,)),
            L.Dense(16, activation="tanh"),
            L.BatchNormalization(),
            L.Dense(12, activation="gelu", use_bias=False),
            L.Activation("sigmoid"),
            L.Dense(8, activation="silu"),
            L.LeakyReLU(0.1),
            L.Dense(5, activation="softmax"),
        ],
        name="mlp",
    )


def conv1d() -> Any:
    return keras.Sequential(
        [
            keras.Input((30, 3)),
            L.Conv1D(8, 3, padding="same", activation="relu"),
            L.Conv1D(8, 4, strides=2, padding="same", dilation_rate=1),
            L.Conv1D(6, 3, padding="causal", dilation_rate=2, groups=2),
            L.BatchNormalization(),
            L.ReLU(max_value=6.0),
            L.MaxPooling1D(2),
            L.AveragePooling1D(3, strides=1, padding="same"),
            L.GlobalAveragePooling1D(),
            L.Dense(4),
        ],
        name="conv1d",
    )


def conv2d() -> Any:
    return keras.Sequential(
        [
            keras.Input((13, 12, 3)),
            L.Conv2D(8, 3, padding="same", activation="relu"),
            L.Conv2D(8, 4, padding="same"),  # even kernel: uneven padding
            L.Conv2D(12, 3, strides=2, padding="same"),  # stride 2 on 13 rows: uneven padding
            L.BatchNormalization(),
            L.Activation("relu6"),
            L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="elu"),
            L.ZeroPadding2D(((1, 0), (0, 1))),
            L.MaxPooling2D(2),
            L.AveragePooling2D(2, strides=1, padding="same"),
            L.Conv2D(6, 1),
            L.Flatten(),
            L.Dropout(0.5),
            L.Dense(7),
        ],
        name="conv2d",
    )


def conv2d_channels_first() -> Any:
    return keras.Sequential(
        [
            keras.Input((3, 10, 10)),
            L.Conv2D(8, 3, padding="same", activation="relu", data_format="channels_first"),
            L.BatchNormalization(axis=1),
            L.MaxPooling2D(2, data_format="channels_first"),
            L.Conv2D(4, 3, data_format="channels_first"),
            L.Flatten(data_format="channels_first"),  # Keras moves channels last before flattening
            L.Dense(5),
        ],
        name="conv2d_cf",
    )


def global_max() -> Any:
    return keras.Sequential(
        [
            keras.Input((9, 9, 2)),
            L.Conv2D(5, 3, activation="hard_sigmoid"),
            L.GlobalMaxPooling2D(keepdims=True),
            L.Flatten(),
            L.Dense(3),
        ],
        name="global_max",
    )


def same_pooling() -> Any:
    """'same' pooling that pads unevenly (odd sizes, even windows), 2-D and 1-D."""
    inp = keras.Input((7, 5, 3))
    x = L.MaxPooling2D(2, padding="same")(L.Conv2D(4, 1)(inp))
    x = L.AveragePooling2D(2, strides=1, padding="same")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, x, name="same_pool")


def same_pooling_1d() -> Any:
    return keras.Sequential(
        [
            keras.Input((9, 2)),
            L.MaxPooling1D(4, strides=2, padding="same"),
            L.AveragePooling1D(4, strides=3, padding="same"),
            L.Flatten(),
        ],
        name="same_pool_1d",
    )


def flatten_to_output() -> Any:
    """No Dense after the Flatten: it must flatten in Keras' order itself."""
    return keras.Sequential(
        [keras.Input((6, 5, 2)), L.Conv2D(3, 3), L.Flatten(), L.BatchNormalization(), L.Softmax()],
        name="flat_out",
    )


def functional() -> Any:
    inp = keras.Input((8, 8, 3))
    a = L.Conv2D(6, 3, padding="same", activation="relu", name="a")(inp)
    b = L.Conv2D(6, 1, name="b")(inp)
    s = L.Add(name="sum")([a, b])
    c = L.Concatenate(name="cat")([s, L.Multiply()([a, b]), L.Average()([a, b, s])])
    m = L.Maximum()([L.Subtract()([a, b]), L.Minimum()([a, s])])
    d = L.Concatenate(axis=-1)([c, m])
    out = L.Dense(4)(L.Flatten()(L.MaxPooling2D()(d)))
    return keras.Model(inp, out, name="functional")


SMALL: dict[str, Callable[[], Any]] = {
    "mlp": mlp,
    "conv1d": conv1d,
    "conv2d": conv2d,
    "conv2d_channels_first": conv2d_channels_first,
    "global_max": global_max,
    "same_pooling": same_pooling,
    "same_pooling_1d": same_pooling_1d,
    "flatten_to_output": flatten_to_output,
    "functional": functional,
}


def small_case(name: str, tmp_path: Path, batch: int) -> tuple[Any, KerasNet, np.ndarray, bool]:
    """A seeded small Keras model, its import (through ts.save/ts.load), a random batch, its layout."""
    keras.utils.set_random_seed(0)
    model = SMALL[name]()
    randomize_bn(model)
    net = roundtrip(model, tmp_path)
    x = np.random.default_rng(1).normal(size=(batch, *model.input_shape[1:])).astype("float32")
    return model, net, x, name != "conv2d_channels_first"


@pytest.mark.parametrize("name", list(SMALL))
def test_small_models_match_keras(name: str, tmp_path: Path) -> None:
    model, net, x, channels_last = small_case(name, tmp_path, 4)
    assert np.abs(torch_out(net, x, channels_last) - keras_out(model, x)).max() < 1e-4
    written = keras.saving.load_model(write_keras(net, None, tmp_path / "out"), compile=False)
    assert np.abs(keras_out(written, x) - keras_out(model, x)).max() < 1e-4


@pytest.mark.parametrize("name", ["conv1d", "conv2d", "conv2d_channels_first", "functional"])
def test_channel_pruned_small_models_write_back(name: str, tmp_path: Path) -> None:
    model, net, x, channels_last = small_case(name, tmp_path, 8)
    t = torch.from_numpy(x).movedim(-1, 1) if channels_last else torch.from_numpy(x)
    report = ts.prune_(net, ts.ChannelConfig(ratio=0.5), example_inputs=t)
    assert report.units_removed > 0
    written = keras.saving.load_model(write_keras(net, None, tmp_path / "out"), compile=False)
    assert written.count_params() < model.count_params()
    assert np.abs(keras_out(written, x) - torch_out(net, x, channels_last)).max() < 1e-4


def test_flatten_becomes_plain_flatten_with_permuted_dense() -> None:
    net = import_keras(FIXTURE)
    assert type(net.layers["flatten"]) is nn.Flatten  # channel pruning can follow it
    assert net.layers["dense"].in_features == 800


# -- the trained fixture ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference() -> Any:
    return np.load(FIXTURES / "keras_digits_reference.npz")


@pytest.fixture
def digits() -> KerasNet:
    net = import_keras(FIXTURE)
    assert isinstance(net, KerasNet)
    return net


def test_fixture_matches_keras_outputs_and_accuracy(digits: KerasNet, reference: Any) -> None:
    assert np.abs(torch_out(digits, reference["inputs"]) - reference["outputs"]).max() < 1e-4
    accuracy = ts.zoo.get("lenet5-digits").evaluate(digits)
    assert accuracy == pytest.approx(float(reference["accuracy"]), abs=0.003)


def test_save_load_round_trip_needs_no_keras(
    digits: KerasNet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = torch.randn(5, 1, 28, 28)
    ts.save(digits, tmp_path / "m")
    assert (tmp_path / "m" / "keras_model.json").is_file()
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "keras", None)  # any `import keras` now fails
        loaded = ts.load(tmp_path / "m")
    assert torch.equal(loaded(x), digits(x))
    ts.save(loaded, tmp_path / "again")  # the source file travels on
    assert torch.equal(ts.load(tmp_path / "again")(x), digits(x))


def test_write_keras_round_trip(digits: KerasNet, reference: Any, tmp_path: Path) -> None:
    path = write_keras(digits, None, tmp_path)
    assert path == tmp_path / "model.keras" and not [p for p in tmp_path.iterdir() if p != path]
    written = keras.saving.load_model(path, compile=False)
    assert np.abs(keras_out(written, reference["inputs"]) - reference["outputs"]).max() < 1e-4


def _digits_batches(n: int = 2) -> list[Any]:
    return ts.zoo.get("lenet5-digits").calibration_loader(batches=n)


def test_channel_pruned_model_writes_narrower_keras(digits: KerasNet, reference: Any, tmp_path: Path) -> None:
    x = torch.from_numpy(reference["inputs"]).movedim(-1, 1)
    report = ts.prune_(digits, ts.ChannelConfig(ratio=0.5), example_inputs=x[:8], data=_digits_batches())
    assert report.units_removed > 0
    assert (digits.layers["conv2d_1"].out_channels, digits.layers["dense"].in_features) == (16, 400)
    ts.save(digits, tmp_path / "saved")
    pruned = ts.load(tmp_path / "saved")
    assert torch.equal(pruned(x), digits(x))
    written = keras.saving.load_model(write_keras(pruned, None, tmp_path), compile=False)
    widths = {
        layer.name: layer.get_config().get("filters", layer.get_config().get("units"))
        for layer in written.layers
    }
    assert (widths["conv2d"], widths["conv2d_1"], widths["dense"]) == (8, 16, 32)
    assert (
        np.abs(keras_out(written, reference["inputs"]) - torch_out(pruned, reference["inputs"])).max() < 1e-4
    )


def test_unstructured_pruned_model_writes_masked_weights(
    digits: KerasNet, reference: Any, tmp_path: Path
) -> None:
    ts.prune_(digits, ts.SparsityConfig(sparsity=0.8, scope="layer"))
    written = keras.saving.load_model(write_keras(digits, None, tmp_path), compile=False)
    kernel = written.get_layer("dense").get_weights()[0]
    assert 0.75 < float((kernel == 0).mean()) < 0.85
    assert (
        np.abs(keras_out(written, reference["inputs"]) - torch_out(digits, reference["inputs"])).max() < 1e-4
    )


# -- refusals -----------------------------------------------------------------------------------------
def test_unsupported_layer_is_named(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((5, 3)), L.LSTM(4, name="my_lstm"), L.Dense(2)], name="rnn")
    model.save(tmp_path / "rnn.keras")
    with pytest.raises(UserError, match=r"LSTM 'my_lstm' is not supported; supported layers: .*Conv2D"):
        import_keras(tmp_path / "rnn.keras")


def test_unsafe_lambda_is_refused(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((3,)), L.Lambda(lambda t: t * 2)], name="lam")
    model.save(tmp_path / "lam.keras")
    with pytest.raises(UserError, match="cannot read Keras model"):
        import_keras(tmp_path / "lam.keras")


def test_unconvertible_setting_is_refused(tmp_path: Path) -> None:
    model = keras.Sequential(
        [keras.Input((4, 4, 2)), L.Conv2D(3, 1), L.LayerNormalization(axis=1, name="ln")]
    )
    model.save(tmp_path / "map.keras")
    with pytest.raises(UserError, match="LayerNormalization 'ln': only the last axis"):
        import_keras(tmp_path / "map.keras")


def test_quantized_model_is_refused(digits: KerasNet, tmp_path: Path) -> None:
    ts.quantize_(digits, ts.QuantConfig(bits=8, weights="per_channel"))
    with pytest.raises(UserError, match=r"keras format holds float models.*formats: \[onnx\]"):
        write_keras(digits, None, tmp_path)
    assert not (tmp_path / "model.keras").exists()


def test_keras_with_another_backend_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(UserError, match="'jax' backend.*KERAS_BACKEND=torch"):
        import_keras(FIXTURE)


def test_missing_keras_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "keras" else find_spec(n, *a))
    with pytest.raises(UserError, match=r"pip install 'torchslim\[keras\]'"):
        import_keras(FIXTURE)


def test_only_keras_models_are_written(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not imported from a .keras file"):
        write_keras(nn.Linear(2, 2), None, tmp_path)


def test_import_model_dispatches_on_suffix() -> None:
    from torchslim import interop

    assert isinstance(interop.import_model(FIXTURE), KerasNet)


# -- end to end ---------------------------------------------------------------------------------------
def test_compress_shipped_recipe_to_int8_onnx(
    reference: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ort = pytest.importorskip("onnxruntime")
    monkeypatch.chdir(ROOT)  # the shipped recipe names the fixture relative to the repository
    out = tmp_path / "run"
    assert main(["compress", "recipes/keras-digits.yaml", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    baseline = float(reference["accuracy"])
    assert report["stages"][0]["accuracy"] == pytest.approx(baseline, abs=0.003)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    data = ts.zoo.get("lenet5-digits").data
    logits = session.run(None, {session.get_inputs()[0].name: data["x_test"].numpy()})[0]
    accuracy = float((logits.argmax(1) == data["y_test"].numpy()).mean())
    assert accuracy >= baseline - 0.01
    assert report["stages"][-1]["size_bytes"] < report["stages"][0]["size_bytes"] / 4


@pytest.mark.slow
def test_recipe_channel_prune_finetune_writes_keras(reference: Any, tmp_path: Path) -> None:
    recipe = {
        "model": str(FIXTURE),
        "task": "lenet5-digits",
        "stages": [{"prune": {"kind": "channel", "ratio": 0.3}}, {"finetune": {"epochs": 2}}],
        "output": {"formats": ["torchslim", "keras"]},
    }
    ts.run_recipe(recipe, out=tmp_path / "run")
    written = keras.saving.load_model(tmp_path / "run" / "model.keras", compile=False)
    data = ts.zoo.get("lenet5-digits").data
    logits = keras_out(written, data["x_test"].movedim(1, -1).numpy())
    accuracy = float((logits.argmax(1) == data["y_test"].numpy()).mean())
    assert accuracy >= float(reference["accuracy"]) - 0.01
    assert written.get_layer("dense").get_config()["units"] < 64
    assert written.count_params() < 0.6 * keras.saving.load_model(FIXTURE, compile=False).count_params()
