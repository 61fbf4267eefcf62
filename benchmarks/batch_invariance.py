"""Batch-size and padding invariance per model family: does a clip's score change with what it
is batched with? Prints a table (not a timed test; tests/test_classifier.py asserts the bound).

For each family one 1 s clip is scored alone, then in a batch of 8 and of 32 with random clips
of 0.5-4 s (so up to 4x longer). `voxclass` is `Classifier.probabilities`; `naive` is what a
plain script does: the feature extractor pads the whole list, one forward pass.

    python benchmarks/batch_invariance.py [--with-base] [--quick]

`--with-base` adds a wav2vec2-base-sized model from the default `Wav2Vec2Config()` (95 M
parameters, random weights: the invariance is a property of the computation, not of training).
Weights are seeded, so the table repeats. `--quick` (what the test suite runs) uses batches of
4 and 8 instead of 8 and 32.
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoFeatureExtractor,
    AutoModelForAudioClassification,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
)

from voxclass import Classifier
from voxclass.model import build_model, label_maps

LABELS = ["a", "b", "c"]


def base_model(path: str) -> None:
    from transformers import Wav2Vec2ForSequenceClassification

    Wav2Vec2ForSequenceClassification(Wav2Vec2Config(**label_maps(LABELS))).save_pretrained(path)
    Wav2Vec2FeatureExtractor(return_attention_mask=False).save_pretrained(path)


def naive_probabilities(
    model: Any, extractor: Any, waves: list[np.ndarray], rate: int
) -> np.ndarray:
    """One padded forward over the whole list, as the saved feature extractor pads it, through
    the saved model as transformers loads it (so without what `Classifier` adds)."""
    inputs = extractor(waves, sampling_rate=rate, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**inputs).logits.softmax(-1).numpy()


def measure(path: str, sizes: tuple[int, ...] = (8, 32)) -> dict[str, float]:
    clf = Classifier.load(path)
    rng = np.random.default_rng(0)
    rate = clf.sampling_rate
    clip = rng.standard_normal(rate).astype(np.float32) * 0.1
    others = [
        rng.standard_normal(int(rate * rng.uniform(0.5, 4))).astype(np.float32) * 0.1
        for _ in range(max(sizes) - 1)
    ]
    alone = clf.probabilities([clip])[0]
    plain = AutoModelForAudioClassification.from_pretrained(path).eval()
    plain_extractor = AutoFeatureExtractor.from_pretrained(path)
    row = {"voxclass": 0.0, "naive": 0.0, "top1_same": True}
    for size in sizes:
        batch = [clip, *others[: size - 1]]
        ours = clf.probabilities(batch, batch_size=size)[0]
        naive = naive_probabilities(plain, plain_extractor, batch, rate)[0]
        row["voxclass"] = max(row["voxclass"], float(np.abs(ours - alone).max()))
        row["naive"] = max(row["naive"], float(np.abs(naive - alone).max()))
        row["top1_same"] &= bool(ours.argmax() == alone.argmax())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--with-base", action="store_true", help="add a wav2vec2-base-size model")
    parser.add_argument("--quick", action="store_true", help="smaller batches (seconds)")
    args = parser.parse_args()
    sizes = (4, 8) if args.quick else (8, 32)
    families = {
        "tiny (Wav2Vec2-BERT, mask)": "tiny",
        "small (Wav2Vec2-BERT, mask)": "small",
        "tiny-wav2vec2 (group norm, saved without a mask)": "tiny-wav2vec2",
    }
    if args.with_base:
        families["wav2vec2-base config (group norm, saved without a mask)"] = "base"
    print("| model family | max prob diff, voxclass | max prob diff, naive padding | top-1 same |")
    print("|---|---|---|---|")
    for title, name in families.items():
        torch.manual_seed(0)  # the same random weights on every run, so the table repeats
        with tempfile.TemporaryDirectory() as tmp:
            if name == "base":
                base_model(tmp)
            else:
                model, extractor = build_model(name, LABELS)
                model.save_pretrained(tmp)
                extractor.save_pretrained(tmp)
            row = measure(tmp, sizes)
        print(f"| {title} | {row['voxclass']:.1e} | {row['naive']:.1e} | {row['top1_same']} |")


if __name__ == "__main__":
    main()
