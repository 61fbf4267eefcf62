"""The feature extractors of voxclass's presets in numpy alone, for exported models.

An ONNX export runs on onnxruntime; loading its config and feature extractor through
transformers would cost the start-up of every `voxclass predict` more than the clips do. The
two extractor types the presets use (SeamlessM4T log-mel, Wav2Vec2 raw waveform) are
reimplemented here step for step after transformers' own code, and read from the export's
`config.json` and `preprocessor_config.json`; any other type, or a config these cannot read,
goes through transformers as before (`load` answers None). tests/test_extractors.py holds them
to transformers' output.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

MEL_FILE = "voxclass_mel.npz"
"""Beside an export of a log-mel model: transformers' mel filter bank and window, saved by
`voxclass export` so that they are not recomputed (nor reimplemented) here."""
CHECKED_FILE = "voxclass_features.json"
"""Written by `voxclass export` when this module's features matched transformers' on its
validation clips; without it (an older export, another extractor) transformers is used."""
MAX_DIFF = 1e-4


class _Features:
    """What `features.extract_one` / `pad_batch` use of a transformers feature extractor."""

    model_input_names: list[str]

    def __init__(self, settings: dict[str, Any]):
        self.sampling_rate = int(settings["sampling_rate"])
        self.padding_value = float(settings.get("padding_value", 0.0))
        self.return_attention_mask = bool(settings.get("return_attention_mask", False))

    def features(self, wave: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def own_frames(self, samples: int, frames: int) -> int:
        """How many of a clip's `frames` (from `samples`) its attention mask keeps."""
        return frames

    def __call__(self, wave: np.ndarray, sampling_rate: int) -> dict[str, list[np.ndarray]]:
        if sampling_rate != self.sampling_rate:
            raise ValueError(f"expects {self.sampling_rate} Hz audio, got {sampling_rate} Hz")
        features = self.features(np.asarray(wave, np.float32))
        out = {self.model_input_names[0]: [features]}
        if self.return_attention_mask:
            mask = np.zeros(len(features), np.int32)
            mask[: self.own_frames(len(wave), len(features))] = 1
            out["attention_mask"] = [mask]
        return out

    def pad(
        self,
        inputs: dict[str, list[np.ndarray]],
        padding: str = "max_length",
        max_length: int = 0,
        return_tensors: str = "np",
    ) -> dict[str, np.ndarray]:
        """Every input padded with `padding_value` to `max_length` rows (and an attention mask
        when the extractor gives one), as SequenceFeatureExtractor.pad does."""
        if return_tensors != "np":
            raise ValueError("numpy extractors give numpy arrays only")
        name = self.model_input_names[0]
        rows = inputs[name]
        length = max(max_length, *(len(x) for x in rows))
        value = self.padding_value
        padded = [np.pad(x, [(0, length - len(x))] + [(0, 0)] * (x.ndim - 1),
                         constant_values=value) for x in rows]  # fmt: skip
        out = {name: np.stack(padded).astype(np.float32)}
        if self.return_attention_mask:
            mask = np.zeros((len(rows), length), np.int32)
            for i, x in enumerate(rows):
                mask[i, : len(x)] = 1
            out["attention_mask"] = mask
        return out


class Wav2Vec2Features(_Features):
    """transformers.Wav2Vec2FeatureExtractor for one clip: the wave, zero mean, unit variance."""

    model_input_names = ["input_values", "attention_mask"]

    def __init__(self, settings: dict[str, Any]):
        super().__init__(settings)
        self.do_normalize = bool(settings.get("do_normalize", True))

    def features(self, wave: np.ndarray) -> np.ndarray:
        if not self.do_normalize:
            return wave
        return (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)


