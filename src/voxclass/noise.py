"""Where noise mixing is done: mix a noise into a clip at an exact SNR, and the noises to mix.

`voxclass evaluate --snr` (robustness curves) and training's `--augment-noise DIR` both mix
through `mix_at_snr`. A noise is generated (`white`, `pink`), made from the other clips of the
same split (`babble`), or taken from the user's recordings (a file or a folder of them), which
are decoded through `audio.load_audio` like every other clip.

SNR is power-based over the whole clip: 10·log10(mean(clean²) / mean(noise²)), both measured on
exactly the samples that are added together, so the achieved SNR is the requested one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .audio import AUDIO_EXTENSIONS, AudioError, is_audio_path, load_audio
from .data import DataError

GENERATED = ("white", "pink", "babble")
BABBLE_TALKERS = 4
"""Other clips summed into one babble noise: few enough that it still sounds like speech."""


def power(wave: np.ndarray) -> float:
    """Mean square of a signal (float64, so float32 clips do not lose precision)."""
    return float(np.mean(np.square(wave, dtype=np.float64)))


def loop_to(noise: np.ndarray, length: int, start: int = 0) -> np.ndarray:
    """`length` samples of `noise` from `start` on, wrapping around (looped when shorter)."""
    return noise[(start + np.arange(length)) % len(noise)]


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`clean` plus `noise` scaled so that the mixture's SNR is exactly `snr_db` (float32).

    The noise is looped or cropped (from its start) to the clip's length and its power measured
    on those samples. The result is not clipped to [-1, 1]: models take floats, and clipping
    would change the SNR. A silent clip (all zeros) comes back unchanged: it has no power to set
    a noise level against, and scoring it as-is is more useful than stopping a whole evaluation.
    Raises ValueError for a silent noise, which no gain brings to any SNR.
    """
    clean64 = np.asarray(clean, dtype=np.float64)
    clean_power = power(clean64)
    if clean_power == 0:
        return np.asarray(clean, dtype=np.float32)
    fitted = loop_to(np.asarray(noise, dtype=np.float64), clean64.size)
    noise_power = power(fitted)
    if noise_power == 0:
        raise ValueError("the noise is silent (all zeros): it cannot be scaled to any SNR")
    gain = np.sqrt(clean_power / (noise_power * 10 ** (snr_db / 10)))
    return (clean64 + gain * fitted).astype(np.float32)


def white(length: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian white noise: flat spectrum."""
    return rng.standard_normal(length)


def pink(length: int, rng: np.random.Generator) -> np.ndarray:
    """Pink (1/f) noise: white noise shaped in the frequency domain, power falling 3 dB per
    octave. No DC component (it would only offset the clip)."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    freqs = np.fft.rfftfreq(length)
    shape = np.zeros_like(freqs)
    shape[1:] = 1 / np.sqrt(freqs[1:])  # amplitude ∝ f^-1/2, so power ∝ 1/f
    return np.fft.irfft(spectrum * shape, n=length)


def babble(
    clips: list[np.ndarray],
    index: int,
    rng: np.random.Generator,
    talkers: int = BABBLE_TALKERS,
) -> np.ndarray:
    """Babble for clip `index`: up to `talkers` OTHER clips of `clips`, each at unit power (so no
    talker dominates) from a random start, looped to the clip's length and summed. A clip is
    never babbled with itself. Raises DataError when there is no other clip with sound."""
    length, others = len(clips[index]), len(clips) - 1
    if others < 1:
        raise DataError("babble noise needs at least 2 clips in the split; use white or pink")
    picks = rng.choice(others, size=min(talkers, others), replace=False)
    out = np.zeros(length)
    for pick in picks + (picks >= index):  # skip over `index` itself
        talker = clips[pick]
        talker_power = power(talker)
        if talker_power > 0:
            start = int(rng.integers(len(talker)))
            out += loop_to(np.asarray(talker, np.float64), length, start) / np.sqrt(talker_power)
    if not out.any():
        raise DataError(
            f"babble noise for clip {index}: the other clips drawn are all silent; "
            "remove silent clips or use white or pink"
        )
    return out


def load_recordings(spec: str, sampling_rate: int) -> list[np.ndarray]:
    """The noise recordings at `spec` (one audio file, or every audio file under a folder),
    decoded, mixed to mono and resampled to `sampling_rate`.

    Raises AudioError naming `spec` when it does not exist or holds no audio files, and naming
    every unusable recording (unreadable, corrupt, silent) at once.
    """
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_audio_path(p))
        if not files:
            raise AudioError(
                spec,
                "no noise recordings in this folder (audio files: "
                + ", ".join(sorted(AUDIO_EXTENSIONS))
                + ")",
            )
    elif path.is_file():
        files = [path]
    else:
        raise AudioError(spec, "no such noise file or folder")
    recordings, bad = [], []
    for file in files:
        try:
            wave = load_audio(file, sampling_rate)
        except AudioError as err:
            bad.append(str(err))
            continue
        if power(wave) == 0:
            bad.append(f"{file}: silent (all zeros); a noise recording needs sound")
        else:
            recordings.append(wave)
    if bad:
        raise AudioError(spec, f"{len(bad)} unusable noise recording(s): " + "; ".join(bad))
    return recordings


def from_recordings(
    recordings: list[np.ndarray], length: int, rng: np.random.Generator
) -> np.ndarray:
    """`length` samples of one of `recordings` (chosen at random) from a random start, looped.
    The stretch is never silent as long as the recording is not."""
    recording = recordings[int(rng.integers(len(recordings)))]
    start = int(rng.integers(len(recording)))
    stretch = loop_to(recording, length, start)
    if not stretch.any():  # inside a pause of digital silence: start at the next sound instead
        sound = np.flatnonzero(recording)
        stretch = loop_to(recording, length, int(sound[np.searchsorted(sound, start) % sound.size]))
    return stretch


@dataclass
class Noise:
    """One kind of noise to mix in: `white`, `pink`, `babble`, or recordings from a file or
    folder (`name` is then that path, and `recordings` holds them decoded)."""

    name: str
    recordings: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def load(cls, spec: str, sampling_rate: int) -> Noise:
        """A generated noise by name, else the recordings at path `spec` (see load_recordings)."""
        if spec in GENERATED:
            return cls(spec)
        if not Path(spec).exists():
            raise AudioError(spec, "not white, pink or babble, and no such noise file or folder")
        return cls(spec, load_recordings(spec, sampling_rate))

    def for_clips(self, clips: list[np.ndarray], seed: int) -> list[np.ndarray]:
        """One noise per clip, as long as the clip. Clip i's noise depends only on (seed, i), so
        results do not depend on clip order; mixing the same noise at every SNR makes a
        robustness curve differ between SNRs by level only, not by a new random draw."""
        out = []
        for index, clip in enumerate(clips):
            rng = np.random.default_rng([seed, index])
            if self.name == "white":
                out.append(white(len(clip), rng))
            elif self.name == "pink":
                out.append(pink(len(clip), rng))
            elif self.name == "babble":
                out.append(babble(clips, index, rng))
            else:
                out.append(from_recordings(self.recordings, len(clip), rng))
        return out
