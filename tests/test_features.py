import numpy as np
import torch
from datasets import Dataset
from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2FeatureExtractor

from voxclass.features import (
    Augment,
    PadCollator,
    crop,
    extract_one,
    featurize,
    max_seconds_for,
    min_input_length,
    pad_batch,
)
from voxclass.presets import preset_config


def _clips(seconds, rate=8000):
    rng = np.random.default_rng(0)
    waves = [(rng.standard_normal(int(s * rate)) * 0.1).astype(np.float32) for s in seconds]
    return Dataset.from_dict(
        {"wave": waves, "label": list(range(len(waves))), "length": [len(w) for w in waves]}
    )


def test_max_duration_comes_from_the_data_not_one_second():
    lengths = np.array([3.0] * 95 + [20.0] * 5) * 16000
    assert max_seconds_for(lengths, 16000) == 3.85  # 95th percentile, not the 20 s outliers
    assert max_seconds_for(np.array([0.2] * 10) * 16000, 16000) == 1.0  # floor
    assert max_seconds_for(np.array([90.0] * 10) * 16000, 16000) == 30.0  # cap


def test_training_crops_randomly_evaluation_from_the_start():
    wave = np.arange(100, dtype=np.float32)
    assert np.array_equal(crop(wave, 40, None), wave[:40])
    starts = {crop(wave, 40, np.random.default_rng(s))[0] for s in range(20)}
    assert len(starts) > 5 and all(0 <= x <= 60 for x in starts)
    assert crop(wave, 200, None) is wave


def test_features_are_stored_unpadded_one_clip_at_a_time():
    _, extractor = preset_config("tiny")
    ds = _clips([0.5, 3.0])
    stored = featurize(ds, extractor, 8000, max_seconds=10)
    for row, wave in zip(stored, ds["wave"], strict=True):
        alone = extractor(np.asarray(wave), sampling_rate=8000)["input_features"][0]
        np.testing.assert_allclose(row["inputs"], alone, atol=1e-6)
    assert stored[0]["inputs"].shape[0] < stored[1]["inputs"].shape[0] / 4


def test_training_copies_are_clean_plus_augmented_and_deterministic():
    _, extractor = preset_config("tiny")
    ds = _clips([1.0, 1.5])
    a = featurize(ds, extractor, 8000, 10, Augment(), copies=3, seed=1)
    b = featurize(ds, extractor, 8000, 10, Augment(), copies=3, seed=1)
    clean = featurize(ds, extractor, 8000, 10)
    assert len(a) == 6 and sorted(a["label"]) == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(a[0]["inputs"], clean[0]["inputs"])  # copy 0 is clean
    assert a[2]["inputs"].shape != clean[0]["inputs"].shape  # speed-perturbed copy
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])


def test_augment_changes_gain_noise_and_speed():
    wave = np.sin(np.arange(8000) / 5).astype(np.float32)
    out = Augment(probability=1.0, speed=(1.2, 1.2))(wave, np.random.default_rng(0), 8000)
    assert abs(len(out) - 8000 / 1.2) < 5  # faster speech is shorter
    still = Augment(probability=0.0, speed=(1.0, 1.0))(wave, np.random.default_rng(0), 8000)
    np.testing.assert_array_equal(still, wave)


def test_padding_is_per_batch_and_mask_only_where_the_extractor_gives_one():
    _, extractor = preset_config("tiny")
    stored = featurize(_clips([0.5, 1.0, 3.0]), extractor, 8000, 10)
    short = PadCollator(extractor)([stored[0], stored[1]])
    assert short["input_features"].shape[1] == stored[1]["inputs"].shape[0]  # not the 3 s one
    assert short["attention_mask"].sum(1).tolist() == [
        len(stored[0]["inputs"]),
        len(stored[1]["inputs"]),
    ]
    assert short["labels"].tolist() == [0, 1]

    plain = Wav2Vec2FeatureExtractor(return_attention_mask=False)  # as wav2vec2-base
    raw = featurize(_clips([0.5, 1.0], rate=16000), plain, 16000, 10)
    batch = PadCollator(plain)(list(raw))
    assert "attention_mask" not in batch and batch["input_values"].shape == (2, 16000)
    assert isinstance(extractor, SeamlessM4TFeatureExtractor)


