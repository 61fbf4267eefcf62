"""The one way in for audio: decode any file soundfile reads, validate it, mix to mono, resample.

Training, evaluation, prediction and the server all call `load_audio`, so a format fix or a
clearer error lands everywhere at once. Nothing here needs ffmpeg or torchcodec.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf
import soxr

# Extensions libsndfile decodes (WAV incl. 8/24-bit and float, FLAC, OGG/Vorbis/Opus, MP3, AIFF).
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".w64"}
)

AudioSource = str | Path | bytes | BinaryIO | dict


class AudioError(ValueError):
    """A clip that cannot be used: names the file and says why (and, where possible, the fix)."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def describe_source(source: AudioSource) -> str:
    """A human name for an audio source, used in error messages."""
    if isinstance(source, dict):
        return str(source.get("path") or "<in-memory audio>")
    if isinstance(source, (str, Path)):
        return str(source)
    return getattr(source, "name", None) or "<in-memory audio>"


def _open(source: AudioSource, name: str) -> BinaryIO | str:
    """Turn a path, bytes, file object or datasets `Audio(decode=False)` dict into something
    soundfile reads, raising AudioError for missing and empty files."""
    if isinstance(source, dict):  # {"bytes": ..., "path": ...} from datasets
        if source.get("bytes"):
            return _open(source["bytes"], name)
        if source.get("path"):
            return _open(source["path"], name)
        raise AudioError(name, "no audio bytes or path in this example")
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError(name, "empty file (0 bytes)")
        return io.BytesIO(bytes(source))
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise AudioError(name, "no such file")
        if path.is_dir():
            raise AudioError(name, "is a directory, not an audio file")
        if path.stat().st_size == 0:
            raise AudioError(name, "empty file (0 bytes)")
        return str(path)
    return source


def _looks_like_text(head: bytes) -> bool:
    return bool(head) and all(32 <= b < 127 or b in (9, 10, 13) for b in head)


def _read_head(handle: BinaryIO | str, start: int) -> bytes:
    """The first bytes of the file (from `start`, where it began before soundfile read on)."""
    if isinstance(handle, str):
        with open(handle, "rb") as f:
            return f.read(64)
    handle.seek(start)
    return handle.read(64)


def decode(source: AudioSource, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode to float32 of shape (frames, channels) at the file's own rate.

    Raises AudioError naming the file when it is missing, empty, not audio, corrupt, holds no
    samples or non-finite samples, or is longer than `max_seconds`.
    """
    name = describe_source(source)
    handle = _open(source, name)
    start = 0 if isinstance(handle, str) else handle.tell()
    try:
        with sf.SoundFile(handle) as f:
            rate, frames = f.samplerate, f.frames
            if max_seconds is not None and frames > max_seconds * rate:
                raise AudioError(
                    name,
                    f"{frames / rate:.1f} s long, over the {max_seconds:g} s limit "
                    "(raise --max-seconds, or split the recording)",
                )
            wave = f.read(dtype="float32", always_2d=True)
    except sf.LibsndfileError as err:
        head = _read_head(handle, start)
        if _looks_like_text(head):
            raise AudioError(name, "not audio: the file holds text (is it really audio?)") from None
        if b"RIFF" in head[:4] or b"fLaC" in head[:4] or b"OggS" in head[:4]:
            raise AudioError(name, f"corrupt audio file ({err.error_string})") from None
        raise AudioError(
            name, f"not a readable audio file ({err.error_string}); convert it to WAV or FLAC"
        ) from None
    except RuntimeError as err:  # libsndfile reports some truncations as plain runtime errors
        raise AudioError(name, f"corrupt audio file ({err})") from None
    if wave.shape[0] == 0:
        raise AudioError(name, "holds no audio samples (0 frames)")
    if not np.isfinite(wave).all():
        raise AudioError(name, "holds NaN or infinite samples")
    return wave, rate


def to_mono(wave: np.ndarray) -> np.ndarray:
    """Average channels: (frames, channels) -> (frames,). A 1-D array passes through."""
    return wave if wave.ndim == 1 else wave.mean(axis=1, dtype=np.float32)


def resample_to(wave: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample a mono float32 signal with soxr (high quality, anti-aliased)."""
    if orig_rate == target_rate:
        return wave.astype(np.float32, copy=False)
    return soxr.resample(wave, orig_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def load_audio(
    source: AudioSource, sampling_rate: int, max_seconds: float | None = None
) -> np.ndarray:
    """Decode, validate, mix to mono and resample: float32 1-D at `sampling_rate`."""
    wave, rate = decode(source, max_seconds=max_seconds)
    return resample_to(to_mono(wave), rate, sampling_rate)


def prepare_array(
    wave: Any, sampling_rate: int, target_rate: int, name: str = "<array>"
) -> np.ndarray:
    """Validate an in-memory signal (1-D, or (frames, channels)) and bring it to `target_rate`."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim not in (1, 2) or wave.size == 0:
        raise AudioError(name, f"expected a non-empty 1-D or 2-D array, got shape {wave.shape}")
    if not np.isfinite(wave).all():
        raise AudioError(name, "holds NaN or infinite samples")
    return resample_to(to_mono(wave), sampling_rate, target_rate)


def is_audio_path(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS
