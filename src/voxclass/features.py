"""From decoded clips to model inputs: crop, augment, pad per batch.

The seed recipe cut every clip to 1 s and padded everything to that maximum. Here a clip keeps
up to `max_seconds` (derived from the data), training takes a random crop of longer clips,
evaluation takes the clip from its start, and each batch is padded only to its own longest clip.
The feature extractor decides whether an attention mask is returned: wav2vec2-base was trained
without one and must not get one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset

from .audio import AudioError, load_audio


def decode_split(ds: Dataset, sampling_rate: int, max_seconds: float | None) -> Dataset:
    """Decode every clip once into a float32 `wave` column (+ `length` in samples).

    Files that cannot be used are collected, not skipped: the AudioError list is returned in the
    `error` column so the caller can name every bad file at once.
    """

    def decode_one(example: dict) -> dict:
        try:
            wave = load_audio(example["audio"], sampling_rate, max_seconds=max_seconds)
            return {"wave": wave, "length": len(wave), "error": ""}
        except AudioError as err:
            return {"wave": np.zeros(0, np.float32), "length": 0, "error": str(err)}

    return ds.map(decode_one).with_format("numpy", columns=["wave"], output_all_columns=True)


def max_seconds_for(
    lengths: np.ndarray, sampling_rate: int, percentile: float = 95.0, cap: float = 30.0
) -> float:
    """Longest clip worth keeping whole: a high percentile of the training clip lengths, capped.
    Rarer, longer clips get randomly cropped in training instead of inflating every batch."""
    seconds = float(np.percentile(lengths, percentile)) / sampling_rate
    return round(min(max(seconds, 1.0), cap), 2)


@dataclass
class Augment:
    """Waveform augmentation for training (each applied with its own probability)."""

    gain_db: float = 6.0
    """Random gain in [-gain_db, +gain_db]."""
    noise_snr_db: tuple[float, float] = (10.0, 40.0)
    """White noise at a random SNR in this range."""
    shift_seconds: float = 0.2
    """Random circular time shift of up to this much, either way."""
    probability: float = 0.5
    """Chance that each augmentation is applied to a clip."""
    extra: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None
    """A further augmentation (e.g. the user's own noise recordings, see --augment-noise)."""

    def __call__(self, wave: np.ndarray, rng: np.random.Generator, rate: int) -> np.ndarray:
        if rng.random() < self.probability:
            wave = wave * 10 ** (rng.uniform(-self.gain_db, self.gain_db) / 20)
        if rng.random() < self.probability and self.shift_seconds > 0:
            wave = np.roll(wave, int(rng.uniform(-1, 1) * self.shift_seconds * rate))
        if rng.random() < self.probability:
            power = float(np.mean(wave**2)) + 1e-12
            snr = rng.uniform(*self.noise_snr_db)
            noise = rng.standard_normal(wave.size).astype(np.float32)
            wave = wave + noise * np.sqrt(power / 10 ** (snr / 10))
        if self.extra is not None and rng.random() < self.probability:
            wave = self.extra(wave, rng)
        return wave.astype(np.float32, copy=False)


@dataclass
class AudioCollator:
    """Batches of decoded clips -> padded model inputs + labels."""

    feature_extractor: Callable
    sampling_rate: int
    max_seconds: float
    train: bool = False
    augment: Augment | None = None
    num_labels: int | None = None
    """Set for multi-label: labels become multi-hot float vectors."""
    seed: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def crop(self, wave: np.ndarray) -> np.ndarray:
        limit = int(self.max_seconds * self.sampling_rate)
        if len(wave) <= limit:
            return wave
        start = int(self._rng.integers(0, len(wave) - limit + 1)) if self.train else 0
        return wave[start : start + limit]

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        waves = [self.crop(np.asarray(e["wave"], dtype=np.float32)) for e in examples]
        if self.train and self.augment is not None:
            waves = [self.augment(w, self._rng, self.sampling_rate) for w in waves]
        batch = self.feature_extractor(
            waves, sampling_rate=self.sampling_rate, padding="longest", return_tensors="pt"
        )
        batch = dict(batch)
        if self.num_labels is None:
            batch["labels"] = torch.tensor([int(e["label"]) for e in examples])
        else:
            hot = torch.zeros(len(examples), self.num_labels)
            for row, example in enumerate(examples):
                hot[row, list(example["label"])] = 1.0
            batch["labels"] = hot
        return batch