def test_batches_of_very_short_clips_still_fit_specaugment_masks():
    from voxclass.model import build_model

    model, extractor = build_model("tiny", ["a", "b"])
    need = min_input_length(model)
    assert need == model.config.mask_time_length + 1
    stored = featurize(_clips([0.1, 0.12]), extractor, 8000, 10)  # 2 frames each
    batch = PadCollator(extractor, need)(list(stored))
    assert batch["input_features"].shape[1] == need
    assert batch["attention_mask"].sum(1).tolist() == [len(x) for x in stored["inputs"]]
    model.train()(**batch)  # SpecAugment masks fit: no error

    raw_model, _ = build_model("tiny-wav2vec2", ["a", "b"])
    samples = min_input_length(raw_model)
    frames = raw_model._get_feat_extract_output_lengths(torch.tensor(samples))
    assert int(frames) > raw_model.config.mask_time_length


def test_gain_shift_and_noise_each_change_the_wave_deterministically():
    wave = np.sin(np.arange(8000) / 5).astype(np.float32)
    quiet = (200.0, 200.0)  # SNR so high the noise is negligible

    def run(seed=0, **kw):
        opts = {"speed": (1.0, 1.0), "probability": 1.0, "gain_db": 0.0, "shift_seconds": 0.0}
        return Augment(**{"noise_snr_db": quiet, **opts, **kw})(
            wave, np.random.default_rng(seed), 8000
        )

    gained = run(gain_db=6.0)
    ratio = gained / np.where(wave == 0, 1, wave)
    assert np.ptp(ratio[np.abs(wave) > 0.1]) < 1e-3 and abs(ratio[1] - 1) > 0.01
    shifted = run(shift_seconds=0.2)
    lag = np.nonzero(
        [np.allclose(np.roll(wave, k), shifted, atol=1e-4) for k in range(-1600, 1601)]
    )
    assert lag[0].size == 1 and lag[0][0] != 1600  # a pure non-zero circular shift
    noisy = run(noise_snr_db=(10.0, 10.0))
    assert np.isclose(np.mean((noisy - wave) ** 2) / np.mean(wave**2), 0.1, rtol=0.1)
    for kw in ({"gain_db": 6.0}, {"shift_seconds": 0.2}, {"noise_snr_db": (10.0, 10.0)}):
        np.testing.assert_array_equal(run(3, **kw), run(3, **kw))
        assert not np.array_equal(run(3, **kw), run(4, **kw))


def test_augment_mixes_in_the_given_noise_recordings_instead_of_white_noise():
    wave = np.sin(np.arange(8000) / 5).astype(np.float32)
    hum = np.full(100, 0.3, np.float32)  # a recording whose every stretch is the same constant
    opts = {"speed": (1.0, 1.0), "probability": 1.0, "gain_db": 0.0, "shift_seconds": 0.0}
    out = Augment(noise_snr_db=(0.0, 0.0), noises=[hum], **opts)(
        wave, np.random.default_rng(0), 8000
    )
    added = out.astype(np.float64) - wave
    assert np.ptp(added) < 1e-6  # the constant recording, not white noise
    assert np.isclose(np.mean(added**2), np.mean(wave.astype(np.float64) ** 2), rtol=1e-3)  # 0 dB


def test_the_model_sees_what_pipeline_lets_it_see():
    """SeamlessM4T pads an odd count of mel frames to an even one and masks the stacked frame
    holding the pad: `extract_one` drops that frame, so a batch of one (every frame unmasked)
    scores as transformers' own extractor output does with its mask (as `pipeline` runs it)."""
    from voxclass.model import build_model

    torch.manual_seed(0)
    model, extractor = build_model("tiny-fine", ["a", "b", "c"])  # stride 2
    model.eval()
    rate = extractor.sampling_rate
    for mel_frames in (49, 48):  # 400-sample frames every 160 samples
        samples = 400 + 160 * (mel_frames - 1)
        wave = np.random.default_rng(samples).standard_normal(samples).astype(np.float32) / 10
        theirs = extractor(wave, sampling_rate=rate, return_tensors="pt")
        ours = pad_batch(extractor, [extract_one(extractor, wave, rate)])
        padded = theirs["attention_mask"].shape[1] - int(theirs["attention_mask"].sum())
        assert padded == mel_frames % 2  # the odd count's last stacked frame is masked
        assert ours["attention_mask"].shape[1] == int(theirs["attention_mask"].sum())
        with torch.no_grad():
            torch.testing.assert_close(model(**ours).logits, model(**theirs).logits)
