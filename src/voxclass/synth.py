"""Spoken training data from text: a phrase file in, an audiofolder of synthetic speech out.

A phrase file (YAML) maps each label to phrasings whose `{slot}` fields are filled with random
values of that slot (`phrases/banking.yaml` is the 14 MInDS-14 banking intents, the default;
`phrases/digits.yaml` the ten FSDD digit words):

    labels:
      balance: ["what's my balance", "how much is in my {account}"]
    slots:
      account: ["current account", "savings account"]

Speech comes from espeak-ng as shipped in the `espeakng-loader` wheel (no system packages),
driven through its C API with ctypes. Each clip is said by an English accent + voice variant
(every English accent and every human-like variant espeak-ng ships) at a varied rate and pitch,
then passed through a channel: telephone (300-3400 Hz band, like MInDS-14), wideband, or room
(wideband with reverberation), with light noise.

Test clips use voice variants never used in train, so the test score says something about
speakers the model has not heard. Validation clips are new clips by the training voices: training
picks its best epoch on them, so the test split is used once, for the final figure. The optional
`test_new_wording` split holds out a fixed part of each label's phrasings (never said in any
other split) and is spoken by the test voices: a figure for wording the model never heard.
"""

from __future__ import annotations

import csv
import ctypes
import os
import random
import re
import shutil
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import yaml
from scipy.signal import butter, fftconvolve, sosfilt

from .config import ConfigError, publish_folder, recover_interrupted_write, staging_folder

CHANNELS = ("telephone", "wideband", "room")
SAMPLING_RATES = (8000, 16000)
NEW_WORDING_SPLIT = "test_new_wording"
# English voices for another writing system, not another accent (Shavian alphabet).
_NOT_ACCENTS = {"en-shaw"}
# Stress marks espeak-ng puts before a phoneme name ("'oU"); a pause is a name starting "_".
_STRESS_MARKS = "',%="


@dataclass(frozen=True)
class Phrases:
    """A parsed phrase file: label -> phrasings, slot -> values (all non-empty)."""

    labels: dict[str, list[str]]
    slots: dict[str, list[str]]
    source: str
    """Where the phrases came from (a path, or the name of a shipped file)."""


def shipped_phrase_files() -> list[str]:
    """Names of the phrase files shipped in the package (`banking`, `digits`, ...)."""
    folder = resources.files("voxclass") / "phrases"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _text_list(values, where: str, source: str) -> list[str]:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{source}: {where} has no entries; give it a non-empty list")
    for i, value in enumerate(values, start=1):
        # YAML reads `yes`, `no` or `1` as a bool or a number: a quoted string is what was meant
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{source}: {where}, entry {i} ({value!r}) is not text; quote it")
    return list(values)


def _fields(phrasing: str, where: str, source: str) -> list[str]:
    try:
        return [field for _, field, _, _ in string.Formatter().parse(phrasing) if field is not None]
    except ValueError as err:
        raise ConfigError(
            f"{source}: {where} {phrasing!r}: {err} (write a literal brace as {{{{ or }}}})"
        ) from None


def parse_phrases(data, source: str) -> Phrases:
    """Check a phrase file's content (`labels:` and optional `slots:`) and return it parsed.
    Every problem is a ConfigError naming the file and the label, slot or phrasing."""
    if not isinstance(data, dict) or not isinstance(data.get("labels"), dict):
        raise ConfigError(f"{source}: a phrase file maps `labels:` to phrasings (see README)")
    unknown = sorted(set(data) - {"labels", "slots"})
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: labels, slots")
    slots_data = data.get("slots") or {}
    if not isinstance(slots_data, dict):
        raise ConfigError(f"{source}: `slots:` maps each slot name to a list of values")
    slots = {str(k): _text_list(v, f"slot '{k}'", source) for k, v in slots_data.items()}
    if not data["labels"]:
        raise ConfigError(f"{source}: `labels:` is empty; give at least one label")
    labels = {}
    for key, phrasings in data["labels"].items():
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            # YAML reads yes/no/on/off as booleans and 1.5 as a number
            raise ConfigError(f"{source}: label {key!r} is not text; quote it in the file")
        label = str(key)  # the digit labels 0..9 are read as integers: their text is exact
        if not label.strip() or label.startswith(".") or re.search(r"[/\\]", label):
            raise ConfigError(f"{source}: label {label!r} cannot be a folder name; rename it")
        labels[label] = _text_list(phrasings, f"label '{label}'", source)
        for phrasing in labels[label]:
            for field in _fields(phrasing, f"label '{label}'", source):
                if field not in slots:
                    known = ", ".join(sorted(slots)) or "none"
                    raise ConfigError(
                        f"{source}: label '{label}' uses unknown slot {{{field}}} in "
                        f"{phrasing!r}; add it under `slots:` (slots: {known})"
                    )
    return Phrases(labels=labels, slots=slots, source=source)


