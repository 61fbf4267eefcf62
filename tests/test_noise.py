"""Noise mixing: the achieved SNR is the requested one, noises are what they claim, bad noise
recordings are named."""

import numpy as np
import pytest
import soundfile as sf
from conftest import TONES, burst, tone

from voxclass.audio import AudioError
from voxclass.data import DataError
from voxclass.noise import (
    Noise,
    babble,
    from_recordings,
    load_recordings,
    mix_at_snr,
    pink,
    power,
    white,
)

RATE = 8000
SNRS = [30.0, 12.0, 0.0, -5.0, -20.0]


def achieved_snr(clean: np.ndarray, mixed: np.ndarray) -> float:
    clean64 = clean.astype(np.float64)
    return 10 * np.log10(power(clean64) / power(mixed.astype(np.float64) - clean64))


def clips() -> list[np.ndarray]:
    """Clips of different lengths: noise gets looped and cropped."""
    return [
        burst(freq, seconds, RATE, seed=i)
        for i, (freq, seconds) in enumerate(
            [(TONES["low"], 1.0), (TONES["mid"], 0.4), (TONES["high"], 1.7), (700.0, 0.9)]
        )
    ]


@pytest.fixture
def noise_file(tmp_path):
    """A 0.3 s recording at 16 kHz, stereo: shorter than the clips, another rate and layout."""
    path = tmp_path / "hum.wav"
    rng = np.random.default_rng(5)
    hum = tone(120.0, 0.3, 16000, channels=2) + 0.1 * rng.standard_normal((4800, 2))
    sf.write(path, hum.astype(np.float32), 16000)
    return path


@pytest.mark.parametrize("kind", ["white", "pink", "babble", "file"])
def test_achieved_snr_is_the_requested_one(kind, noise_file):
    noise = Noise.load(str(noise_file) if kind == "file" else kind, RATE)
    waves = clips()
    for clean, drawn in zip(waves, noise.for_clips(waves, seed=42), strict=True):
        assert len(drawn) == len(clean)
        for snr in SNRS:
            mixed = mix_at_snr(clean, drawn, snr)
            assert mixed.dtype == np.float32 and mixed.shape == clean.shape
            assert abs(achieved_snr(clean, mixed) - snr) < 0.1


def test_noise_is_looped_or_cropped_to_the_clip():
    clean = tone(440.0, 1.0, RATE)
    short = np.array([1.0, -1.0, 0.5])
    mixed = mix_at_snr(clean, short, 0.0)
    residual = mixed.astype(np.float64) - clean
    np.testing.assert_allclose(residual[3:6], residual[:3], atol=1e-6)  # looped
    long = np.random.default_rng(0).standard_normal(3 * clean.size)
    assert abs(achieved_snr(clean, mix_at_snr(clean, long, 6.0)) - 6.0) < 0.1  # cropped


def test_a_recording_with_pauses_never_gives_a_silent_stretch():
    paused = np.concatenate([np.zeros(1000), np.ones(10), np.zeros(1000)])
    clean = tone(440.0, 0.01, RATE)  # 80 samples: most starts fall inside a pause
    for seed in range(50):
        stretch = from_recordings([paused], clean.size, np.random.default_rng(seed))
        assert stretch.any()
        assert abs(achieved_snr(clean, mix_at_snr(clean, stretch, 0.0))) < 0.1


def test_silent_clip_is_left_alone_and_silent_noise_is_an_error():
    silent = np.zeros(800, np.float32)
    np.testing.assert_array_equal(mix_at_snr(silent, white(800, np.random.default_rng(0)), 0), 0)
    with pytest.raises(ValueError, match="noise is silent"):
        mix_at_snr(tone(440.0, 0.1, RATE), np.zeros(10), 10.0)


@pytest.mark.parametrize("kind", ["white", "pink", "babble"])
def test_noise_is_deterministic_for_a_seed(kind):
    waves = clips()
    first = Noise(kind).for_clips(waves, seed=7)
    again = Noise(kind).for_clips(waves, seed=7)
    other = Noise(kind).for_clips(waves, seed=8)
    for a, b, c in zip(first, again, other, strict=True):
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, c)


