import csv
import hashlib
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from voxclass.config import ConfigError
from voxclass.synth import (
    NEW_WORDING_SPLIT,
    Espeak,
    SynthConfig,
    english_accents,
    human_variants,
    load_phrases,
    plan,
    room_impulse_response,
    split_voices,
    synthesize,
)

MINDS14 = [
    "abroad",
    "address",
    "app_error",
    "atm_limit",
    "balance",
    "business_loan",
    "card_issues",
    "cash_deposit",
    "direct_debit",
    "freeze",
    "high_value_payment",
    "joint_account",
    "latest_transactions",
    "pay_bill",
]


def _digest(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.wav"))
    }


def _rows(root):
    return list(csv.DictReader((root / "metadata.csv").read_text().splitlines()))


def test_shipped_phrase_files():
    banking = load_phrases("banking")
    assert sorted(banking.labels) == MINDS14
    assert all(len(set(phrases)) >= 15 for phrases in banking.labels.values())
    assert sorted(banking.slots) == ["amount", "company", "place"]
    digits = load_phrases("digits")
    assert sorted(digits.labels) == [str(d) for d in range(10)]  # FSDD's folder names
    assert digits.labels["7"][0] == "seven" and not digits.slots


def test_every_english_accent_espeak_ships():
    accents = english_accents(Espeak().data_path)
    assert {"en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc"} <= set(accents)
    assert "en-shaw" not in accents  # an alphabet, not an accent
    assert all(a == "en" or a.startswith("en-") for a in accents)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("labels:\n  a: ['go to {town}']\n  b: [x]\n", "label 'a' uses unknown slot {town}"),
        ("labels:\n  a: []\n  b: [x]\n", "label 'a' has no entries"),
        ("labels:\n  a:\n  b: [x]\n", "label 'a' has no entries"),
        ("labels: {}\n", "`labels:` is empty"),
        ("slots: {x: [y]}\n", "maps `labels:` to phrasings"),
        ("labels:\n  a: [yes, x]\n", "label 'a', entry 1 (True) is not text; quote it"),
        ("labels:\n  a: [x]\nslots:\n  s: []\n", "slot 's' has no entries"),
        ("labels:\n  a: ['{']\n", "label 'a' '{'"),
        ("labels:\n  ../a: [x]\n", "cannot be a folder name"),
        ("labels: [a, b\n", "cannot read the phrase file"),
        ("labels:\n  yes: [x]\n", "label True is not text; quote it"),
        ("labels: {a: [x]}\nvoices: [m1]\n", "unknown key(s) voices"),
    ],
)
def test_bad_phrase_file_is_one_line_naming_it(tmp_path, text, message):
    path = tmp_path / "phrases.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as err:
        load_phrases(path)
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_or_unreadable_phrase_file(tmp_path):
    with pytest.raises(ConfigError, match="no such phrase file.*banking, digits"):
        load_phrases(tmp_path / "nope.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00labels")
    with pytest.raises(ConfigError, match="bin.yaml: cannot read the phrase file"):
        load_phrases(tmp_path / "bin.yaml")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"accents": ["en-us", "en-xx"]}, "no accent 'en-xx'"),
        ({"variants": ["m1", "nobody"]}, "no variant 'nobody'"),
        ({"variants": ["m1"]}, "at least two variants"),
        ({"channel": "radio"}, "--channel 'radio'"),
        ({"sampling_rate": 44100}, "choose 8000 or 16000"),
        ({"phrases": "nope"}, "no such phrase file"),
    ],
)
def test_bad_settings_fail_before_writing(tmp_path, change, message):
    config = SynthConfig(out=tmp_path / "out", train_per_label=1, **change)
    with pytest.raises(ConfigError, match=message):
        synthesize(config)
    assert not (tmp_path / "out").exists()


