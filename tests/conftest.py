"""Shared factories: real audio files written in temp dirs, and tiny trained models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd"
TONES = {"low": 300.0, "mid": 1000.0, "high": 2500.0}


def tone(freq: float, seconds: float, rate: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    """A sine with a little noise, float32 in [-1, 1]; (frames,) or (frames, channels)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.size)
    wave = wave.astype(np.float32)
    return np.repeat(wave[:, None], channels, axis=1) if channels > 1 else wave


def write_tone_folder(root: Path, per_class: int = 6, rate: int = 8000, splits: bool = False):
    """An audiofolder of three tone classes (low/mid/high) with varied lengths."""
    rng = np.random.default_rng(0)
    for split in ("train", "test") if splits else (None,):
        for label, freq in TONES.items():
            folder = root / split / label if split else root / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                seconds = float(rng.uniform(0.5, 1.5))
                sf.write(folder / f"{label}_{i}.wav", tone(freq, seconds, rate, seed=i), rate)
    return root


@pytest.fixture
def tone_folder(tmp_path: Path) -> Path:
    return write_tone_folder(tmp_path / "tones")


@pytest.fixture(scope="session")
def fsdd() -> Path:
    assert FSDD.is_dir(), f"real recordings expected at {FSDD} (see shared/data/README.md)"
    return FSDD
