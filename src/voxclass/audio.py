"""The one way in for audio: decode any file soundfile reads, validate it, mix to mono, resample.

Training, evaluation, prediction and the server all call `load_audio`, so a format fix or a
clearer error lands everywhere at once. Nothing here needs ffmpeg or torchcodec.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
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


class AudioLimitError(AudioError):
    """Readable audio outside `AudioLimits` (rate, channels or duration): the file is fine, the
    limits refuse it (the server answers 422 here, 415 for a file it cannot read)."""


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


@dataclass(frozen=True)
class AudioLimits:
    """What audio voxclass accepts, checked from the file's header before any samples are
    decoded, so a small file whose header claims hours of audio, an absurd rate or hundreds of
    channels costs nothing. Every entry point (training, inspect, predict, evaluate, the server)
    decodes through these checks."""

    max_seconds: float | None = 3600.0
    """Longest accepted duration; None: no limit."""
    min_rate: int = 4000
    """Lowest accepted sample rate (Hz): below it there is no speech band, and resampling a
    1 Hz header to the model's rate would cost minutes of CPU."""
    max_rate: int = 192_000
    """Highest accepted sample rate (Hz)."""
    max_channels: int = 32
    """Most channels accepted (they are mixed to mono)."""
    option: str = "--max-seconds"
    """The option that raises `max_seconds`, named in the error."""


BLOCK_FRAMES = 1 << 16
"""Frames decoded at a time: memory follows the audio actually decoded (and, in `load_audio`,
its length at the model's rate), never what a header claims."""


def check_format(name: str, rate: float, channels: int, frames: float, limits: AudioLimits) -> None:
    """AudioLimitError naming the file when a rate, channel count or duration is outside
    `limits`."""
    if not limits.min_rate <= rate <= limits.max_rate:
        raise AudioLimitError(
            name,
            f"sample rate {rate:g} Hz is outside the accepted {limits.min_rate}-"
            f"{limits.max_rate} Hz; resample it (e.g. `sox IN -r 16000 OUT.wav`)",
        )
    if channels > limits.max_channels:
        raise AudioLimitError(
            name, f"{channels} channels, over the {limits.max_channels} accepted; mix it down"
        )
    if limits.max_seconds is not None and frames > limits.max_seconds * rate:
        raise AudioLimitError(
            name,
            f"{frames / rate:.1f} s long, over the {limits.max_seconds:g} s limit "
            f"(split the recording, or raise {limits.option})",
        )


def _blocks(source: AudioSource, limits: AudioLimits) -> Iterator[tuple[int, np.ndarray]]:
    """(rate, float32 block of shape (frames, channels)) for the whole file, after the header
    passed `check_format`. Counts what is really decoded too: a header that lies short cannot
    slip more audio past the duration limit."""
    name = describe_source(source)
    handle = _open(source, name)
    start = 0 if isinstance(handle, str) else handle.tell()
    try:
        with sf.SoundFile(handle) as f:
            rate = f.samplerate
            check_format(name, rate, f.channels, f.frames, limits)
            decoded = 0
            for block in f.blocks(BLOCK_FRAMES, dtype="float32", always_2d=True):
                decoded += block.shape[0]
                check_format(name, rate, f.channels, decoded, limits)
                if not np.isfinite(block).all():
                    raise AudioError(name, "holds NaN or infinite samples")
                yield rate, block
            if decoded == 0:
                raise AudioError(name, "holds no audio samples (0 frames)")
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
    except MemoryError:
        raise AudioError(name, "too large to decode in memory; split the recording") from None


def decode(source: AudioSource, limits: AudioLimits = AudioLimits()) -> tuple[np.ndarray, int]:
    """Decode to float32 of shape (frames, channels) at the file's own rate.

    Raises AudioError naming the file when it is missing, empty, not audio, corrupt, holds no
    samples or non-finite samples, or is outside `limits` (checked from the header first).
    """
    blocks = list(_blocks(source, limits))
    return np.concatenate([block for _, block in blocks]), blocks[0][0]


def to_mono(wave: np.ndarray) -> np.ndarray:
    """Average channels: (frames, channels) -> (frames,). A 1-D array passes through."""
    return wave if wave.ndim == 1 else wave.mean(axis=1, dtype=np.float32)


