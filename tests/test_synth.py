import csv
import hashlib
import subprocess
import sys

import soundfile as sf

from voxclass.synth import INTENTS, Espeak, SynthConfig, _variants, plan, split_voices

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


def test_intents_and_phrasings():
    assert sorted(INTENTS) == MINDS14
    assert all(len(set(phrases)) >= 15 for phrases in INTENTS.values())


def _synth(out, seed):
    args = ["--train-per-intent", "2", "--validation-per-intent", "1", "--test-per-intent", "1"]
    args += ["--seed", str(seed)]
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
    assert "wrote 56 clips" in printed and "clips/s" in printed
    assert len(_digest(tmp_path / "a")) == 56
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert (tmp_path / "a/metadata.csv").read_bytes() == (tmp_path / "b/metadata.csv").read_bytes()

    rows = list(csv.DictReader((tmp_path / "a/metadata.csv").read_text().splitlines()))
    assert {r["split"] for r in rows} == {"train", "validation", "test"}
    splits = ("train", "validation", "test")
    variant = {s: {r["voice"].split("+")[1] for r in rows if r["split"] == s} for s in splits}
    assert not variant["train"] & variant["test"]  # test voices never speak in train
    train_pool, _ = split_voices(_variants(Espeak().data_path), 0.25, seed=7)
    assert variant["validation"] <= set(train_pool)  # validation: new clips, training voices
    for row in rows:
        path = tmp_path / "a" / row["file_name"]
        assert path.parent.name == row["intent"] and row["text"]
        info = sf.info(path)
        assert info.samplerate == 8000 and info.channels == 1 and info.duration > 0.5


def test_another_seed_plans_other_clips(tmp_path):
    # a third synth run would cost ~15 s; the plan alone decides texts, voices and prosody
    variants = _variants(Espeak().data_path)
    seven = list(
        plan(SynthConfig(out=tmp_path, train_per_intent=2, test_per_intent=1, seed=7), variants)
    )
    eight = list(
        plan(SynthConfig(out=tmp_path, train_per_intent=2, test_per_intent=1, seed=8), variants)
    )
    assert [r["file_name"] for r in seven] == [r["file_name"] for r in eight]
    assert [r["voice"] for r in seven] != [r["voice"] for r in eight]
    assert [r["seed"] for r in seven] != [r["seed"] for r in eight]