def test_a_clips_generated_noise_depends_only_on_seed_and_its_index():
    waves = clips()
    for kind in ("white", "pink"):
        whole = Noise(kind).for_clips(waves, seed=3)
        prefix = Noise(kind).for_clips(waves[:2], seed=3)
        for a, b in zip(prefix, whole, strict=False):
            np.testing.assert_array_equal(a, b)


def spectrum_slope_db_per_octave(noise: np.ndarray) -> float:
    """Slope of the averaged periodogram (64 segments), fitted in log-log over mid frequencies."""
    segments = noise.reshape(64, -1)
    psd = np.mean(np.abs(np.fft.rfft(segments * np.hanning(segments.shape[1]), axis=1)) ** 2, 0)
    freqs = np.fft.rfftfreq(segments.shape[1])
    band = (freqs > 0.01) & (freqs < 0.4)
    slope = np.polyfit(np.log2(freqs[band]), 10 * np.log10(psd[band]), 1)[0]
    return float(slope)


def test_pink_falls_3_db_per_octave_and_white_is_flat():
    rng = np.random.default_rng(0)
    assert abs(spectrum_slope_db_per_octave(pink(2**16, rng)) + 3.0) < 0.5
    assert abs(spectrum_slope_db_per_octave(white(2**16, rng))) < 0.5


def test_babble_is_the_other_clips_never_the_clip_itself():
    # Clip k is a sine on FFT bin 10*(k+1) of exactly N samples, so a circular shift keeps all of
    # its power on that bin: the babble's spectrum shows which clips are in it.
    n = 1024
    t = np.arange(n)
    waves = [np.sin(2 * np.pi * 10 * (k + 1) * t / n) for k in range(5)]
    for index in range(5):
        for seed in range(5):
            noise = babble(waves, index, np.random.default_rng(seed), talkers=4)
            magnitude = np.abs(np.fft.rfft(noise))
            present = [magnitude[10 * (k + 1)] > 1.0 for k in range(5)]
            assert present == [k != index for k in range(5)]
    few = babble(waves, 0, np.random.default_rng(0), talkers=2)
    assert sum(np.abs(np.fft.rfft(few))[10 * (k + 1)] > 1.0 for k in range(5)) == 2


def test_babble_needs_another_clip():
    with pytest.raises(DataError, match="at least 2 clips"):
        Noise("babble").for_clips([tone(440.0, 0.5, RATE)], seed=0)


def test_recordings_are_resampled_mono_and_a_folder_is_searched(noise_file, tmp_path):
    (tmp_path / "more").mkdir()
    sf.write(tmp_path / "more" / "fan.flac", tone(60.0, 0.5, 8000), 8000)
    (tmp_path / "notes.txt").write_text("not a recording, not an audio extension: ignored")
    recordings = load_recordings(str(tmp_path), RATE)
    assert [r.shape for r in recordings] == [(2400,), (4000,)]  # hum.wav at 8k, more/fan.flac
    assert [r.shape for r in load_recordings(str(noise_file), RATE)] == [(2400,)]


def test_bad_noise_recordings_are_named_with_the_reason(tmp_path):
    with pytest.raises(AudioError, match="whte: not white, pink or babble, and no such noise"):
        Noise.load(str(tmp_path / "whte"), RATE)
    with pytest.raises(AudioError, match="nowhere: no such noise file or folder"):
        load_recordings(str(tmp_path / "nowhere"), RATE)
    with pytest.raises(AudioError, match="no noise recordings in this folder"):
        load_recordings(str(tmp_path), RATE)
    (tmp_path / "text.wav").write_text("this is text, not audio")
    sf.write(tmp_path / "quiet.wav", np.zeros(800, np.float32), RATE)
    sf.write(tmp_path / "good.wav", tone(100.0, 0.2, RATE), RATE)
    with pytest.raises(AudioError) as error:
        load_recordings(str(tmp_path), RATE)
    message = str(error.value)
    assert message.startswith(f"{tmp_path}: 2 unusable noise recording(s)")
    assert "text.wav: not audio" in message and "quiet.wav: silent" in message
    assert "good.wav" not in message
