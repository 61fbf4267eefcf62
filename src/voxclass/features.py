"""From decoded clips to model inputs: crop, augment, extract features once, pad per batch.

The seed recipe cut every clip to 1 s and padded everything to that maximum. Here a clip keeps
up to `max_seconds` (derived from the data), training takes a random crop of longer clips,
evaluation takes the clip from its start, and each batch is padded only to its own longest clip.

Features are extracted once per clip (per augmented copy in training), not once per step: a
log-mel extractor costs more than a small model's forward pass on a CPU. The collator only pads,
through the feature extractor's own `pad`. Inference (`Classifier`) uses the same two steps.

torch is imported only where tensors are made: an exported ONNX model runs on `extract_one` and
`pad_batch(..., return_tensors="np")` without torch installed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .audio import AudioError, load_audio, resample_to
from .noise import from_recordings, mix_at_snr, white

if TYPE_CHECKING:
    import torch
    from datasets import Dataset


def decode_split(ds: Dataset, sampling_rate: int) -> Dataset:
    """Decode every clip once into a float32 `wave` column (+ `length` in samples).

    Files that cannot be used are collected, not skipped: each AudioError message lands in the
    `error` column so the caller can name every bad file at once.
    """

    def decode_one(example: dict) -> dict:
        try:
            wave = load_audio(example["audio"], sampling_rate)
            return {"wave": wave, "length": len(wave), "error": ""}
        except AudioError as err:
            return {"wave": np.zeros(0, np.float32), "length": 0, "error": str(err)}

    return ds.map(decode_one, remove_columns=["audio"])


def max_seconds_for(
    lengths: np.ndarray, sampling_rate: int, percentile: float = 95.0, cap: float = 30.0
) -> float:
    """Longest clip worth keeping whole: a high percentile of the training clip lengths, capped.
    Rarer, longer clips get randomly cropped in training instead of inflating every batch."""
    seconds = float(np.percentile(lengths, percentile)) / sampling_rate
    return round(min(max(seconds, 1.0), cap), 2)


def crop(wave: np.ndarray, limit: int, rng: np.random.Generator | None) -> np.ndarray:
    """At most `limit` samples: a random window when `rng` is given (training), else the start."""
    if len(wave) <= limit:
        return wave
    start = int(rng.integers(0, len(wave) - limit + 1)) if rng is not None else 0
    return wave[start : start + limit]


@dataclass
class Augment:
    """Waveform augmentation for training (each applied with its own probability)."""

    speed: tuple[float, float] = (0.8, 1.25)
    """Speed perturbation range (always applied): resampling scales formants, pitch and rate
    together, the cheapest stand-in for unseen speakers' vocal tracts (cf. VTLP)."""
    gain_db: float = 6.0
    """Random gain in [-gain_db, +gain_db]."""
    noise_snr_db: tuple[float, float] = (10.0, 40.0)
    """Noise mixed in at a random SNR in this range (see `noise.mix_at_snr`)."""
    noises: list[np.ndarray] | None = None
    """Noise recordings at the model's rate (`--augment-noise DIR`, see `noise.load_recordings`):
    a random stretch of one of them is mixed in instead of white noise."""
    shift_seconds: float = 0.2
    """Random circular time shift of up to this much, either way."""
    probability: float = 0.5
    """Chance that each augmentation is applied to a clip."""

    def __call__(self, wave: np.ndarray, rng: np.random.Generator, rate: int) -> np.ndarray:
        factor = rng.uniform(*self.speed)
        if factor != 1.0:
            wave = resample_to(wave, rate, int(rate / factor))  # played back at `rate`
        if rng.random() < self.probability:
            wave = wave * 10 ** (rng.uniform(-self.gain_db, self.gain_db) / 20)
        if rng.random() < self.probability and self.shift_seconds > 0:
            wave = np.roll(wave, int(rng.uniform(-1, 1) * self.shift_seconds * rate))
        if rng.random() < self.probability:
            snr = rng.uniform(*self.noise_snr_db)
            if self.noises:
                noise = from_recordings(self.noises, wave.size, rng)
            else:
                noise = white(wave.size, rng)
            wave = mix_at_snr(wave, noise, snr)
        return wave.astype(np.float32, copy=False)


def extract_one(
    extractor: Callable, wave: np.ndarray, sampling_rate: int, min_samples: int = 0
) -> np.ndarray:
    """Model inputs of one clip, exactly as `pipeline` computes them for that clip alone.

    A wave shorter than `min_samples` (see `min_samples`) is first padded with trailing zeros
    (silence): a 20 ms click is classified instead of crashing the extractor or the model.

    One clip per call: given a list, SeamlessM4T pads every clip to the longest before
    stacking frames (and drops leftover frames), so a clip's features would depend on its
    neighbours. Batches are padded afterwards by `pad_batch`, whose attention mask covers
    every frame returned here: so frames the extractor's own mask leaves out (SeamlessM4T
    pads an odd count of mel frames by one and masks the stacked frame holding it) are
    dropped, which gives the model exactly what `pipeline` lets it see.
    """
    if len(wave) < min_samples:
        wave = np.pad(wave, (0, min_samples - len(wave)))
    name = extractor.model_input_names[0]
    out = extractor(wave, sampling_rate=sampling_rate)
    features = np.asarray(out[name][0], dtype=np.float32)
    if "attention_mask" in out:
        features = features[: int(np.sum(out["attention_mask"][0]))]
    return features


def receptive_field(config: Any) -> int:
    """Samples one output frame of a raw-waveform convolutional feature encoder sees
    (`conv_kernel`/`conv_stride`, 400 for wav2vec2-base); 1 for models without one."""
    kernels, strides = getattr(config, "conv_kernel", ()), getattr(config, "conv_stride", ())
    field = 1
    for kernel, stride in reversed(list(zip(kernels, strides, strict=True))):
        field = (field - 1) * stride + kernel
    return field