def resample_to(wave: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample a mono float32 signal with soxr (high quality, anti-aliased)."""
    if orig_rate == target_rate:
        return wave.astype(np.float32, copy=False)
    return soxr.resample(wave, orig_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def load_audio(
    source: AudioSource, sampling_rate: int, limits: AudioLimits = AudioLimits()
) -> np.ndarray:
    """Decode, validate, mix to mono and resample: float32 1-D at `sampling_rate`.

    Blocks are mixed and resampled as they are decoded (soxr's stream gives the same samples
    as resampling the whole signal at once), so memory follows the output's length."""
    resampler, out = None, []
    for rate, block in _blocks(source, limits):
        resampler = resampler or Resampler(rate, sampling_rate)
        out.append(resampler.push(to_mono(block)))
    out.append(resampler.flush())
    return np.concatenate(out).astype(np.float32, copy=False)


class Resampler:
    """Resamples a mono float32 signal that arrives in chunks; the output, chunk after chunk,
    is the same signal `resample_to` gives for the whole (soxr's stream keeps the filter state
    across chunks; its output lags the input by the filter's delay until `flush`)."""

    def __init__(self, rate: int, target_rate: int, quality: str = "HQ"):
        """`quality` is soxr's: `HQ` (what every file gets), or `QQ` (quick cubic
        interpolation: no anti-aliasing, but it holds back no audio, where soxr's filtered
        qualities hold back tens of milliseconds per chunk)."""
        self.stream = (
            None
            if rate == target_rate
            else soxr.ResampleStream(rate, target_rate, 1, "float32", quality=quality)
        )

    def push(self, wave: np.ndarray) -> np.ndarray:
        wave = np.ascontiguousarray(wave, dtype=np.float32)
        return wave if self.stream is None else self.stream.resample_chunk(wave)

    def flush(self) -> np.ndarray:
        """The delayed tail: the last output of the signal."""
        if self.stream is None:
            return np.zeros(0, np.float32)
        return self.stream.resample_chunk(np.zeros(0, np.float32), last=True)


PCM_FORMATS = {"pcm16": np.dtype("<i2"), "f32": np.dtype("<f4")}
"""Raw sample formats a stream may send: 16-bit signed integers or 32-bit floats in [-1, 1],
little-endian, mono."""


class PcmStream:
    """Raw mono PCM (`PCM_FORMATS`) in byte chunks of any size (a sample may be split across
    two chunks; an odd byte left at the end is dropped) to float32 samples, through the same
    checks as a file's samples."""

    def __init__(self, sample_format: str, name: str = "<stream>"):
        self.dtype = PCM_FORMATS[sample_format]
        self.name = name
        self.carry = b""

    def push(self, data: bytes) -> np.ndarray:
        data = self.carry + data
        whole = len(data) - len(data) % self.dtype.itemsize
        self.carry = data[whole:]
        samples = np.frombuffer(data[:whole], self.dtype).astype(np.float32)
        if self.dtype.kind == "i":
            samples /= 32768.0
        elif not np.isfinite(samples).all():
            raise AudioError(self.name, "holds NaN or infinite samples")
        return samples


def load_many(
    sources: Sequence[AudioSource],
    sampling_rate: int,
    limits: AudioLimits = AudioLimits(),
    progress: Callable[[], None] | None = None,
) -> tuple[dict[int, np.ndarray], dict[int, AudioError]]:
    """`load_audio` for each source: ({index: wave}, {index: AudioError}), so one bad file
    costs its own result only and every bad file is known at once. `progress` is called after
    each source."""
    waves: dict[int, np.ndarray] = {}
    errors: dict[int, AudioError] = {}
    for index, source in enumerate(sources):
        try:
            waves[index] = load_audio(source, sampling_rate, limits)
        except AudioError as err:
            errors[index] = err
        if progress:
            progress()
    return waves, errors


def prepare_array(
    wave: Any,
    sampling_rate: int,
    target_rate: int,
    name: str = "<array>",
    limits: AudioLimits = AudioLimits(),
) -> np.ndarray:
    """Validate an in-memory signal (1-D, or (frames, channels)) and bring it to `target_rate`,
    under the same `limits` as a file."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim not in (1, 2) or wave.size == 0:
        raise AudioError(name, f"expected a non-empty 1-D or 2-D array, got shape {wave.shape}")
    check_format(name, sampling_rate, 1 if wave.ndim == 1 else wave.shape[1], len(wave), limits)
    if not np.isfinite(wave).all():
        raise AudioError(name, "holds NaN or infinite samples")
    return resample_to(to_mono(wave), sampling_rate, target_rate)


def is_audio_path(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS
