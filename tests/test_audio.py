import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import tone

from voxclass.audio import (
    AudioError,
    AudioLimits,
    decode,
    load_audio,
    prepare_array,
    resample_to,
)


@pytest.mark.parametrize(
    "suffix, fmt, subtype",
    [
        (".wav", "WAV", "PCM_U8"),
        (".wav", "WAV", "PCM_16"),
        (".wav", "WAV", "PCM_24"),
        (".wav", "WAV", "FLOAT"),
        (".flac", "FLAC", "PCM_16"),
        (".ogg", "OGG", "VORBIS"),
        (".mp3", "MP3", "MPEG_LAYER_III"),
    ],
)
def test_decodes_every_format_to_mono_float32_at_model_rate(tmp_path, suffix, fmt, subtype):
    path = tmp_path / f"clip{suffix}"
    sf.write(path, tone(440, 1.0, 22050), 22050, format=fmt, subtype=subtype)
    wave = load_audio(path, 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    # lossy codecs add priming samples; the length is still about one second at 16 kHz
    assert abs(len(wave) - 16000) < 1200
    assert 0.2 < np.abs(wave).max() <= 1.0


def test_stereo_48k_is_mixed_to_mono_and_resampled(tmp_path):
    left, right = tone(440, 1.0, 48000), tone(440, 1.0, 48000) * 0.0
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 48000)
    wave = load_audio(tmp_path / "s.wav", 16000)
    assert len(wave) == 16000
    # the mix of a full and a silent channel has half the amplitude (RMS)
    rms = float(np.sqrt(np.mean(wave**2)))
    assert rms == pytest.approx(float(np.sqrt(np.mean(left**2))) / 2, rel=0.02)


def test_resampling_keeps_the_frequency():
    wave = tone(1000, 1.0, 8000)
    up = resample_to(wave, 8000, 16000)
    spectrum = np.abs(np.fft.rfft(up))
    peak_hz = np.argmax(spectrum) * 16000 / len(up)
    assert len(up) == 16000 and abs(peak_hz - 1000) < 2


def test_real_recordings_8k_to_16k(fsdd):
    path = sorted((fsdd / "7").glob("*.wav"))[0]
    native, rate = decode(path)
    assert rate == 8000
    wave = load_audio(path, 16000)
    assert abs(len(wave) - 2 * native.shape[0]) <= 2
    # energy (mean power) survives resampling
    assert np.mean(wave**2) == pytest.approx(np.mean(native**2), rel=0.1)


def _bad(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.wav"
    if kind == "corrupt":
        sf.write(path, tone(440, 0.5, 8000), 8000)
        data = bytearray(path.read_bytes())
        data[8:16] = b"XXXXXXXX"  # smash the WAVE/fmt chunk ids
        path.write_bytes(bytes(data))
    elif kind == "text":
        path.write_text("path,label\nthis is not audio\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "zero":
        sf.write(path, np.zeros(0, np.float32), 8000)
    elif kind == "nan":
        wave = tone(440, 0.5, 8000)
        wave[100] = np.nan
        sf.write(path, wave, 8000, subtype="FLOAT")
    elif kind == "long":
        sf.write(path, tone(440, 3.0, 8000), 8000)
    return path


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("corrupt", "corrupt"),
        ("text", "not audio"),
        ("empty", "empty file"),
        ("zero", "no audio samples"),
        ("nan", "NaN"),
        ("long", "over the 2 s limit"),
    ],
)
def test_bad_input_names_the_file_and_the_reason(tmp_path, kind, reason):
    path = _bad(tmp_path, kind)
    with pytest.raises(AudioError) as err:
        load_audio(path, 16000, AudioLimits(max_seconds=2))
    assert str(path) in str(err.value) and reason in str(err.value)


def test_missing_file_and_bad_array():
    with pytest.raises(AudioError, match="no such file"):
        load_audio("/nonexistent/clip.wav", 16000)
    with pytest.raises(AudioError, match="NaN"):
        prepare_array(np.array([0.0, np.nan]), 8000, 16000)


def test_bytes_and_datasets_dict_decode_like_the_path(tmp_path):
    path = tmp_path / "a.flac"
    sf.write(path, tone(300, 0.7, 8000), 8000)
    by_path = load_audio(path, 16000)
    np.testing.assert_array_equal(load_audio(path.read_bytes(), 16000), by_path)
    np.testing.assert_array_equal(load_audio({"bytes": None, "path": str(path)}, 16000), by_path)


def test_corrupt_bytes_are_called_corrupt_like_a_corrupt_file(tmp_path):
    # an upload arrives as bytes: the header check must read them from their start
    data = _bad(tmp_path, "corrupt").read_bytes()
    for source in (data, io.BytesIO(data), {"bytes": data, "path": "upload.wav"}):
        with pytest.raises(AudioError, match="corrupt audio file"):
            load_audio(source, 16000)