def min_samples(extractor: Callable, config: Any = None, sampling_rate: int | None = None) -> int:
    """The shortest wave the model takes: the extractor must give at least one input frame,
    and finite ones (SeamlessM4T log-mel with stride 4: 720 samples; it normalizes each mel
    bin over the clip's frames with ddof=1, so one mel frame gives NaN, which at stride 2
    takes 560 samples), and a raw-waveform convolutional
    encoder (given its `config`) its receptive field. Every shorter clip is padded to this
    length with silence by `extract_one`, in training and inference alike: the rule lives
    here so the two cannot disagree."""
    import warnings

    rate = sampling_rate or extractor.sampling_rate

    def works(length: int) -> bool:
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                features = extract_one(extractor, np.zeros(length, np.float32), rate)
                return len(features) > 0 and bool(np.isfinite(features).all())
        except (ValueError, RuntimeError, IndexError):
            return False

    low, high = 0, 1
    while not works(high):  # doubling, then bisection: a few dozen extractor calls on silence
        low, high = high, high * 2
        if high > 60 * rate:
            raise ValueError(f"{type(extractor).__name__} gives no frames even for 60 s of audio")
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if works(middle) else (middle, high)
    raw_waveform = extract_one(extractor, np.zeros(high, np.float32), rate).ndim == 1
    return max(high, receptive_field(config) if raw_waveform else 1)


def pad_batch(
    extractor: Callable, inputs: list[np.ndarray], min_length: int = 0, return_tensors: str = "pt"
) -> dict[str, Any]:
    """Pad per-clip inputs to the batch's longest (and at least `min_length`), with an
    attention mask exactly when the extractor gives one (wav2vec2-base was trained without
    and must not get one). Torch tensors, or numpy arrays with `return_tensors="np"`."""
    name = extractor.model_input_names[0]
    length = max(min_length, *(len(x) for x in inputs))
    padded = extractor.pad(
        {name: inputs}, padding="max_length", max_length=length, return_tensors=return_tensors
    )
    return dict(padded)


def min_input_length(model: torch.nn.Module) -> int:
    """Shortest batch input the model trains on: the receptive field of a raw-waveform
    encoder, and room for the SpecAugment time masks: a batch of only very short clips (a
    0.1 s spoken digit) would otherwise stop training with an error."""
    config = model.config
    field = receptive_field(config)
    frames = getattr(config, "mask_time_length", 0) + 1
    if getattr(config, "mask_time_prob", 0) <= 0:
        return field if field > 1 else 0
    import torch

    length = max(frames, field)
    while int(model._get_feat_extract_output_lengths(torch.tensor(length))) < frames:
        length *= 2
    return length


def featurize(
    ds: Dataset,
    extractor: Callable,
    sampling_rate: int,
    max_seconds: float,
    augment: Augment | None = None,
    copies: int = 1,
    seed: int = 0,
) -> Dataset:
    """Decoded clips -> the extractor's model inputs (unpadded), one row per clip and copy.

    With `augment` (training) copy 0 is the clean clip and every further copy a random crop with
    its own augmentation; without it (evaluation) a clip is taken from its start. SpecAugment,
    where the model has it and its encoder trains, adds fresh masks on top at every step.
    """
    from datasets import concatenate_datasets

    limit = int(max_seconds * sampling_rate)
    shortest = min_samples(extractor, sampling_rate=sampling_rate)

    def extract(batch: dict, indices: list[int], copy: int) -> dict:
        waves = []
        for index, wave in zip(indices, batch["wave"], strict=True):
            rng = np.random.default_rng([seed, copy, index]) if augment else None
            wave = crop(np.asarray(wave, dtype=np.float32), limit, rng)
            waves.append(augment(wave, rng, sampling_rate) if augment and copy else wave)
        return {
            "inputs": [extract_one(extractor, w, sampling_rate, shortest) for w in waves],
            "length": [max(len(w), shortest) for w in waves],
        }

    parts = [
        ds.map(
            extract,
            batched=True,
            batch_size=64,
            with_indices=True,
            fn_kwargs={"copy": c},
            remove_columns=["wave", "length"],
        )
        for c in range(copies if augment else 1)
    ]
    return concatenate_datasets(parts).with_format(
        "numpy", columns=["inputs", "label"], output_all_columns=True
    )


@dataclass
class PadCollator:
    """Batches of extracted inputs -> padded tensors and labels (see `pad_batch`)."""

    extractor: Callable
    min_length: int = 0
    """Pad every batch to at least this length (see `min_input_length`)."""
    num_labels: int | None = None
    """Multi-label: each example's label is a list of label ids, sent as a float multi-hot row
    of this width (what BCE-with-logits takes). None: one label id per example."""
    speakers: dict[str, int] | None = None
    """Speaker-adversarial training: each example's `group` as a speaker id in `speakers`
    (-100 for a group not in it), sent as `speakers`. None: no speaker ids."""

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        import torch

        batch = pad_batch(self.extractor, [e["inputs"] for e in examples], self.min_length)
        if self.num_labels is None:
            batch["labels"] = torch.tensor([int(e["label"]) for e in examples])
        else:
            hot = torch.zeros(len(examples), self.num_labels)
            for row, example in enumerate(examples):
                hot[row, [int(i) for i in example["label"]]] = 1.0
            batch["labels"] = hot
        if self.speakers is not None:
            ids = [self.speakers.get(e.get("group"), -100) for e in examples]
            batch["speakers"] = torch.tensor(ids)
        return batch