class SeamlessM4TFeatures(_Features):
    """transformers.SeamlessM4TFeatureExtractor for one clip: Kaldi-style log-mel (25 ms
    frames, 10 ms hop at 16 kHz), normalised per mel bin, `stride` frames stacked."""

    model_input_names = ["input_features", "attention_mask"]

    def __init__(self, settings: dict[str, Any], mel: dict[str, np.ndarray]):
        super().__init__(settings)
        self.return_attention_mask = True  # as transformers' class sets it
        self.stride = int(settings.get("stride", 2))
        self.mel_filters = mel["mel_filters"]
        self.window = mel["window"].astype(np.float64)

    def log_mel(self, wave: np.ndarray) -> np.ndarray:
        """audio_utils.spectrogram(frame_length=400, hop_length=160, fft_length=512, power=2,
        center=False, preemphasis=0.97, log_mel="log", remove_dc_offset=True), operation for
        operation (frame by frame: numpy's batched FFT rounds differently, and normalising
        each mel bin by its spread over time magnifies that on quiet bins)."""
        wave = (wave * 2**15).astype(np.float64)  # Kaldi's 16-bit scale
        frames = self.mel_frames(wave.size)
        spectrum = np.empty((frames, 257), dtype=np.complex64)  # raises below 240 samples
        buffer = np.zeros(512)
        for i in range(frames):
            buffer[:400] = wave[160 * i : 160 * i + 400]
            buffer[:400] = buffer[:400] - buffer[:400].mean()
            buffer[1:400] -= 0.97 * buffer[:399]
            buffer[0] *= 1 - 0.97
            buffer[:400] *= self.window
            spectrum[i] = np.fft.rfft(buffer)
        power = (np.abs(spectrum, dtype=np.float64) ** 2.0).T
        mel = np.maximum(1.192092955078125e-07, np.dot(self.mel_filters.T, power))
        return np.asarray(np.log(mel), np.float32).T

    def features(self, wave: np.ndarray) -> np.ndarray:
        x = self.log_mel(wave)
        with np.errstate(all="ignore"):  # no frames: empty, as transformers gives
            x = (x - x.mean(0)[None]) / np.sqrt(x.var(0, ddof=1)[None] + 1e-7)
        if len(x) % 2:  # transformers pads to an even frame count (pad_to_multiple_of=2)...
            x = np.concatenate([x, np.full((1, x.shape[1]), self.padding_value, x.dtype)])
        usable = len(x) - len(x) % self.stride  # ... then drops what does not fill a stride
        return x[:usable].reshape(usable // self.stride, x.shape[1] * self.stride)

    @staticmethod
    def mel_frames(samples: int) -> int:
        """How many mel frames transformers makes of `samples`: 400 samples each, one every
        160."""
        return int(1 + np.floor((samples - 400) / 160))

    def own_frames(self, samples: int, frames: int) -> int:
        """transformers masks a stacked frame unless its second mel frame is the clip's own
        (not the frame padded on to an even count)."""
        mel_frames = self.mel_frames(samples)
        return sum(1 for k in range(frames) if self.stride * k + 1 < mel_frames)


def _config(path: Path) -> SimpleNamespace | None:
    """config.json as the attributes Classifier reads; None when transformers would fill in
    something (no id2label: it assumes two labels)."""
    data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not data.get("id2label"):
        return None
    data["id2label"] = {int(k): v for k, v in data["id2label"].items()}
    data["label2id"] = {k: int(v) for k, v in data.get("label2id", {}).items()}
    data.setdefault("problem_type", None)
    return SimpleNamespace(**{**data, "num_labels": len(data["id2label"])})


def load(path: str | Path) -> tuple[SimpleNamespace, _Features] | None:
    """The config and numpy extractor of an exported model directory, or None when they need
    transformers."""
    path = Path(path)
    if not (path / CHECKED_FILE).is_file():
        return None
    try:
        settings = json.loads((path / "preprocessor_config.json").read_text(encoding="utf-8"))
        config = _config(path)
        kind = settings.get("feature_extractor_type")
        if config is None:
            return None
        if kind == "Wav2Vec2FeatureExtractor":
            return config, Wav2Vec2Features(settings)
        if kind == "SeamlessM4TFeatureExtractor" and (path / MEL_FILE).is_file():
            with np.load(path / MEL_FILE) as mel:
                return config, SeamlessM4TFeatures(settings, dict(mel))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # transformers reads it, or says what is wrong with it
    return None


def _difference(theirs: np.ndarray, ours: np.ndarray) -> float:
    """Largest difference; NaN where both give NaN (a one-frame clip's variance) is agreement."""
    if theirs.shape != ours.shape or not np.array_equal(np.isnan(theirs), np.isnan(ours)):
        return float("inf")
    both = ~np.isnan(theirs)
    return float(np.max(np.abs(theirs[both] - ours[both]), initial=0.0))


def save(extractor: Any, out: Path, clips: list[np.ndarray]) -> float | None:
    """Beside an export in `out` (config and extractor saved), what `load` needs: a log-mel
    extractor's filter bank and window, and the check that this module's features of `clips`
    match `extractor`'s within MAX_DIFF. Returns the largest difference, None when `load`
    cannot read this extractor."""
    from .features import extract_one

    if hasattr(extractor, "mel_filters") and hasattr(extractor, "window"):
        np.savez(out / MEL_FILE, mel_filters=extractor.mel_filters, window=extractor.window)
    (out / CHECKED_FILE).write_text("{}")  # lets `load` read it, for the check below
    loaded = load(out)
    (out / CHECKED_FILE).unlink()
    if loaded is None:
        return None
    rate = extractor.sampling_rate
    diff = max(_difference(extract_one(extractor, w, rate), extract_one(loaded[1], w, rate))
               for w in clips)  # fmt: skip
    if diff <= MAX_DIFF:
        (out / CHECKED_FILE).write_text(json.dumps({"max_abs_diff": diff}) + "\n")
    return diff
