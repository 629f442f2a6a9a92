"""Silero VAD rebuilt from the wheel's files: equal to the shipped TorchScript model on real speech."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchslim.zoo.speech import silero, vad
from torchslim.zoo.speech.espeak import synthesize


@pytest.fixture(scope="module")
def speech() -> torch.Tensor:
    """Silence, an eSpeak NG sentence, silence, with faint noise: 1.5 s of 16 kHz audio, 2 signals."""
    words = synthesize("turn left at the corner", "en", seed=3)[:16000]
    rng = np.random.default_rng(0)
    audio = np.zeros((2, 24000), np.float32)
    audio[0, 4000 : 4000 + len(words)] = words
    audio[1, 2000 : 2000 + len(words)] = 0.5 * words
    return torch.from_numpy(audio + 0.003 * rng.standard_normal(audio.shape).astype(np.float32))


def test_rebuild_equals_torchscript(speech: torch.Tensor) -> None:
    model = silero.load_pretrained(silero.SileroVAD())
    ours, ref = silero.stream(model, speech), silero.reference_stream(speech)
    assert ours.shape == (2, 24000 // 512)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert ref.max() > 0.9 and ref[:, :4].max() < 0.2  # speech found, leading silence not


def test_safetensors_weights_differ_from_shipped_models(speech: torch.Tensor) -> None:
    """The wheel's safetensors file loads into the same architecture but is not the shipped model."""
    model = silero.load_pretrained(silero.SileroVAD(), source="safetensors")
    assert not torch.allclose(silero.stream(model, speech), silero.reference_stream(speech), atol=1e-2)


def test_step_state_carries(speech: torch.Tensor) -> None:
    model = silero.load_pretrained(silero.SileroVAD())
    steps: list = []
    probs = silero.stream(model, speech, inputs=steps)
    x, h, c = steps[10]
    assert x.shape == (2, 576) and torch.equal(x[:, :64], steps[9][0][:, -64:])
    assert h.abs().sum() > 0 and torch.allclose(model(x, h, c)[0][:, 0], probs[:, 10])


def test_roc_auc() -> None:
    labels = torch.tensor([0, 0, 1, 1, 1], dtype=torch.bool)
    assert vad.roc_auc(torch.tensor([0.1, 0.2, 0.3, 0.8, 0.9]), labels) == 1.0
    assert vad.roc_auc(torch.tensor([0.9, 0.2, 0.3, 0.8, 0.1]), labels) == pytest.approx(2 / 6)
    assert vad.roc_auc(torch.full((5,), 0.5), labels) == 0.5


@pytest.mark.slow
def test_task_int8_agrees() -> None:
    import torchslim as ts

    task = ts.zoo.get("silero-vad")
    dense = task.model()
    assert task.evaluate(dense) == 1.0 and task.scores(dense)["roc_auc"] > 0.95
    model = task.model()
    ts.quantize_(model, ts.QuantConfig(bits=8, weights="per_channel", activations=None))
    assert task.evaluate(model) >= 0.99  # measured 0.998
    assert ts.io.saved_size(model) <= 0.3 * ts.io.saved_size(dense)


def test_shipped_onnx_imports(speech: torch.Tensor) -> None:
    import onnxruntime as ort

    imported = silero.import_onnx_16k()
    ours = silero.load_pretrained(silero.SileroVAD())
    session = ort.InferenceSession(
        str(silero.data_file(silero.ONNX_IFLESS)), providers=["CPUExecutionProvider"]
    )
    steps: list = []
    silero.stream(ours, speech, inputs=steps)
    for x, h, c in steps[8:14]:  # speech, with the states streaming reaches
        state = torch.stack([h, c])
        prob, new_state = imported(x, state)
        feeds = {"input": x.numpy(), "state": state.numpy(), "sr": np.array(16000, np.int64)}
        ref_prob, ref_state = session.run(None, feeds)
        np.testing.assert_allclose(prob.detach().numpy(), ref_prob, atol=1e-5)
        np.testing.assert_allclose(new_state.detach().numpy(), ref_state, atol=1e-5)
        assert torch.allclose(prob, ours(x, h, c)[0], atol=1e-5)
