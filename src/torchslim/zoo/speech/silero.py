"""Silero VAD (16 kHz) rebuilt as a plain torch module from the safetensors file its wheel ships.

The shipped TorchScript model (`silero_vad.jit`, read with `torch.jit.load(...).code`) computes, per
512-sample chunk (32 ms) with the previous chunk's last 64 samples in front of it (576 samples):
reflect-pad 64 samples on the right, an STFT as a strided convolution (256-tap basis, hop 128: 4 frames
of 129 real and 129 imaginary bins), the magnitude, four Conv1d+ReLU (129->128, 128->64 stride 2,
64->64 stride 2, 64->128: one frame left), an LSTMCell(128, 128) carrying its state from chunk to chunk,
then ReLU, a 1x1 Conv1d to one channel and a sigmoid: the speech probability of the chunk.
`SileroVAD.forward(x, h, c)` is one step (the state as two tensors, so exports and latency measure
exactly one chunk); `stream` runs a whole signal chunk by chunk, carrying context and state as the
TorchScript wrapper does.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

SAMPLE_RATE = 16000
CHUNK = 512
CONTEXT = 64
HIDDEN = 128
_BINS = 129  # filter length 256 / 2 + 1


def data_file(name: str) -> Path:
    """A file of the installed `silero-vad` wheel's data folder (never downloaded)."""
    return Path(str(resources.files("silero_vad") / "data" / name))


class SileroVAD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stft_conv = nn.Conv1d(1, 2 * _BINS, 256, stride=128, bias=False)
        self.conv1 = nn.Conv1d(_BINS, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, 3, padding=1)
        self.lstm_cell = nn.LSTMCell(128, HIDDEN)
        self.final_conv = nn.Conv1d(128, 1, 1)

    def forward(
        self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`x` [B, 576] (context + chunk), state `h`, `c` [B, 128] -> (probability [B, 1], h, c)."""
        x = F.pad(x.unsqueeze(1), (0, CONTEXT), mode="reflect")
        spec = self.stft_conv(x)
        mag = torch.sqrt(spec[:, :_BINS].square() + spec[:, _BINS:].square())
        y = F.relu(self.conv1(mag))
        y = F.relu(self.conv2(y))
        y = F.relu(self.conv3(y))
        y = F.relu(self.conv4(y))
        h, c = self.lstm_cell(y.squeeze(-1), (h, c))
        prob = torch.sigmoid(self.final_conv(F.relu(h.unsqueeze(-1))))
        return prob.squeeze(-1), h, c


def initial_state(batch: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(context, h, c) before the first chunk: zeros, as the TorchScript wrapper starts."""
    return torch.zeros(batch, CONTEXT), torch.zeros(batch, HIDDEN), torch.zeros(batch, HIDDEN)


JIT_NAMES = {
    "stft_conv.weight": "stft.forward_basis_buffer",
    **{f"conv{i + 1}.{t}": f"encoder.{i}.reparam_conv.{t}" for i in range(4) for t in ("weight", "bias")},
    **{f"lstm_cell.{t}": f"decoder.rnn.{t}" for t in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")},
    "final_conv.weight": "decoder.decoder.2.weight",
    "final_conv.bias": "decoder.decoder.2.bias",
}
"""Our tensor names -> the TorchScript model's (`silero_vad.jit`, 16 kHz branch `_model`)."""


def pretrained_state(source: str = "jit") -> dict[str, torch.Tensor]:
    """The 16 kHz weights. The wheel's `silero_vad_16k.safetensors` holds weights other than those of
    its TorchScript and ONNX models (which agree with each other; measured in the zoo tests), so the
    default reads the TorchScript model's tensors, by name, into this same architecture."""
    if source == "safetensors":
        from safetensors.torch import load_file

        return load_file(str(data_file("silero_vad_16k.safetensors")))
    tensors = {**dict(_reference()._model.named_parameters()), **dict(_reference()._model.named_buffers())}
    return {ours: tensors[theirs].detach().clone() for ours, theirs in JIT_NAMES.items()}


def load_pretrained(model: SileroVAD, source: str = "jit") -> SileroVAD:
    model.load_state_dict(pretrained_state(source), strict=True)
    return model.eval()


@torch.no_grad()
def stream(model: nn.Module, audio: torch.Tensor, *, inputs: list[Any] | None = None) -> torch.Tensor:
    """Speech probability of each whole 512-sample chunk of `audio` [B, N] -> [B, N // 512].

    `inputs`, when given, collects each step's model inputs `(x, h, c)` (calibration batches)."""
    audio = audio.reshape(-1, audio.shape[-1]) if audio.dim() != 2 else audio
    context, h, c = initial_state(audio.shape[0])
    probs = []
    for start in range(0, audio.shape[1] - CHUNK + 1, CHUNK):
        x = torch.cat([context, audio[:, start : start + CHUNK]], dim=1)
        if inputs is not None:
            inputs.append((x, h, c))
        p, h, c = model(x, h, c)
        probs.append(p[:, 0])
        context = x[:, -CONTEXT:]
    return torch.stack(probs, dim=1) if probs else torch.zeros(audio.shape[0], 0)


@functools.cache
def _reference() -> Any:
    return torch.jit.load(str(data_file("silero_vad.jit")), map_location="cpu").eval()


@torch.no_grad()
def reference_stream(audio: torch.Tensor) -> torch.Tensor:
    """The shipped TorchScript model's probabilities per chunk of `audio` [B, N] (its own state)."""
    jit = _reference()
    jit.reset_states()
    audio = audio.reshape(-1, audio.shape[-1]) if audio.dim() != 2 else audio
    out = [
        jit(audio[:, s : s + CHUNK], SAMPLE_RATE)[:, 0] for s in range(0, audio.shape[1] - CHUNK + 1, CHUNK)
    ]
    jit.reset_states()
    return torch.stack(out, dim=1)


ONNX_IFLESS = "silero_vad_op18_ifless.onnx"


def onnx_16k(file: str = ONNX_IFLESS) -> Any:
    """The shipped ONNX model's 16 kHz graph: its one `If` (on `sr == 16000`) replaced by its then-branch,
    `sr` dropped. The importer converts no control flow; this file's branch is plain operators."""
    import onnx
    from onnx import helper

    model = onnx.load(str(data_file(file)))
    (cond,) = [n for n in model.graph.node if n.op_type == "If"]
    branch = next(a.g for a in cond.attribute if a.name == "then_branch")
    renames = [
        helper.make_node("Identity", [b.name], [o]) for b, o in zip(branch.output, cond.output, strict=True)
    ]
    graph = helper.make_graph(
        [*branch.node, *renames],
        "silero_vad_16k",
        [i for i in model.graph.input if i.name != "sr"],
        list(model.graph.output),
        [*model.graph.initializer, *branch.initializer],
    )
    return helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


def import_onnx_16k() -> nn.Module:
    """The shipped ONNX model through our ONNX importer: `module(input [B, 576], state [2, B, 128])`."""
    from torchslim.interop.onnx_import import convert

    return convert(onnx_16k(), source=ONNX_IFLESS)
