"""`voxclass pretrain` and the pretrained backbone path (`--model speech-tiny`)."""

from __future__ import annotations

import faulthandler
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, write_tone_folder

import voxclass.model
import voxclass.pretrain
from voxclass.config import ConfigError
from voxclass.model import ModelError, build_model
from voxclass.pretrain import (
    MARKER,
    VOCAB_WORDS,
    ClipMaker,
    PretrainConfig,
    Voices,
    build,
    collate,
    edit_distance,
    greedy_decode,
    phoneme_vocabulary,
    pretrain,
    train_step,
    word_list,
)
from voxclass.synth import Espeak


def short(out: Path, **fields) -> PretrainConfig:
    """A pretrain run of seconds: a few tiny batches, in the test process."""
    settings = dict(
        out=out,
        hours=0.01,
        batch_size=4,
        max_words=3,
        vocabulary_words=500,
        validation_clips=4,
        workers=0,
        warmup_steps=2,
    )
    return PretrainConfig(**{**settings, **fields})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "encoder"
    pretrain(short(out), log=lambda line: None)
    return out


def test_phonemes_of_known_words():
    espeak = Espeak()
    assert espeak.phonemes("hello", "en-us") == ["h", "@", "l", "oU"]
    # numbers are read out, clause by clause, with stress marks and pauses removed
    assert espeak.phonemes("seven. Two!", "en-us") == ["s", "E", "v", "@", "n", "t", "u:"]
    with pytest.raises(ConfigError, match="no voice 'xx-nowhere'"):
        espeak.phonemes("hello", "xx-nowhere")


def test_shortened_pretrain_writes_a_loadable_directory(pretrained):
    from transformers import AutoModelForAudioClassification, Wav2Vec2BertForCTC

    summary = json.loads((pretrained / MARKER).read_text())
    assert summary["steps"] >= 2 and summary["hours_heard"] >= 0.01
    assert summary["final"]["phoneme_error_rate"] >= 0 and np.isfinite(summary["final"]["loss"])
    assert len(summary["voices"]["accents"]) > 3 and len(summary["voices"]["variants"]) > 10
    vocab = json.loads((pretrained / "vocab.json").read_text())
    assert vocab["<pad>"] == 0 and "oU" in vocab
    card = (pretrained / "README.md").read_text()
    assert "voxclass pretrain --out" in card and f"{summary['clips']:,} clips" in card

    ctc = Wav2Vec2BertForCTC.from_pretrained(pretrained)
    assert ctc.config.vocab_size == len(vocab)
    classifier = AutoModelForAudioClassification.from_pretrained(pretrained, num_labels=3)
    for name, value in ctc.wav2vec2_bert.state_dict().items():
        assert classifier.wav2vec2_bert.state_dict()[name].equal(value), name


