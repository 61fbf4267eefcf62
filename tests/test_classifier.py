import numpy as np
import pytest
import torch
from conftest import TONES, burst
from transformers import pipeline

from voxclass import Classifier
from voxclass.audio import AudioError
from voxclass.model import build_model


def test_predicts_tones_and_matches_transformers_pipeline(trained_tone_model, tmp_path):
    clf = Classifier.load(trained_tone_model)
    assert clf.labels == ["high", "low", "mid"] and clf.backend == "torch"
    reference = pipeline("audio-classification", model=str(trained_tone_model))
    for label, freq in TONES.items():
        wave = burst(freq, 1.2, 8000, seed=42)
        ours = clf.predict(wave, sampling_rate=8000, top_k=3)
        theirs = reference({"raw": wave, "sampling_rate": 8000}, top_k=3)
        assert ours.labels[0] == label
        assert ours.labels == [t["label"] for t in theirs]
        np.testing.assert_allclose(ours.scores, [t["score"] for t in theirs], atol=1e-4)


def test_long_recording_windows_recover_the_classes_in_order(trained_tone_model):
    # A "call" of several requests: one burst per window-sized segment, in a known order.
    clf = Classifier.load(trained_tone_model)
    order = ["low", "high", "mid", "low", "mid"]
    size = int(clf.max_seconds * 8000)
    segments = [
        np.resize(burst(TONES[x], clf.max_seconds, 8000, seed=i), size) for i, x in enumerate(order)
    ]
    wave = np.concatenate(segments)
    result = clf.predict(
        wave, sampling_rate=8000, top_k=1, window=clf.max_seconds, hop=clf.max_seconds
    )
    assert result.duration == pytest.approx(len(wave) / 8000)
    assert [w.labels[0] for w in result.windows] == order
    assert [round(w.start, 3) for w in result.windows] == [
        round(i * size / 8000, 3) for i in range(len(order))
    ]


# What the README claims: a clip's scores differ with its batch by float32 rounding at most
# (0 for most weights; 3e-8 = one rounding step of a probability near 1/3 for some, the padded
# matmuls summing in another order). Padding the whole list at once is off by 1e-4 to 3e-2 for
# `small` and `tiny-wav2vec2` (benchmarks/batch_invariance.py).
BATCH_ROUNDING = 1e-7


@pytest.mark.parametrize("preset", ["tiny", "small", "tiny-wav2vec2"])
@pytest.mark.parametrize("seed", [0, 1])
def test_scores_do_not_depend_on_the_batch(preset, seed, tmp_path):
    torch.manual_seed(seed)
    model, extractor = build_model(preset, ["a", "b", "c"])
    model.eval().save_pretrained(tmp_path)
    extractor.save_pretrained(tmp_path)
    clf = Classifier.load(tmp_path)
    rng = np.random.default_rng(0)
    rate = clf.sampling_rate
    clip = rng.standard_normal(rate).astype(np.float32) * 0.1
    others = [
        rng.standard_normal(int(rate * rng.uniform(0.5, 4))).astype(np.float32) * 0.1
        for _ in range(31)
    ]
    alone = clf.probabilities([clip])[0]
    for size in (8, 32):
        batch = clf.probabilities([clip, *others[: size - 1]], batch_size=size)
        np.testing.assert_allclose(batch[0], alone, rtol=0, atol=BATCH_ROUNDING)
        assert batch[0].argmax() == alone.argmax()


def test_array_needs_rate_and_bad_files_are_named(trained_tone_model, tmp_path):
    clf = Classifier.load(trained_tone_model)
    with pytest.raises(ValueError, match="sampling_rate"):
        clf.predict(np.zeros(100, np.float32))
    (tmp_path / "bad.wav").write_text("hello")
    with pytest.raises(AudioError, match="bad.wav"):
        clf.predict(tmp_path / "bad.wav")


def test_multi_label_model_scores_each_label_with_its_own_sigmoid(tmp_path):
    model, extractor = build_model(
        "tiny", ["a", "b", "c"], problem_type="multi_label_classification"
    )
    model.eval().save_pretrained(tmp_path)
    extractor.save_pretrained(tmp_path)
    clf = Classifier.load(tmp_path)
    assert clf.multi_label
    waves = [burst(freq, 1.0, clf.sampling_rate, seed=i) for i, freq in enumerate(TONES.values())]
    logits = clf._forward(waves[:1])[0]
    probs = clf.probabilities(waves)
    np.testing.assert_allclose(probs[0], 1 / (1 + np.exp(-logits)), rtol=1e-6)
    assert not np.allclose(probs.sum(axis=1), 1.0)
    top = clf.predict(waves[0], sampling_rate=clf.sampling_rate, top_k=3)
    assert top.scores == sorted(top.scores, reverse=True)
    assert top.labels == [clf.labels[i] for i in np.argsort(-probs[0], kind="stable")]
