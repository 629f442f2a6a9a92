"""Keras 3 import, layer by layer: each converter on a tiny functional model, outputs equal Keras'."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

import torchslim as ts  # noqa: E402
from torchslim.errors import UserError  # noqa: E402
from torchslim.interop.keras import KerasNet, MultiInputKerasNet, import_keras, write_keras  # noqa: E402

if keras.backend.backend() != "torch":
    pytest.skip("Keras runs with another backend than torch", allow_module_level=True)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:keras.*")
L, ops = keras.layers, keras.ops


def to_torch(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x)
    return t.movedim(-1, 1) if t.ndim > 2 else t


def to_keras(y: torch.Tensor) -> np.ndarray:
    return (y.movedim(1, -1) if y.ndim > 2 else y).detach().numpy()


def randomize(model: Any) -> None:
    """Non-trivial values for every weight (BN statistics, LayerScale, ...): a wrong mapping shows."""
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if hasattr(layer, "layers"):
            randomize(layer)
        elif layer.get_weights() and type(layer).__name__ != "Normalization":
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) for w in layer.get_weights()])


def check(model: Any, tmp_path: Path, batch: int = 3) -> tuple[KerasNet, list[np.ndarray]]:
    """Save, import, compare with Keras on a fresh batch (max abs diff < 1e-4); the net and the inputs."""
    keras.utils.set_random_seed(0)
    randomize(model)
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    net = import_keras(path)
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(batch, *shape[1:])).astype("float32") for shape in _input_shapes(model)]
    expected = np.asarray(ops.convert_to_numpy(model(xs if len(xs) > 1 else xs[0], training=False)))
    with torch.no_grad():
        ours = to_keras(net(*(to_torch(x) for x in xs)))
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() < 1e-4 * max(1.0, float(np.abs(expected).max()))
    return net, xs


def _input_shapes(model: Any) -> list[tuple[int, ...]]:
    shapes = model.input_shape
    return shapes if isinstance(shapes, list) else [shapes]


def functional(inp: Any, out: Any, name: str) -> Any:
    return keras.Model(inp, out, name=name)


# -- convolutions and dense ----------------------------------------------------------------------------
def test_separable_conv2d(tmp_path: Path) -> None:
    inp = keras.Input((9, 9, 4))
    x = L.SeparableConv2D(6, 3, strides=2, padding="same", depth_multiplier=2, activation="relu")(inp)
    x = L.SeparableConv2D(5, (3, 1), use_bias=False, name="sep_b")(x)
    net, _ = check(functional(inp, x, "sep2d"), tmp_path)
    assert net.layers["sep_b"].depthwise.groups == 6 and net.layers["sep_b"].pointwise.out_channels == 5


def test_separable_conv1d(tmp_path: Path) -> None:
    inp = keras.Input((12, 3))
    check(
        functional(inp, L.SeparableConv1D(4, 5, padding="same", depth_multiplier=3)(inp), "sep1d"), tmp_path
    )


def test_depthwise_with_multiplier(tmp_path: Path) -> None:
    inp = keras.Input((7, 7, 3))
    check(functional(inp, L.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(inp), "dw"), tmp_path)


def test_dense_on_feature_maps_is_a_pointwise_conv(tmp_path: Path) -> None:
    inp = keras.Input((5, 5, 4))
    maps = L.Dense(3, activation="gelu", name="on_maps")(L.Conv2D(4, 1)(inp))
    seq = L.Dense(2, name="on_seq")(L.Reshape((25, 4))(inp))
    out = L.Concatenate()([L.Flatten()(maps), L.Flatten()(seq)])
    net, _ = check(functional(inp, out, "dense_maps"), tmp_path)
    assert isinstance(net.layers["on_maps"], torch.nn.Conv2d) and isinstance(
        net.layers["on_seq"], torch.nn.Conv1d
    )


# -- preprocessing and normalization ----------------------------------------------------------------------
def test_rescaling_and_normalization(tmp_path: Path) -> None:
    inp = keras.Input((6, 6, 3))
    x = L.Rescaling(1 / 127.5, offset=-1.0)(inp)
    x = L.Rescaling([0.5, 2.0, 1.5], offset=[0.1, 0.2, 0.3])(x)
    x = L.Normalization(mean=[0.1, 0.2, 0.3], variance=[1.0, 4.0, 0.25])(x)
    x = L.Normalization(axis=-1, mean=0.5, variance=2.0)(x)
    x = L.Normalization(axis=-1, invert=True, mean=[1.0, 2.0, 3.0], variance=[1.0, 4.0, 9.0])(x)
    check(functional(inp, L.Conv2D(2, 1)(x), "preprocess"), tmp_path)


def test_adapted_normalization_weights(tmp_path: Path) -> None:
    norm = L.Normalization(axis=-1)
    norm.adapt(np.random.default_rng(2).normal(3.0, 2.0, size=(64, 4, 4, 3)).astype("float32"))
    inp = keras.Input((4, 4, 3))
    net, _ = check(functional(inp, L.Conv2D(2, 1)(norm(inp)), "adapted"), tmp_path)
    written = keras.saving.load_model(write_keras(net, None, tmp_path / "out"), compile=False)
    np.testing.assert_allclose(written.layers[1].get_weights()[0], norm.get_weights()[0], rtol=1e-6)


def test_layer_norm_on_maps_and_vectors(tmp_path: Path) -> None:
    inp = keras.Input((4, 4, 6))
    x = L.LayerNormalization(epsilon=1e-6)(inp)
    y = L.LayerNormalization(center=False)(L.Dense(5)(L.GlobalAveragePooling2D()(x)))
    check(functional(inp, L.Concatenate()([L.Flatten()(x), y]), "layer_norms"), tmp_path)


# -- shapes -------------------------------------------------------------------------------------------------
def test_reshape_channels_last_maps(tmp_path: Path) -> None:
    inp = keras.Input((4, 6, 3))
    seq = L.Reshape((-1, 6))(inp)  # (12, 6): mixes H, W and C, needs Keras' element order
    back = L.Reshape((4, 6, 3))(L.Conv1D(6, 1)(seq))
    se = L.Reshape((1, 1, 3), name="se_view")(
        L.GlobalAveragePooling2D()(back)
    )  # the squeeze-excite reshape: a plain view
    out = L.Reshape((72,))(L.Multiply()([back, se]))
    net, _ = check(functional(inp, out, "reshapes"), tmp_path)
    assert (
        net.layers["se_view"].before is None and net.layers["se_view"].after is None
    )  # a plain view, which channel pruning follows


def test_broadcasting_merges(tmp_path: Path) -> None:
    inp = keras.Input((8, 8, 16))
    squeezed = L.GlobalAveragePooling2D(keepdims=True)(inp)  # (1, 1, 16)
    vector = L.Dense(16)(L.GlobalAveragePooling2D()(inp))  # (16,)
    x = L.Multiply()([inp, squeezed])
    x = L.Add()([x, vector])  # rank 3 + rank 1: Keras pads the shorter shape after the batch dim
    x = L.Subtract()([x, squeezed])
    x = L.Maximum()([x, L.Average()([squeezed, squeezed])])
    check(functional(inp, x, "broadcast"), tmp_path)


def test_keras_ops_with_constants(tmp_path: Path) -> None:
    inp = keras.Input((5, 5, 4))
    x = L.ReLU(6.0)(inp + 3.0) * (1.0 / 6.0)  # MobileNetV3's hard sigmoid, as keras ops
    y = (2.0 - inp) / 4.0
    z = ops.maximum(inp * x, 0.25) + ops.minimum(y, inp)
    check(functional(inp, z - y, "ops"), tmp_path)


def test_cropping_and_uneven_padding(tmp_path: Path) -> None:
    inp = keras.Input((9, 8, 2))
    x = L.ZeroPadding2D(((0, 1), (2, 1)))(inp)
    x = L.Cropping2D(((1, 2), (0, 3)))(x)
    seq = keras.Input((10, 3))
    y = L.Cropping1D((2, 1))(L.ZeroPadding1D((1, 0))(seq))
    out = L.Concatenate()([L.Flatten()(x), L.Flatten()(y)])
    check(functional([inp, seq], out, "crops"), tmp_path)


# -- graphs -------------------------------------------------------------------------------------------------
def test_nested_models_are_inlined_and_write_back(tmp_path: Path) -> None:
    stem = keras.Sequential(
        [keras.Input((8, 8, 3)), L.Conv2D(8, 3, padding="same"), L.BatchNormalization()], name="stem"
    )
    bi = keras.Input((8, 8, 8))
    block = functional(bi, L.Add()([bi, L.Conv2D(8, 3, padding="same", activation="relu")(bi)]), "block")
    inp = keras.Input((8, 8, 3))
    out = L.Dense(3)(L.GlobalAveragePooling2D()(block(stem(inp))))
    model = functional(inp, out, "nested")
    net, xs = check(model, tmp_path, batch=8)
    ts.prune_(net, ts.ChannelConfig(ratio=0.5), example_inputs=to_torch(xs[0]))
    written = keras.saving.load_model(write_keras(net, None, tmp_path / "out"), compile=False)
    assert written.count_params() < model.count_params()
    with torch.no_grad():
        ours = to_keras(net(to_torch(xs[0])))
    assert np.abs(np.asarray(ops.convert_to_numpy(written(xs[0]))) - ours).max() < 1e-4


def test_multi_input_model_saves_loads_and_writes_back(tmp_path: Path) -> None:
    image, side = keras.Input((6, 6, 2), name="image"), keras.Input((4,), name="side")
    feat = L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(image))
    model = functional([image, side], L.Dense(2)(L.Concatenate()([feat, L.Dense(3)(side)])), "two_inputs")
    net, xs = check(model, tmp_path)
    assert isinstance(net, MultiInputKerasNet)
    ts.save(net, tmp_path / "saved")
    loaded = ts.load(tmp_path / "saved")
    args = [to_torch(x) for x in xs]
    with torch.no_grad():
        assert torch.allclose(loaded(*args), net(*args))
    written = keras.saving.load_model(write_keras(net, None, tmp_path / "out"), compile=False)
    assert np.abs(np.asarray(ops.convert_to_numpy(written(xs))) - to_keras(net(*args))).max() < 1e-4


def test_applications_layers(tmp_path: Path) -> None:
    from keras.src.applications.convnext import LayerScale
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    inp = keras.Input((4, 4, 6))
    x = LayerScale(1e-6, 6)(L.Conv2D(6, 1)(inp))
    check(functional(inp, CustomScaleLayer(0.17)([inp, x]), "app_layers"), tmp_path)


def test_every_unsupported_layer_is_named_at_once(tmp_path: Path) -> None:
    inp = keras.Input((5, 3))
    a, b = L.LSTM(4, name="lstm_a")(inp), L.GRU(4, name="gru_b")(inp)
    model = functional(inp, L.Concatenate()([a, b, L.SimpleRNN(2, name="rnn_c")(inp)]), "rnns")
    model.save(tmp_path / "rnns.keras")
    with pytest.raises(
        UserError, match=r"layers LSTM 'lstm_a', GRU 'gru_b', SimpleRNN 'rnn_c' are not supported"
    ):
        import_keras(tmp_path / "rnns.keras")


def test_every_unconvertible_setting_is_named_at_once(tmp_path: Path) -> None:
    inp = keras.Input((4, 4, 3))
    a = L.LayerNormalization(rms_scaling=True, name="rms_a")(inp)
    b = L.LayerNormalization(axis=1, name="axis_b")(inp)
    model = functional(inp, L.Add()([a, b]), "bad_settings")
    model.save(tmp_path / "bad.keras")
    with pytest.raises(UserError, match=r"2 Keras layers cannot be converted: .*'rms_a'.*; .*'axis_b'"):
        import_keras(tmp_path / "bad.keras")


@pytest.mark.parametrize("name", ["hard_sigmoid", "hard_silu", "gelu", "silu", "mish", "selu", "softsign"])
def test_activations(name: str, tmp_path: Path) -> None:
    inp = keras.Input((10,))
    check(functional(inp, L.Activation(name)(L.Dense(10)(inp)), f"act_{name}"), tmp_path)


# -- keras.applications models (benchmarks/bench_keras_import.py runs 15 of them) ------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["MobileNetV3Small", "EfficientNetB0", "ConvNeXtTiny"])
def test_applications_model_matches_keras(name: str, tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(32, 32, 3), classifier_activation=None
    )
    for layer in model.layers:  # ConvNeXt's LayerScales start at 1e-6: the blocks would not count
        if type(layer).__name__ == "LayerScale":
            layer.set_weights([np.ones_like(w) for w in layer.get_weights()])
    path = tmp_path / f"{name}.keras"
    model.save(path)
    net = import_keras(path)
    calib = torch.from_numpy(np.random.default_rng(2).normal(size=(8, 3, 32, 32)).astype("float32"))
    norms = {k: m for k, m in net.layers.items() if isinstance(m, torch.nn.BatchNorm2d)}
    for bn in norms.values():  # statistics of a real batch, so the logits are of order 1, not 1e-19
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    with torch.no_grad():
        net(calib)
    for layer in model.layers:
        if layer.name in norms:
            bn = norms[layer.name]
            layer.set_weights([*layer.get_weights()[:-2], bn.running_mean.numpy(), bn.running_var.numpy()])
    model.save(path)
    net = import_keras(path)
    x = calib.permute(0, 2, 3, 1).numpy()  # in the calibrated distribution: the logits are well scaled
    expected = np.asarray(ops.convert_to_numpy(model(x, training=False)))
    with torch.no_grad():
        ours = net(to_torch(x)).numpy()
    assert float(np.abs(expected).max()) > 0.1
    assert np.abs(ours - expected).max() < 1e-4 * max(1.0, float(np.abs(expected).max()))


def _padding_pooling_bn(inp: Any) -> Any:
    x = L.Conv2D(4, 3, strides=2, padding="same")(inp)  # 8 px, stride 2: 'same' pads (0, 1)
    x = L.BatchNormalization(epsilon=1.001e-5)(x)
    x = L.AveragePooling2D(3, strides=1, padding="same")(x)  # the border averages real elements only
    x = L.MaxPooling2D(3, strides=2, padding="same")(L.ZeroPadding2D(((1, 0), (0, 1)))(x))
    x = L.DepthwiseConv2D(3, strides=2, padding="same")(x)
    return L.Dense(5)(L.GlobalAveragePooling2D()(x))


def test_conversion_is_exact_in_float64(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Float64 shows a wrong epsilon, padding or pooling count that float32 rounding would hide."""
    from keras.src import backend
    from keras.src.backend.common import dtypes

    inp = L.Input((8, 8, 3))
    model = functional(inp, _padding_pooling_bn(inp), "exact")
    net, _ = check(model, tmp_path)
    real = dtypes.result_type

    def promote(*types: Any) -> Any:  # Keras promotes float64 with float32 to float32 (BN, mean)
        return "float64" if any("float64" in str(t) for t in types) else real(*types)

    monkeypatch.setattr(dtypes, "result_type", promote)
    monkeypatch.setattr(backend, "result_type", promote)
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        inp = L.Input((8, 8, 3))
        copy = functional(inp, _padding_pooling_bn(inp), "exact64")
    finally:
        keras.config.set_dtype_policy(policy)
    copy.set_weights(model.get_weights())
    # float32 values: Keras' Input casts to float32
    x = np.random.default_rng(1).standard_normal((4, 8, 8, 3)).astype(np.float32).astype(np.float64)
    expected = np.asarray(keras.ops.convert_to_numpy(copy(x, training=False)))
    with torch.no_grad():
        ours = to_keras(net.double()(to_torch(x)))
    assert ours.dtype == expected.dtype == np.float64
    assert np.abs(ours - expected).max() < 1e-12 * np.abs(expected).max()