def test_pretrain_steps_lower_the_loss_on_a_fixed_batch():
    import torch

    torch.manual_seed(0)
    config = short(Path("unused"), vocabulary_words=300)
    espeak = Espeak()
    vocab = phoneme_vocabulary(espeak, Voices.of(espeak).accents, word_list(300)[0])
    model, extractor = build(config, len(vocab))
    make = ClipMaker(config, vocab, extractor.sampling_rate)
    rng = np.random.default_rng(3)
    batch = collate(extractor, [make(rng) for _ in range(4)], extractor.sampling_rate, 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = [train_step(model, optimizer, batch) for _ in range(12)]
    assert losses[-1] < 0.8 * losses[0], losses


def _crashing_batches(crash_in: int):
    """Stand-in for `_batches`: process number `key[2]` makes batches {"process", "i",
    "samples"} (a tensor, as real batches hold), and every process numbered below `crash_in`
    dies of a segfault at its third batch, as espeak-ng does on the rare text that crashes it."""

    def batches(config, vocab, extractor, key):
        for i in itertools.count():
            if key[2] < crash_in and i == 2:
                time.sleep(0.5)  # the reader has not taken the batches sent before: both wait
                faulthandler.disable()  # pytest's would print the stack of the planned crash
                os.kill(os.getpid(), signal.SIGSEGV)
            yield {"process": key[2], "i": i, "samples": torch.full((1000,), float(i))}

    return batches


def test_a_crashed_synthesis_process_is_replaced_and_training_goes_on(monkeypatch):
    monkeypatch.setattr(voxclass.pretrain, "_batches", _crashing_batches(crash_in=1))
    logs = []
    stream = voxclass.pretrain._stream(short(Path("unused"), workers=1), {}, None, logs.append)
    first = next(stream)
    time.sleep(1.0)  # the process crashes with its second batch sent and not yet read
    got = [first] + [next(stream) for _ in range(4)]
    stream.close()
    order = ((0, 0), (0, 1), (1, 0), (1, 1), (1, 2))
    assert [(b["process"], b["i"]) for b in got] == list(order)
    for batch in got:  # a batch sent just before its process died arrives whole
        assert torch.equal(batch["samples"], torch.full((1000,), float(batch["i"])))
    assert logs == ["a synthesis process died (exit code -11); starting another"]


def test_synthesis_that_keeps_crashing_gives_up_in_one_line(monkeypatch):
    monkeypatch.setattr(voxclass.pretrain, "_batches", _crashing_batches(crash_in=99))
    monkeypatch.setattr(voxclass.pretrain, "MAX_RESTARTS", 2)
    stream = voxclass.pretrain._stream(short(Path("unused"), workers=1), {}, None, print)
    with pytest.raises(RuntimeError, match="3 synthesis processes died"):
        for _ in range(20):
            next(stream)


def test_init_goes_on_from_an_earlier_run_with_its_weights_and_validation_clips(
    pretrained, tmp_path
):
    quiet = {"log": lambda line: None}
    with pytest.raises(ConfigError, match="was trained with --seed 0: give another --seed"):
        pretrain(short(tmp_path / "same", init=pretrained), **quiet)
    with pytest.raises(ConfigError, match="not a `voxclass pretrain` output"):
        pretrain(short(tmp_path / "x", init=tmp_path, seed=1), **quiet)

    # Each run in a fresh process, as from the shell: espeak-ng carries a little state from one
    # utterance to the next, so a process makes its validation clips bit for bit only from its
    # start (see test_synth).
    settings = ["--hours", "0.01", "--batch-size", "4", "--max-words", "3",
                "--vocabulary-words", "500", "--validation-clips", "4", "--workers", "0",
                "--warmup-steps", "2"]  # fmt: skip
    first, more = tmp_path / "first", tmp_path / "more"
    for args in (["--out", first], ["--out", more, "--init", first, "--seed", "1"]):
        run = subprocess.run(
            [sys.executable, "-m", "voxclass", "pretrain", *map(str, args), *settings],
            capture_output=True, text=True,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
    earlier = json.loads((first / MARKER).read_text())
    summary = json.loads((more / MARKER).read_text())
    # before its first step it scores what the earlier run ended with: same weights, same clips
    before = summary["history"][0]
    assert before["loss"] == pytest.approx(earlier["final"]["loss"], rel=1e-4)
    assert before["phoneme_error_rate"] == pytest.approx(earlier["final"]["phoneme_error_rate"])
    assert summary["seeds"] == [0, 1] and summary["steps"] >= 2
    assert summary["total_hours_heard"] == pytest.approx(
        earlier["hours_heard"] + summary["hours_heard"]
    )
    card = (more / "README.md").read_text()
    assert earlier["command"] in card and f"--init {first} --seed 1" in card
    with pytest.raises(ConfigError, match="--seed 0"):  # the first run's seed, two runs back
        pretrain(short(tmp_path / "third", init=more, seed=0), **quiet)


def test_init_from_an_output_without_a_recorded_command_still_lists_the_chain(tmp_path):
    from voxclass.pretrain import UNRECORDED, earlier_run

    (tmp_path / "old").mkdir()
    summary = {"command": None, "config": {"seed": 0, "preset": "tiny"}, "hours_heard": 2.0}
    (tmp_path / "old" / MARKER).write_text(json.dumps(summary))
    earlier = earlier_run(short(tmp_path / "new", init=tmp_path / "old", seed=3))
    assert earlier == {"commands": [UNRECORDED], "seeds": [0], "hours_heard": 2.0, "preset": "tiny"}


@pytest.mark.parametrize("damage", ["vocab.json", "model.safetensors"])
def test_init_from_a_damaged_output_is_a_one_line_error(pretrained, tmp_path, damage):
    folder = tmp_path / "damaged"
    shutil.copytree(pretrained, folder)
    (folder / damage).write_bytes(b"{not json or weights")
    with pytest.raises(ConfigError, match=f"--init {folder}: its vocab.json, weights or"):
        pretrain(short(tmp_path / "new", init=folder, seed=1), log=lambda line: None)
    assert not (tmp_path / "new").exists()


def test_greedy_decoding_and_edit_distance():
    import torch

    logits = torch.full((1, 6, 4), -5.0)
    for frame, best in enumerate([2, 2, 0, 2, 3, 0]):
        logits[0, frame, best] = 5.0
    assert greedy_decode(logits, torch.tensor([6])) == [[2, 2, 3]]
    assert greedy_decode(logits, torch.tensor([2])) == [[2]]
    assert edit_distance([2, 2, 3], [2, 3]) == 1 and edit_distance([], [1, 2]) == 2


def test_pretrain_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a `voxclass pretrain` output"):
        pretrain(short(tmp_path / "mine"))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="--preset 'tiny-wav2vec2'"):
        pretrain(short(tmp_path / "new", preset="tiny-wav2vec2"))


@pytest.fixture
def shipped(monkeypatch, tmp_path, pretrained) -> Path:
    """`speech-tiny` resolved to a copy of the shortened pretrain output."""
    folder = tmp_path / "speech-tiny"
    shutil.copytree(pretrained, folder)
    monkeypatch.setattr(voxclass.model, "pretrained_dir", lambda name: folder)
    return folder


def test_train_speech_tiny_fine_tunes_and_loads_in_pipeline(
    shipped, tmp_path, monkeypatch, capsys, no_network
):
    from transformers import pipeline

    from voxclass.audio import load_audio

    data = write_tone_folder(tmp_path / "tones", per_class=4, splits=True)
    code, out, err = run_cli(
        monkeypatch, capsys, "train", "--data", data, "--model", "speech-tiny",
        "--output", tmp_path / "m", "--epochs", "1", "--batch-size", "4",
        "--freeze-layers", "1",
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["labels"] == ["high", "low", "mid"]
    classify = pipeline("audio-classification", model=str(tmp_path / "m"), device="cpu")
    clip = next((data / "test").glob("*/*.wav"))
    rate = classify.feature_extractor.sampling_rate
    top = classify({"raw": load_audio(clip, rate), "sampling_rate": rate}, top_k=3)
    assert {p["label"] for p in top} == {"high", "low", "mid"}
    assert no_network == []


def test_speech_tiny_uses_the_pretrained_learning_rate(shipped):
    from voxclass.model import PRETRAINED_LEARNING_RATE, fine_tuning_rate, made_by_pretrain
    from voxclass.train import TrainConfig, training_arguments

    model, _ = build_model("speech-tiny", ["a", "b"])
    assert made_by_pretrain(model.config)
    assert fine_tuning_rate(model.config) == PRETRAINED_LEARNING_RATE
    config = TrainConfig(source="unused", model="speech-tiny")
    args = training_arguments(config, from_scratch=False, pretrained_rate=PRETRAINED_LEARNING_RATE)
    assert args.learning_rate == PRETRAINED_LEARNING_RATE and args.num_train_epochs == 10
    assert training_arguments(config, from_scratch=False).learning_rate == 5e-5


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_missing_or_corrupt_shipped_weights_are_one_line_errors(
    shipped, damage, tmp_path, monkeypatch, capsys
):
    weights = shipped / "model.safetensors"
    if damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelError, match="speech-tiny: the shipped weights .* missing or corrupt"):
        build_model("speech-tiny", ["a", "b"])
    data = write_tone_folder(tmp_path / "tones", per_class=2, splits=True)
    code, _, err = run_cli(
        monkeypatch, capsys, "train", "--data", data, "--model", "speech-tiny",
        "--output", tmp_path / "m",
    )  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "reinstall voxclass" in err and not (tmp_path / "m").exists()


def test_the_shipped_speech_tiny_is_a_pretrain_output_the_readme_reproduces():
    from voxclass.model import made_by_pretrain, pretrained_dir

    folder = pretrained_dir("speech-tiny")
    summary = json.loads((folder / MARKER).read_text())
    model, extractor = build_model("speech-tiny", ["a", "b"])
    assert made_by_pretrain(model.config) and extractor.sampling_rate == 8000
    assert model.config.num_labels == 2 and summary["final"]["phoneme_error_rate"] < 0.5
    shipped = json.loads((folder / "vocab.json").read_text())
    espeak = Espeak()
    words = word_list(VOCAB_WORDS)[0]
    assert shipped == phoneme_vocabulary(espeak, Voices.of(espeak).accents, words)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for command in summary.get("commands", [summary["command"]]):
        tokens = command.split()
        folders = {j for i, w in enumerate(tokens) if w in ("--out", "--init") for j in (i, i + 1)}
        options = " ".join(w for i, w in enumerate(tokens[2:], 2) if i not in folders)
        assert options in readme, f"the README does not say how speech-tiny was made: {options}"


def test_pretrain_by_default_makes_the_shape_of_the_shipped_speech_tiny():
    """The README's command remakes speech-tiny only while the default preset has its shape."""
    from transformers import AutoConfig

    from voxclass.model import pretrained_dir
    from voxclass.presets import preset_config

    shipped = AutoConfig.from_pretrained(pretrained_dir("speech-tiny"))
    default, extractor = preset_config(PretrainConfig(out=Path("unused")).preset)
    fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    fields += ("feature_projection_input_dim", "conv_depthwise_kernel_size")
    assert {f: getattr(default, f) for f in fields} == {f: getattr(shipped, f) for f in fields}
    assert extractor.sampling_rate == 8000


def test_speech_tiny_without_shipped_weights_says_how_to_make_them(monkeypatch, tmp_path):
    monkeypatch.setattr(voxclass.model, "pretrained_dir", lambda name: tmp_path / name)
    with pytest.raises(ModelError, match="ships no weights .*`voxclass pretrain --out DIR`"):
        build_model("speech-tiny", ["a", "b"])


def test_cli_pretrain_needs_an_output_folder_and_says_so(monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "pretrain", "--hours", "1")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "error: --out is required (on the command line or as `out:` in --config)"
    ]
