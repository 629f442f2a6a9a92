"""Make `tests/fixtures/keras_digits.keras` and `tests/fixtures/keras_digits_reference.npz`.

A small channels_last Keras 3 CNN trained on the `lenet5-digits` task data (the same split and
normalisation torchslim evaluates on), with the torch backend, in the project venv:

    KERAS_BACKEND=torch .venv/bin/python scripts/make_keras_fixture.py

Conv2D(16,3,relu) -> MaxPooling2D -> Conv2D(32,3) -> BatchNormalization -> ReLU -> MaxPooling2D ->
Flatten -> Dense(64,relu) -> Dropout(0.3) -> Dense(10) (logits); Adam 1e-3, batch 32, seed 0.

The reference file holds `inputs` (the first 64 test images, NHWC float32), `outputs` (Keras' logits
for them) and `accuracy` (0-d, Keras' accuracy on all 360 test images).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np

import torchslim as ts

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
EPOCHS = 8


def model() -> keras.Model:
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(16, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dropout(0.3),
            layers.Dense(10),
        ],
        name="keras_digits",
    )


def main() -> int:
    if keras.backend.backend() != "torch":
        print("run with KERAS_BACKEND=torch", file=sys.stderr)
        return 1
    data = ts.zoo.get("lenet5-digits").data
    x_train, x_test = (data[k].permute(0, 2, 3, 1).numpy() for k in ("x_train", "x_test"))
    y_train, y_test = data["y_train"].numpy(), data["y_test"].numpy()
    keras.utils.set_random_seed(0)
    net = model()
    net.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    net.fit(x_train, y_train, batch_size=32, epochs=EPOCHS, verbose=2)
    logits = keras.ops.convert_to_numpy(net.predict(x_test, verbose=0))
    accuracy = float((logits.argmax(1) == y_test).mean())
    print(f"test accuracy {accuracy:.4f}")
    if accuracy < 0.97:
        print("accuracy below 0.97: not writing the fixture", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    plain = keras.Sequential.from_config(net.get_config())  # uncompiled: the file keeps no optimizer state
    plain.set_weights(net.get_weights())
    plain.save(OUT / "keras_digits.keras")
    reloaded = keras.saving.load_model(OUT / "keras_digits.keras", compile=False)
    inputs = x_test[:64]
    outputs = keras.ops.convert_to_numpy(reloaded(inputs, training=False))
    np.savez(OUT / "keras_digits_reference.npz", inputs=inputs, outputs=outputs, accuracy=np.array(accuracy))
    print(f"wrote {OUT / 'keras_digits.keras'} ({(OUT / 'keras_digits.keras').stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
