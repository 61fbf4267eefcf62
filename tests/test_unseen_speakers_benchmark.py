"""benchmarks/unseen_speakers.py: the folds are honest (its --quick run is checked in
test_benchmarks.py with every other benchmark)."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "unseen_speakers.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("unseen_speakers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_fold_keeps_the_held_out_speaker_out_of_training_and_validation(fsdd, tmp_path):
    """Speakers are read back from the file names, not from the benchmark's own columns."""
    bench = load_benchmark()
    rows = bench.clips(fsdd, takes=None)
    bench.write_manifest(bench.fold_splits(rows, "theo"), tmp_path / "fold.csv")
    with open(tmp_path / "fold.csv") as f:
        written = list(csv.DictReader(f))

    def speaker(row: dict) -> str:  # <digit>_<speaker>_<take>.wav
        return Path(row["path"]).name.split("_")[1]

    by_split = {s: [r for r in written if r["split"] == s] for s in ("train", "validation", "test")}
    assert {speaker(r) for r in by_split["test"]} == {"theo"}
    assert len(by_split["test"]) == len(list(fsdd.glob("*/*_theo_*.wav")))
    assert len(written) == len(list(fsdd.glob("*/*.wav")))
    for split in ("train", "validation"):
        assert {speaker(r) for r in by_split[split]} == {"george", "jackson", "nicolas"}
    assert not {r["path"] for r in by_split["validation"]} & {r["path"] for r in by_split["train"]}
    assert {r["label"] for r in by_split["validation"]} == {str(d) for d in range(10)}


def test_variants_combine_and_unknown_names_are_refused():
    bench = load_benchmark()
    combined = bench.variant_named("stride2+noearlystop")
    assert combined.extractor == {"stride": 2}
    assert combined.train == {"early_stopping": 0}
    with pytest.raises(SystemExit, match="unknown variant"):
        bench.variant_named("stride2+nosuch")
    replicate = bench.variant_named("wide+seed12")
    assert replicate.train == {"seed": 12} and replicate.model == bench.VARIANTS["wide"].model
    with pytest.raises(SystemExit, match="unknown variant"):
        bench.variant_named("seedx")


def test_the_mfcc_svm_reference_row_learns_the_digits_of_the_speakers_it_was_given(fsdd):
    """The classical reference must be a working classifier, or its row says nothing: on the
    training speakers' own clips it is near perfect, and the held-out figure is a fraction."""
    bench = load_benchmark()
    splits = bench.fold_splits(bench.clips(fsdd, takes=5), "theo")
    result = bench.mfcc_svm(splits, {"seen": splits["train"], "theo": splits["test"]})
    assert result["accuracy"]["seen"] >= 0.95
    assert 0.0 <= result["accuracy"]["theo"] <= 1.0
    assert bench.variant_named("mfcc_svm") == bench.Variant()


def test_the_text_bow_reference_row_reads_only_what_the_clips_say(fsdd, tmp_path):
    """The text reference classifies the words of the new-wording clips: right on the trained
    phrasings' texts, above chance on the held-out ones, and it refuses clips without text."""
    bench = load_benchmark()
    made = bench.new_wording([], tmp_path, quick=True)
    splits, tests = made["splits"], made["tests"]
    assert all(r["text"] for rows in splits.values() for r in rows)
    result = bench.text_bow(splits, {"seen": splits["train"], **tests})
    assert result["accuracy"]["seen"] == 1.0
    assert result["accuracy"]["unseen wording"] > 2 / 14
    digits = bench.fold_splits(bench.clips(fsdd, takes=2), "theo")
    with pytest.raises(SystemExit, match="--check new-wording"):
        bench.text_bow(digits, {"theo": digits["test"]})
    with pytest.raises(SystemExit, match="--check new-wording"):  # synth-digits: real tests
        bench.text_bow(splits, {"theo": digits["test"]})


def test_the_speech_embedding_reference_row_learns_from_the_encoder_in_the_wheel(fsdd):
    """The row's features are one vector per clip, the same each time; fitted on the training
    speakers, the row is near perfect on their own clips."""
    bench = load_benchmark()
    splits = bench.fold_splits(bench.clips(fsdd, takes=5), "theo")
    path = splits["test"][0]["path"]
    features = bench.speech_embedding_features(path)
    assert features.shape == (192,) and np.isfinite(features).all()
    bench.speech_embedding_features.cache_clear()
    np.testing.assert_array_equal(bench.speech_embedding_features(path), features)
    result = bench.speech_embedding(splits, {"seen": splits["train"], "theo": splits["test"]})
    assert result["accuracy"]["seen"] >= 0.95
    assert 0.0 <= result["accuracy"]["theo"] <= 1.0
    assert bench.variant_named("speech_embedding") == bench.Variant()