def _synth(out, seed, *extra):
    args = ["--train-per-label", "2", "--validation-per-label", "1", "--test-per-label", "1"]
    args += ["--new-wording-per-label", "1", "--seed", str(seed), *extra]
    run = subprocess.run(
        [sys.executable, "-m", "voxclass", "synth", str(out), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return run.stdout


def test_synth_is_deterministic_voice_disjoint_telephone_audio(tmp_path):
    # espeak-ng keeps a few samples of state between utterances of one process, so the
    # contract is per run: the same --seed gives the same files, bit for bit.
    printed = _synth(tmp_path / "a", 7)
    _synth(tmp_path / "b", 7)
    assert "wrote 70 clips" in printed and "clips/s" in printed
    assert len(_digest(tmp_path / "a")) == 70
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert (tmp_path / "a/metadata.csv").read_bytes() == (tmp_path / "b/metadata.csv").read_bytes()

    rows = _rows(tmp_path / "a")
    splits = ("train", "validation", "test", NEW_WORDING_SPLIT)
    assert {r["split"] for r in rows} == set(splits)
    variant = {s: {r["voice"].split("+")[1] for r in rows if r["split"] == s} for s in splits}
    assert not variant["train"] & variant["test"]  # test voices never speak in train
    assert not variant["train"] & variant[NEW_WORDING_SPLIT]
    train_pool, test_pool = split_voices(human_variants(Espeak().data_path), 0.25, seed=7)
    assert variant["validation"] <= set(train_pool)  # validation: new clips, training voices
    assert variant[NEW_WORDING_SPLIT] <= set(test_pool)
    for row in rows:
        path = tmp_path / "a" / row["file_name"]
        assert path.parent.name == row["label"] and row["text"]
        info = sf.info(path)
        assert info.samplerate == 8000 and info.channels == 1 and info.duration > 0.5


def test_new_wording_is_never_said_in_other_splits(tmp_path):
    # the plan decides the texts; the held-out phrasings are each label's last quarter
    phrases = load_phrases("banking")
    config = SynthConfig(
        out=tmp_path, train_per_label=40, test_per_label=10, new_wording_per_label=8
    )
    accents, variants = english_accents(Espeak().data_path), human_variants(Espeak().data_path)
    rows = list(plan(config, phrases, accents, variants))
    for label, phrasings in phrases.labels.items():
        held_out = phrasings[-4:]  # 15 phrasings: round(15 * 0.25) = 4

        def said(split, label=label):
            return [r["text"] for r in rows if r["split"] == split and r["label"] == label]

        def from_held_out(text, held_out=held_out):
            patterns = [re.escape(p).replace(r"\{", "{").replace(r"\}", "}") for p in held_out]
            return any(re.fullmatch(re.sub(r"\{\w+\}", ".+", p), text) for p in patterns)

        assert len(said(NEW_WORDING_SPLIT)) == 8
        assert all(from_held_out(t) for t in said(NEW_WORDING_SPLIT))
        assert not any(from_held_out(t) for s in ("train", "validation", "test") for t in said(s))


def test_another_seed_plans_other_clips(tmp_path):
    # a third synth run would cost seconds; the plan alone decides texts, voices and prosody
    phrases, data_path = load_phrases("banking"), Espeak().data_path
    pools = english_accents(data_path), human_variants(data_path)
    seven = list(plan(SynthConfig(out=tmp_path, train_per_label=2, seed=7), phrases, *pools))
    eight = list(plan(SynthConfig(out=tmp_path, train_per_label=2, seed=8), phrases, *pools))
    assert [r["file_name"] for r in seven] == [r["file_name"] for r in eight]
    assert [r["voice"] for r in seven] != [r["voice"] for r in eight]
    assert [r["seed"] for r in seven] != [r["seed"] for r in eight]


def _band_energy(path, low, high):
    wave, rate = sf.read(path)
    spectrum = np.abs(np.fft.rfft(wave)) ** 2
    freqs = np.fft.rfftfreq(wave.size, 1 / rate)
    return spectrum[(freqs >= low) & (freqs < high)].sum() / spectrum.sum()


def test_channels_and_rates_own_phrase_file(tmp_path):
    phrases = tmp_path / "p.yaml"
    phrases.write_text(
        "labels:\n  'yes': [yes please]\n  'no': [no thanks, '{who} no']\n"
        "slots:\n  who: [Anna, Bob]\n"
    )
    made = {}
    for channel in ("telephone", "wideband", "room"):
        out = tmp_path / channel
        stats = synthesize(
            SynthConfig(
                out=out,
                phrases=str(phrases),
                train_per_label=3,
                test_per_label=0,
                validation_per_label=0,
                test_voice_fraction=0,
                channel=channel,
                sampling_rate=16000,
                accents=["en-us"],
                variants=["m1", "f2"],
            )
        )
        assert stats["clips"] == 6 and sorted(p.name for p in out.iterdir()) == [
            "metadata.csv",
            "train",
        ]
        assert sorted(p.name for p in (out / "train").iterdir()) == ["no", "yes"]
        made[channel] = sorted((out / "train").rglob("*.wav"))
        assert all(sf.info(p).samplerate == 16000 for p in made[channel])
        voices = {r["voice"] for r in _rows(out)}
        assert voices <= {"en-us+m1", "en-us+f2"}
    # the telephone band starts at 300 Hz; the voices' fundamental (100-250 Hz) is cut
    assert max(_band_energy(p, 0, 250) for p in made["telephone"]) < 0.04
    assert min(_band_energy(p, 0, 250) for p in made["wideband"] + made["room"]) > 0.04
    response = room_impulse_response(16000, np.random.default_rng(0))
    assert (
        response[0] == 1.0 and np.abs(response[-800:]).max() < 0.01 * np.abs(response[1:800]).max()
    )


def test_rerun_replaces_its_own_output_and_refuses_other_folders(tmp_path):
    config = SynthConfig(out=tmp_path / "s", phrases="digits", train_per_label=2, test_per_label=1)
    synthesize(config)
    synthesize(SynthConfig(**{**vars(config), "train_per_label": 1}))
    assert len(list((tmp_path / "s/train").rglob("*.wav"))) == 10  # no stale clip of run one
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="is not a `voxclass synth` output"):
        synthesize(SynthConfig(**{**vars(config), "out": tmp_path / "mine"}))
    assert (tmp_path / "mine/notes.txt").read_text() == "keep me"


def test_cli_bad_phrase_file_is_one_line_and_exit_2(tmp_path):
    phrases = tmp_path / "p.yaml"
    phrases.write_text("labels:\n  hello: ['hi {name}']\n")
    run = subprocess.run(
        [sys.executable, "-m", "voxclass", "synth", str(tmp_path / "out"), "--phrases", phrases],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"error: {phrases}: label 'hello' uses unknown slot {{name}} in 'hi {{name}}'; "
        "add it under `slots:` (slots: none)"
    ]
    assert not (tmp_path / "out").exists()
