"""The one inference object: audio in, labels and scores out. predict, evaluate, serve and the
Python API all go through `Classifier`.

Batching never changes a clip's scores. Clips are batched with clips of similar length and
padded only within the batch; models whose feature extractor gives an attention mask see the
padding masked out. wav2vec2 models saved without one (wav2vec2-base style) are given one when
loaded (`exact_batches`). Other models without a mask would be changed by padding, so for them
only clips of equal length share a batch.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .audio import AudioLimits, AudioSource, describe_source, load_audio, prepare_array
from .config import ConfigError
from .features import extract_one, min_samples
from .model import ModelError, max_seconds_of
from .runtime import Backend, load_backend, sampling_rate_of

MIN_HOP_SECONDS = 0.01
"""Shortest hop between windows: finer steps only multiply the work (a 1e-9 s hop would ask
for millions of windows per second of audio)."""


@dataclass
class Window:
    start: float
    end: float
    labels: list[str]
    scores: list[float]


@dataclass
class Prediction:
    source: str
    labels: list[str]
    """Top-k labels, best first."""
    scores: list[float]
    duration: float
    """Seconds of audio."""
    windows: list[Window] | None = None
    """Per-window timeline for audio longer than the model's max duration; the top-level
    labels/scores are then the mean of the window probabilities."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Classifier:
    """A trained audio classifier (a transformers model directory)."""

    def __init__(self, runtime: Backend):
        self.runtime = runtime
        """What runs the model (`runtime.TorchBackend` or `runtime.OnnxBackend`)."""
        self.extractor = runtime.extractor
        config = runtime.config
        try:
            self.labels: list[str] = [config.id2label[i] for i in range(config.num_labels)]
        except KeyError:
            raise ModelError(
                f"config.json: id2label {config.id2label} does not name all "
                f"{config.num_labels} labels; give every label id a name"
            ) from None
        self.sampling_rate: int = sampling_rate_of(config, self.extractor)
        self.max_seconds: float = max_seconds_of(config)
        self.backend: str = runtime.name
        """"torch" or "onnx"."""
        self.masked = bool(getattr(self.extractor, "return_attention_mask", False))
        self.multi_label = config.problem_type == "multi_label_classification"
        self.min_samples = min_samples(self.extractor, config, self.sampling_rate)
        """Shorter waves are padded with silence to this many samples (see `min_samples`)."""

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Classifier:
        """A model directory: an exported one (model.onnx) runs on onnxruntime on the CPU, else
        torch on `device` ("cpu", "cuda", "cuda:1", ...)."""
        return cls(load_backend(path, device))

    @property
    def model(self) -> Any:
        """The torch model (torch backend only; the ONNX one has `runtime.session`)."""
        return getattr(self.runtime, "model", None)

    @property
    def device(self) -> str:
        return self.runtime.device

    # ------------------------------------------------------------------ batched scoring

    def _forward(self, waves: list[np.ndarray]) -> np.ndarray:
        """Logits for one batch of waves (already at the model's rate)."""
        rate = self.sampling_rate
        features = [extract_one(self.extractor, w, rate, self.min_samples) for w in waves]
        return self.runtime.logits(features)

    def _batches(self, lengths: list[int], batch_size: int) -> list[list[int]]:
        """Indices grouped so that batching cannot change any clip's result."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        if self.masked:
            return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        same_length: dict[int, list[int]] = defaultdict(list)
        for i in order:
            same_length[lengths[i]].append(i)
        return [
            group[i : i + batch_size]
            for group in same_length.values()
            for i in range(0, len(group), batch_size)
        ]

    def probabilities(self, waves: list[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """(N, n_labels) probabilities for mono float32 waves at `self.sampling_rate`: a softmax
        over the labels, or for a multi-label model (`problem_type` multi_label_classification)
        an independent sigmoid per label, so a clip's scores need not sum to 1."""
        out = np.zeros((len(waves), len(self.labels)), np.float32)
        for batch in self._batches([len(w) for w in waves], batch_size):
            logits = self._forward([waves[i] for i in batch])
            if self.multi_label:
                out[batch] = 1 / (1 + np.exp(-logits))
            else:
                shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
                out[batch] = shifted / shifted.sum(axis=1, keepdims=True)
        return out

    # ------------------------------------------------------------------ predictions

    def load_wave(
        self,
        source: AudioSource | np.ndarray,
        sampling_rate: int | None = None,
        limits: AudioLimits = AudioLimits(),
    ) -> np.ndarray:
        """Decode or validate one input under `limits`, at the model's rate."""
        if isinstance(source, np.ndarray):
            if sampling_rate is None:
                raise ValueError("an array needs its sampling_rate")
            return prepare_array(source, sampling_rate, self.sampling_rate, limits=limits)
        return load_audio(source, self.sampling_rate, limits)

    def check_settings(
        self, top_k: int, batch_size: int, window: float | None, hop: float | None
    ) -> None:
        """ConfigError naming the option unless `top_k` and `batch_size` are at least 1,
        `window` (seconds) holds the model's shortest input and `hop` is at least
        MIN_HOP_SECONDS (None: the defaults, max duration and half a window). Called before
        any audio is decoded."""
        if top_k < 1:
            raise ConfigError(f"--top-k {top_k}: give at least 1 label per clip")
        if batch_size < 1:
            raise ConfigError(f"--batch-size {batch_size}: give at least 1 clip per batch")
        shortest = self.min_samples / self.sampling_rate
        if window is not None and not (math.isfinite(window) and window >= shortest):
            raise ConfigError(
                f"--window {window:g}: give at least {shortest:.3f} s (the model's shortest "
                f"input), e.g. the model's max duration {self.max_seconds:g}"
            )
        if hop is not None and not (math.isfinite(hop) and hop >= MIN_HOP_SECONDS):
            raise ConfigError(
                f"--hop {hop:g}: give at least {MIN_HOP_SECONDS:g} s between windows "
                "(default: half a window)"
            )

    def windows_of(self, wave: np.ndarray, window: float | None, hop: float | None):
        """(start, end) sample spans covering `wave`: one span when it fits in max duration."""
        size = int((window or self.max_seconds) * self.sampling_rate)
        if len(wave) <= size:
            return [(0, len(wave))]
        step = int((hop or (window or self.max_seconds) / 2) * self.sampling_rate)
        starts = list(range(0, len(wave) - size + 1, step))
        if starts[-1] + size < len(wave):  # cover the tail too
            starts.append(len(wave) - size)
        return [(s, s + size) for s in starts]

    def _top(self, probs: np.ndarray, top_k: int) -> tuple[list[str], list[float]]:
        best = np.argsort(-probs, kind="stable")[:top_k]
        return [self.labels[i] for i in best], [float(probs[i]) for i in best]

    def predict_waves(
        self,
        waves: Sequence[np.ndarray],
        names: Sequence[str],
        top_k: int = 5,
        batch_size: int = 16,
        window: float | None = None,
        hop: float | None = None,
    ) -> list[Prediction]:
        """Predict already decoded mono waves at `self.sampling_rate` (from `load_wave` or
        `audio.load_many`), named `names`; windows of all waves are batched together. `top_k`
        above the number of labels gives every label."""
        self.check_settings(top_k, batch_size, window, hop)
        spans = [self.windows_of(w, window, hop) for w in waves]
        pieces = [w[a:b] for w, clip_spans in zip(waves, spans, strict=True) for a, b in clip_spans]
        probs = self.probabilities(pieces, batch_size)
        results, row = [], 0
        for name, wave, clip_spans in zip(names, waves, spans, strict=True):
            clip_probs = probs[row : row + len(clip_spans)]
            row += len(clip_spans)
            results.append(self.prediction_of(name, wave, clip_spans, clip_probs, top_k))
        return results

    def predict_batch(
        self,
        sources: list[AudioSource | np.ndarray],
        sampling_rate: int | None = None,
        top_k: int = 5,
        batch_size: int = 16,
        window: float | None = None,
        hop: float | None = None,
    ) -> list[Prediction]:
        """Predict many inputs (paths, bytes, file objects, or arrays at `sampling_rate`);
        the first bad one raises its AudioError (`voxclass predict` gives error rows instead,
        through `audio.load_many` and `predict_waves`)."""
        if isinstance(sources, (str, Path, bytes, np.ndarray)):
            raise TypeError("predict_batch takes a list of inputs; for one input use predict()")
        self.check_settings(top_k, batch_size, window, hop)  # before decoding anything
        waves = [self.load_wave(s, sampling_rate) for s in sources]
        names = [
            "<array>" if isinstance(s, np.ndarray) else describe_source(s) for s in sources
        ]
        return self.predict_waves(waves, names, top_k, batch_size, window, hop)

    def prediction_of(
        self,
        name: str,
        wave: np.ndarray,
        spans: list[tuple[int, int]],
        probs: np.ndarray,
        top_k: int,
    ) -> Prediction:
        """The Prediction for one wave from the probabilities of its `spans` (`windows_of`),
        one row per span: their mean, and the timeline when there is more than one."""
        labels, scores = self._top(probs.mean(axis=0), top_k)
        timeline = None
        if len(spans) > 1:
            timeline = [
                Window(a / self.sampling_rate, b / self.sampling_rate, *self._top(p, top_k))
                for (a, b), p in zip(spans, probs, strict=True)
            ]
        return Prediction(name, labels, scores, len(wave) / self.sampling_rate, timeline)

    def predict(
        self,
        source: AudioSource | np.ndarray,
        sampling_rate: int | None = None,
        top_k: int = 5,
        window: float | None = None,
        hop: float | None = None,
    ) -> Prediction:
        """Predict one input (path, bytes, file object, or array with its sampling_rate)."""
        if isinstance(source, (list, tuple)):
            raise TypeError(
                f"predict takes one input, got a {type(source).__name__} of {len(source)}; "
                "use predict_batch for several"
            )
        return self.predict_batch([source], sampling_rate, top_k, 1, window, hop)[0]
