"""Offline speech synthesis with eSpeak NG, through the library the `espeakng-loader` package ships.

The C API is called with ctypes (no subprocess, no files): synthesis runs synchronously and the synth
callback collects the 16-bit samples in memory. eSpeak synthesises at 22050 Hz; `synthesize` resamples
to 16 kHz with an FFT (band-limited, so no aliasing from the 11 kHz band above the new Nyquist).
The library holds global state (voice, parameters, callback), so every call takes one process-wide lock.
Its noise sources draw from its own generator and from libc's `rand`, both seeded before each call; and
its wave generator keeps a few statics across utterances (the pitch-flutter phase, the glottal cycle
count and amplitude, the echo buffer), which `_reset_state` zeroes through the library's symbol table,
so the same arguments give the same samples whatever was synthesised before.
"""

from __future__ import annotations

import ctypes
import functools
import struct
import threading
from typing import Any

import numpy as np

from torchslim.errors import UserError

SAMPLE_RATE = 16000

# espeak_AUDIO_OUTPUT, espeak_PARAMETER, position type and text flags (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
# wave-generator statics carried from one utterance to the next (local symbols, hence prefixes: the
# compiler appends a number to function-level statics)
_CARRIED_STATE = ("Flutter_ix.", "amplitude2.", "cycle_count.", "echo_buf")

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_lock = threading.Lock()
_chunks: list[np.ndarray] = []


@_CALLBACK
def _collect(wav: Any, numsamples: int, events: Any) -> int:
    if numsamples > 0 and wav:
        _chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
    return 0  # 0: continue synthesis


@functools.cache
def _library() -> tuple[ctypes.CDLL, int]:
    """The loaded library, initialised once for in-memory synchronous synthesis, and its sample rate."""
    try:
        import espeakng_loader
    except ImportError as e:
        raise UserError("speech synthesis needs espeakng-loader: pip install 'torchslim[speech]'") from e
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
        ctypes.c_void_p, ctypes.c_void_p,
    ]  # fmt: skip
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
    if rate <= 0:
        raise UserError("eSpeak NG failed to initialise; reinstall espeakng-loader")
    lib.espeak_SetSynthCallback(_collect)
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    return lib, rate


def _elf_symbols(path: str) -> dict[str, tuple[int, int]]:
    """name -> (offset, size) of the objects and functions in an ELF64 little-endian file's `.symtab`."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4:6] != b"\x02\x01":
        return {}
    shoff, (shentsize, shnum) = struct.unpack_from("<Q", data, 0x28)[0], struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    out: dict[str, tuple[int, int]] = {}
    for _, kind, _, _, offset, size, link, _, _, entsize in sections:
        if kind != 2:  # SHT_SYMTAB
            continue
        strtab = sections[link][4]
        for pos in range(offset, offset + size, entsize):
            name_at, info, _, _, value, length = struct.unpack_from("<IBBHQQ", data, pos)
            if info & 0xF in (1, 2):  # STT_OBJECT, STT_FUNC
                name = data[strtab + name_at : data.index(b"\0", strtab + name_at)]
                out[name.decode()] = (value, length)
    return out


@functools.cache
def _carried_state() -> list[tuple[int, int]]:
    """(address, size) of the statics in `_CARRIED_STATE`; empty where the library has no symbol table."""
    import espeakng_loader

    lib, _ = _library()
    symbols = _elf_symbols(espeakng_loader.get_library_path())
    if "espeak_Synth" not in symbols:
        return []
    # the load address: where an exported function is, less its offset in the file
    base = (ctypes.cast(lib.espeak_Synth, ctypes.c_void_p).value or 0) - symbols["espeak_Synth"][0]
    return [(base + at, size) for name, (at, size) in symbols.items() if name.startswith(_CARRIED_STATE)]


def _reset_state() -> None:
    for address, size in _carried_state():
        ctypes.memset(address, 0, size)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None)


def native_rate() -> int:
    """eSpeak's own sample rate (22050 Hz)."""
    return _library()[1]


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """`audio` at `rate_out`, band-limited by truncating (or zero-padding) its spectrum."""
    n_out = round(len(audio) * rate_out / rate_in)
    if n_out == len(audio) or len(audio) == 0:
        return audio.astype(np.float32)
    spectrum = np.fft.rfft(audio.astype(np.float64))
    keep = min(len(spectrum), n_out // 2 + 1)
    out = np.fft.irfft(spectrum[:keep], n=n_out) * (n_out / len(audio))
    return out.astype(np.float32)


def synthesize(
    text: str, voice: str = "en", rate: int = 175, pitch: int = 50, pitch_range: int = 50, seed: int = 0
) -> np.ndarray:
    """`text` spoken by eSpeak voice `voice` (e.g. "en", "en-us", "en+f3": a language plus a variant),
    at `rate` words per minute (80-450) and `pitch` (0-100), as float32 samples in [-1, 1] at 16 kHz.
    `seed` fixes the synthesiser's noise."""
    lib, native = _library()
    with _lock:
        if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise UserError(f"unknown eSpeak voice {voice!r}; use a language such as 'en' or 'en-us'")
        for parameter, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range), (_VOLUME, 100)):
            lib.espeak_SetParameter(parameter, int(value), 0)
        _reset_state()
        lib.espeak_ng_SetRandSeed(seed)
        _libc().srand(seed)
        data = text.encode()
        _chunks.clear()
        err = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != _EE_OK:
            raise UserError(f"eSpeak could not synthesise {text!r} (error {err})")
        samples = np.concatenate(_chunks) if _chunks else np.zeros(0, np.int16)
        _chunks.clear()
    return resample(samples.astype(np.float32) / 32768.0, native, SAMPLE_RATE)