def load_phrases(name_or_path: str | Path) -> Phrases:
    """A phrase file by path, or by the name of a shipped one (`banking`, `digits`)."""
    path = Path(name_or_path)
    if not path.exists() and str(name_or_path) in shipped_phrase_files():
        shipped = resources.files("voxclass") / "phrases" / f"{name_or_path}.yaml"
        return parse_phrases(yaml.safe_load(shipped.read_text()), str(name_or_path))
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such phrase file (or give a shipped one: "
            f"{', '.join(shipped_phrase_files())})"
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        mark = getattr(err, "problem_mark", None)  # YAML syntax errors say where
        reason = (
            f"{err.problem} at line {mark.line + 1}"
            if mark is not None and getattr(err, "problem", None)
            else str(err).splitlines()[0] or type(err).__name__
        )
        raise ConfigError(f"{path}: cannot read the phrase file ({reason})") from None
    return parse_phrases(data, str(path))


def _is_human_like(variant_text: str) -> bool:
    """Callers are people: skip variants that warp the first three formants beyond 75-130 %
    (vocal tracts no adult has), use the Klatt synthesizer's robotic timbre, add heavy echo,
    or replace voicing (whisper, croak)."""
    text = variant_text.lower()
    for match in re.finditer(r"^\s*formant\s+([1-3])\s+(\d+)", text, re.M):
        if not 75 <= int(match.group(2)) <= 130:
            return False
    echo = re.search(r"^\s*echo\s+\d+\s+(\d+)", text, re.M)
    return not (re.search(r"^\s*klatt\b", text, re.M) or (echo and int(echo.group(1)) > 20))


def all_variants(data_path: str) -> list[str]:
    """Every voice variant espeak-ng ships, sorted."""
    return sorted(os.listdir(os.path.join(data_path, "voices", "!v")))


def human_variants(data_path: str) -> list[str]:
    """Human-like voice variants shipped by espeak-ng, sorted: the same list on every machine."""
    folder = os.path.join(data_path, "voices", "!v")
    return [
        name
        for name in all_variants(data_path)
        if " " not in name
        and name not in ("croak", "whisper", "whisperf")
        and _is_human_like(open(os.path.join(folder, name), errors="ignore").read())
    ]


def english_accents(data_path: str) -> list[str]:
    """Every English accent espeak-ng ships (its voice files whose language is `en*`), sorted."""
    accents = set()
    for root, _, files in os.walk(os.path.join(data_path, "lang")):
        for name in files:
            with open(os.path.join(root, name), errors="ignore") as f:
                if re.search(r"^language\s+en(\s|-)", f.read(), re.M):
                    accents.add(name.lower())
    return sorted(accents - _NOT_ACCENTS)


@dataclass
class SynthConfig:
    """What `voxclass synth` makes."""

    out: Path
    """Output folder: OUT/<split>/<label>/*.wav and OUT/metadata.csv."""
    phrases: str = "banking"
    """Phrase file (YAML), or the name of a shipped one: banking, digits."""
    train_per_label: int = 120
    """Training clips per label."""
    test_per_label: int = 30
    """Test clips per label (spoken by voices never used in train)."""
    validation_per_label: int = 10
    """Validation clips per label (training voices, new clips; for choosing the best epoch)."""
    new_wording_per_label: int = 0
    """Clips per label in `test_new_wording`: held-out phrasings, said by the test voices."""
    new_wording_fraction: float = 0.25
    """With new_wording_per_label: the part of each label's phrasings held out of every other
    split (the last ones in the file; at least one, never all)."""
    test_voice_fraction: float = 0.25
    """Fraction of the voice variants reserved for the test splits (0: every voice in every
    split, for synthetic training data alone)."""
    accents: list[str] | None = None
    """espeak-ng English accents to use (e.g. en-us,en-gb-x-rp); default: every one shipped."""
    variants: list[str] | None = None
    """espeak-ng voice variants to use (e.g. m1,f2); default: every human-like one shipped."""
    channel: str = "telephone"
    """telephone (300-3400 Hz band), wideband, or room (wideband with reverberation)."""
    sampling_rate: int = 8000
    """Stored rate, 8000 or 16000 Hz; 8 kHz telephone audio like MInDS-14 by default."""
    noise_db: float = -45.0
    """Level of the background noise added on the line (dBFS, RMS)."""
    seed: int = 0
    """Same seed, same files, bit for bit."""

    def per_label(self) -> dict[str, int]:
        """Clips per label in each split that gets any."""
        counts = {
            "train": self.train_per_label,
            "test": self.test_per_label,
            "validation": self.validation_per_label,
            NEW_WORDING_SPLIT: self.new_wording_per_label,
        }
        return {split: n for split, n in counts.items() if n}

    @property
    def clips(self) -> int:
        """How many clips the data set holds, all splits together."""
        return len(load_phrases(self.phrases).labels) * sum(self.per_label().values())


def check(config: SynthConfig) -> None:
    """Settings that cannot work are a ConfigError before any audio is made."""
    if config.channel not in CHANNELS:
        raise ConfigError(f"--channel {config.channel!r}: choose {', '.join(CHANNELS)}")
    if config.sampling_rate not in SAMPLING_RATES:
        raise ConfigError(f"--sampling-rate {config.sampling_rate}: choose 8000 or 16000")
    counts = (
        config.train_per_label,
        config.test_per_label,
        config.validation_per_label,
        config.new_wording_per_label,
    )
    if min(counts) < 0 or not sum(counts):
        raise ConfigError("clips per label: give counts >= 0, at least one of them above 0")
    for name in ("test_voice_fraction", "new_wording_fraction"):
        if not 0 <= getattr(config, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: give a fraction in [0, 1)")
    uses_test_voices = config.test_per_label or config.new_wording_per_label
    if uses_test_voices and not config.test_voice_fraction:
        raise ConfigError("test clips need test voices: give --test-voice-fraction above 0")


def voice_pools(config: SynthConfig, data_path: str) -> tuple[list[str], list[str]]:
    """The accents and the voice variants to draw from; a name espeak-ng lacks is an error."""
    pools = []
    for name, chosen, shipped in (
        ("accents", config.accents, english_accents(data_path)),
        ("variants", config.variants, human_variants(data_path)),
    ):
        known = shipped if name == "accents" else all_variants(data_path)
        missing = [v for v in chosen or [] if v not in known]
        if missing:
            raise ConfigError(
                f"--{name}: espeak-ng has no {name[:-1]} {', '.join(map(repr, missing))} "
                f"(it has: {', '.join(known)})"
            )
        pools.append(list(chosen) if chosen else shipped)
    accents, variants = pools
    if config.test_voice_fraction and len(variants) < 2:
        raise ConfigError(
            "--variants: test voices must differ from training voices, so give at least two "
            "variants (or --test-voice-fraction 0 without test clips)"
        )
    return accents, variants


class Espeak:
    """Minimal ctypes binding to libespeak-ng from the espeakng-loader wheel (synchronous mode)."""

    _RATE, _PITCH, _RANGE = 1, 3, 4

    def __init__(self) -> None:
        import espeakng_loader

        self.data_path = espeakng_loader.get_data_path()
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.sampling_rate = self._lib.espeak_Initialize(2, 0, self.data_path.encode(), 0)
        if self.sampling_rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise")
        self._chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(
            ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
        )
        self._callback = callback_type(self._collect)  # kept alive: C holds a pointer to it
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self._lib.espeak_TextToPhonemes.argtypes = [
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_int,
            ctypes.c_int,
        ]

    def _collect(self, wav, n, _events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def say(
        self, text: str, voice: str, rate: int, pitch: int, pitch_range: int, seed: int = 0
    ) -> np.ndarray:
        """Speak `text`; float32 mono at `self.sampling_rate`."""
        # espeak-ng draws voice flutter and breath noise from its own generator: seed it from
        # the clip so that the random part is the clip's own.
        self._lib.espeak_ng_SetRandSeed(seed)
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ConfigError(f"espeak-ng has no voice {voice!r}")
        for param, value in ((self._RATE, rate), (self._PITCH, pitch), (self._RANGE, pitch_range)):
            self._lib.espeak_SetParameter(param, value, 0)
        self._chunks.clear()
        data = text.encode()
        self._lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 1, None, None)
        self._lib.espeak_Synchronize()
        return np.concatenate(self._chunks).astype(np.float32) / 32768.0

    def phonemes(self, text: str, voice: str) -> list[str]:
        """The phonemes `voice` says for `text`, as espeak-ng's ASCII phoneme names (`h`, `@`,
        `oU`, `3:`), stress marks and pauses removed: what `say` speaks, without its timing."""
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ConfigError(f"espeak-ng has no voice {voice!r}")
        remaining = ctypes.c_char_p(text.encode())
        names: list[str] = []
        while remaining.value:  # one clause per call; espeak-ng moves the pointer on
            # textmode 1: UTF-8; phonememode: ASCII names, separated by spaces (bits 8-23)
            clause = self._lib.espeak_TextToPhonemes(ctypes.byref(remaining), 1, ord(" ") << 8)
            for name in (clause or b"").decode(errors="replace").split():
                name = name.lstrip(_STRESS_MARKS)
                if name and not name.startswith("_"):
                    names.append(name)
        return names


def room_impulse_response(rate: int, rng: np.random.Generator) -> np.ndarray:
    """A simple room: the direct sound, then exponentially decaying noise (the diffuse tail)
    with a reverberation time (RT60) of 0.2-0.7 s and a random direct-to-reverberant ratio."""
    rt60 = rng.uniform(0.2, 0.7)
    t = np.arange(int(rt60 * rate)) / rate
    tail = rng.standard_normal(t.size) * np.exp(-6.9 * t / rt60)  # -60 dB at t = rt60
    tail *= 10 ** (-rng.uniform(0, 12) / 20) / np.sqrt(np.sum(tail**2))
    tail[0] = 1.0
    return tail.astype(np.float32)


def apply_channel(
    wave: np.ndarray,
    rate: int,
    out_rate: int,
    channel: str,
    noise_db: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """The line between speaker and recorder: band (telephone) or reverberation (room),
    resampling to `out_rate`, silence around the speech, a random level, background noise."""
    if channel == "telephone":
        wave = sosfilt(butter(4, [300, 3400], btype="bandpass", fs=rate, output="sos"), wave)
    elif channel == "room":
        wave = fftconvolve(wave, room_impulse_response(rate, rng))
    wave = soxr.resample(wave, rate, out_rate).astype(np.float32)
    wave = np.concatenate(
        [
            np.zeros(int(rng.uniform(0.05, 0.3) * out_rate), np.float32),
            wave,
            np.zeros(int(rng.uniform(0.05, 0.3) * out_rate), np.float32),
        ]
    )
    peak = np.abs(wave).max() or 1.0
    wave = wave / peak * 10 ** (rng.uniform(-12, -3) / 20)
    wave += rng.standard_normal(wave.size).astype(np.float32) * 10 ** (noise_db / 20)
    return np.clip(wave, -1.0, 1.0)


def fill_slots(phrasing: str, slots: dict[str, list[str]], rng: random.Random) -> str:
    """The phrasing with each `{slot}` replaced by a random value of that slot."""
    fields = [f for _, f, _, _ in string.Formatter().parse(phrasing) if f is not None]
    return phrasing.format(**{f: rng.choice(slots[f]) for f in dict.fromkeys(fields)})


def split_voices(variants: list[str], test_fraction: float, seed: int) -> tuple[list, list]:
    """Partition voice variants into train and test sets (disjoint, deterministic); with
    `test_fraction` 0 every variant is a training one."""
    shuffled = variants[:]
    random.Random(seed).shuffle(shuffled)
    n_test = max(1, round(len(shuffled) * test_fraction)) if test_fraction else 0
    return sorted(shuffled[n_test:]), sorted(shuffled[:n_test])


def split_wording(phrasings: list[str], fraction: float, label: str) -> tuple[list, list]:
    """A label's phrasings for the usual splits and the held-out ones (the last `fraction`,
    at least one) for `test_new_wording`."""
    held_out = max(1, round(len(phrasings) * fraction))
    if held_out >= len(phrasings):
        raise ConfigError(
            f"label '{label}' has {len(phrasings)} phrasing(s): holding out new wording needs "
            "at least two (add phrasings, or drop --new-wording-per-label)"
        )
    return phrasings[:-held_out], phrasings[-held_out:]


def plan(config: SynthConfig, phrases: Phrases, accents: list, variants: list) -> Iterator[dict]:
    """Every clip to make: label, text, voice and prosody, drawn from one seeded generator."""
    rng = random.Random(config.seed)
    train_variants, test_variants = split_voices(variants, config.test_voice_fraction, config.seed)
    pools = {"train": train_variants, "validation": train_variants}
    wording = {
        label: split_wording(phrasings, config.new_wording_fraction, label)
        if config.new_wording_per_label
        else (phrasings, [])
        for label, phrasings in phrases.labels.items()
    }
    # Splits in a fixed order, validation after test, so that adding validation clips (or the
    # new-wording split) leaves the clips of the splits before it unchanged.
    for split, count in config.per_label().items():
        for label in phrases.labels:
            templates = wording[label][split == NEW_WORDING_SPLIT]
            for i in range(count):
                yield {
                    "split": split,
                    "label": label,
                    "file_name": f"{split}/{label}/{label}_{i:04d}.wav",
                    "text": fill_slots(templates[i % len(templates)], phrases.slots, rng),
                    "voice": f"{rng.choice(accents)}+{rng.choice(pools.get(split, test_variants))}",
                    "rate": rng.randint(130, 210),
                    "pitch": rng.randint(25, 75),
                    "range": rng.randint(20, 80),
                    "seed": rng.randrange(2**31),
                }


def _is_synth_output(folder: Path) -> bool:
    metadata = folder / "metadata.csv"
    return metadata.is_file() and metadata.read_text().startswith("file_name,label,text,voice,")


def synthesize(config: SynthConfig, progress=None) -> dict:
    """Write the data set to `config.out`; return counts and speed.

    The clips are written to a temporary folder beside OUT, which then replaces OUT: a reader
    never sees a half-made set, and no stale clip of an earlier run stays. An existing OUT that
    is not an earlier `voxclass synth` output is left alone (ConfigError)."""
    check(config)
    phrases = load_phrases(config.phrases)
    out = Path(config.out)
    recover_interrupted_write(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not _is_synth_output(out):
        raise ConfigError(
            f"{out}: exists and is not a `voxclass synth` output; give a new or empty folder"
        )
    espeak = Espeak()
    rows = list(plan(config, phrases, *voice_pools(config, espeak.data_path)))
    tmp = staging_folder(out)
    start = time.perf_counter()
    try:
        for row in rows:
            speech = espeak.say(
                row["text"], row["voice"], row["rate"], row["pitch"], row["range"], row["seed"]
            )
            wave = apply_channel(
                speech,
                espeak.sampling_rate,
                config.sampling_rate,
                config.channel,
                config.noise_db,
                np.random.default_rng(row["seed"]),
            )
            path = tmp / row["file_name"]
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, wave, config.sampling_rate, subtype="PCM_16")
            if progress:
                progress()
        seconds = time.perf_counter() - start
        with open(tmp / "metadata.csv", "w", newline="") as f:
            columns = ["file_name", "label", "text", "voice", "split"]
            writer = csv.DictWriter(f, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        publish_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "clips": len(rows),
        "rows": rows,
        "seconds": seconds,
        "clips_per_second": len(rows) / max(seconds, 1e-9),
    }
