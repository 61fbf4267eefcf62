from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
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


@pytest.mark.parametrize("preset", ["tiny", "tiny-fine", "small", "tiny-wav2vec2"])
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


def test_readme_pipeline_snippet_runs_on_a_trained_model(trained_tone_model, tmp_path, capsys):
    # The README's plain-transformers snippet, as written, on a 16 kHz clip for an 8 kHz model:
    # it must resample itself (pipeline() would need torchaudio) and find the right label.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = readme.split("It loads without voxclass:\n\n```python\n", 1)[1].split("```", 1)[0]
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.stack([burst(TONES["high"], 1.2, 16000)] * 2, axis=1), 16000)  # stereo
    code = snippet.replace('"runs/tiny"', repr(str(trained_tone_model)))
    exec(code.replace('"clip.wav"', repr(str(clip))), {})
    printed = capsys.readouterr().out
    assert printed.startswith("[{'score'") and "'label': 'high'" in printed.split("}")[0]


def test_predict_given_a_list_says_to_use_predict_batch(trained_tone_model):
    clf = Classifier.load(trained_tone_model)
    with pytest.raises(TypeError, match="predict_batch"):
        clf.predict(["a.wav", "b.wav"])
    with pytest.raises(TypeError, match="predict\\(\\)"):
        clf.predict_batch("a.wav")


@pytest.mark.parametrize("preset", ["tiny", "tiny-fine", "tiny-wav2vec2"])
def test_clips_shorter_than_the_model_input_are_padded_with_silence(preset, tmp_path):
    model, extractor = build_model(preset, ["a", "b"])
    model.eval().save_pretrained(tmp_path)
    extractor.save_pretrained(tmp_path)
    clf = Classifier.load(tmp_path)
    # tiny: SeamlessM4T's first stacked log-mel frame; tiny-fine: two mel frames, since one
    # is normalized to NaN; wav2vec2: its conv receptive field.
    assert clf.min_samples == {"tiny": 720, "tiny-fine": 560, "tiny-wav2vec2": 400}[preset]
    extract = clf.extractor.model_input_names[0]
    too_short = clf.extractor(np.zeros(clf.min_samples - 1), sampling_rate=clf.sampling_rate)
    assert preset != "tiny" or len(too_short[extract][0]) == 0
    rng = np.random.default_rng(0)
    click = 0.1 * rng.standard_normal(7).astype(np.float32)
    padded = np.pad(click, (0, clf.min_samples - 7))
    lengths = range(1, clf.min_samples + 400, 13)
    waves = [rng.standard_normal(n).astype(np.float32) for n in lengths]
    for wave in (np.ones(1, np.float32), click, *waves):
        assert np.isfinite(clf.probabilities([wave])).all(), len(wave)
    np.testing.assert_allclose(clf.probabilities([click]), clf.probabilities([padded]), atol=1e-6)


def test_predict_waves_scores_decoded_waves_without_decoding_again(trained_tone_model):
    clf = Classifier.load(trained_tone_model)
    waves = [burst(TONES[x], 1.0, clf.sampling_rate, seed=3) for x in ("low", "mid")]
    results = clf.predict_waves(waves, ["first", "second"], top_k=99)
    assert [r.source for r in results] == ["first", "second"]
    assert [r.labels[0] for r in results] == ["low", "mid"]
    assert all(len(r.labels) == 3 for r in results)  # top-k above the label count: all
