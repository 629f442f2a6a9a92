"""Probe: where do the torch module and Keras part, float32 rounding or the conversion? For one
`bench_keras_import` model (same randomization and BN calibration), the logits of Keras and of the
torch module, each in float32 and in float64, and the first layers whose float64 outputs differ by more
than 1e-9 of their largest value (none: the conversion is exact, and the float32 difference is rounding
that both frameworks make, as `keras32-keras64` shows).

    OMP_NUM_THREADS=1 PYTHONPATH=src:. python benchmarks/probe_keras_float64.py InceptionV3 75 32
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.bench_keras_import import _all_layers, _apps, _calibrate, _float64_keras, _randomize


def _layer_outputs(net: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return net.layer_outputs((x,))


def main(name: str, size: int, images: int) -> None:
    import keras

    from torchslim.interop.keras import import_keras
    from torchslim.interop.keras_graph import make_plan

    keras.utils.set_random_seed(0)
    build = _apps()[name][0]
    kw = {} if name == "NASNetMobile" else {"weights": None, "classifier_activation": None}
    rng = np.random.default_rng(0)
    model = build(input_shape=(size, size, 3), **kw)
    _randomize(model, rng)
    path = Path(tempfile.mkdtemp()) / "model.keras"
    model.save(path)
    calib = torch.from_numpy(rng.standard_normal((images, 3, size, size)).astype(np.float32))
    _calibrate(model, import_keras(path), calib)
    model.save(path)
    net = import_keras(path)
    x = calib.permute(0, 2, 3, 1).numpy()
    k32 = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))
    with torch.no_grad():
        o32 = net(calib).numpy()
    o64 = _layer_outputs(net.double(), calib.double())
    top = {layer.name: i for i, layer in enumerate(model.layers)}  # outer layers only (no nested ones)
    nodes = [n for n in make_plan(net.keras_config).nodes if n.cls != "InputLayer" and n.name in top]
    with _float64_keras():
        copy = build(input_shape=(size, size, 3), **kw)
        copy.set_weights(model.get_weights())
        probe = keras.Model(copy.inputs, [copy.layers[top[n.name]].output for n in nodes])
        outs = probe(x.astype(np.float64), training=False)
    k64 = np.asarray(keras.ops.convert_to_numpy(outs[-1]))
    ours64 = o64[nodes[-1].key].numpy()

    def diff(a: np.ndarray, b: np.ndarray) -> str:
        return f"{np.abs(a - b).max():.3e}"

    layers, scale = len(_all_layers(model)), float(np.abs(k64).max())
    print(f"{name} {size} px, {images} images, {layers} layers, max |logit| {scale:.4f}")
    print(f"keras32-keras64 {diff(k32, k64)}  ours32-ours64 {diff(o32, ours64)}  "
          f"ours64-keras64 {diff(ours64, k64)}  ours32-keras32 {diff(o32, k32)}")  # fmt: skip
    shown = 0
    for node, out in zip(nodes, outs, strict=True):
        theirs, ours = np.asarray(keras.ops.convert_to_numpy(out)), o64[node.key].numpy()
        ours = np.moveaxis(ours, 1, -1) if ours.ndim > 2 else ours
        rel = float(np.abs(ours - theirs).max() / max(1e-30, float(np.abs(theirs).max())))
        if rel > 1e-9 and shown < 5:
            print(f"  float64 outputs part at {node.cls} {node.name!r}: {rel:.2e} of the largest")
            shown += 1
    print(f"  {len(nodes)} layers compared in float64, {shown or 'none'} part{'s' * (shown != 1)}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 32)
