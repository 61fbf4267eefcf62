import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_tone_folder
from safetensors.torch import load_file
from transformers import pipeline

from voxclass.config import ConfigError
from voxclass.data import DataConfig, DataError, load_data
from voxclass.features import PadCollator
from voxclass.model import build_model
from voxclass.train import TrainConfig, train, word_texts
from voxclass.words import WordHead, targets, vocabulary, words_of


def test_words_are_lower_case_and_keep_their_apostrophes():
    assert words_of("Hi, I'd like my ATM limit... my LIMIT_raised?") == {
        "hi", "i'd", "like", "my", "atm", "limit", "raised"
    }  # fmt: skip


def test_the_vocabulary_keeps_words_said_in_two_transcripts_in_sorted_order():
    vocab = vocabulary(["my card my card", "my balance", "card limit", "balance"])
    assert vocab == {"balance": 0, "card": 1, "my": 2}  # "limit": one transcript only
    assert vocabulary(["one", "two"]) == {}


def test_targets_are_multi_hot_and_a_clip_without_transcript_is_minus_one():
    vocab = {"balance": 0, "card": 1, "my": 2}
    hot = targets(["My card, my card!", "", None, "unheard words"], vocab)
    assert hot.tolist() == [[0, 1, 1], [-1, -1, -1], [-1, -1, -1], [0, 0, 0]]


def test_a_clip_scores_a_word_by_its_best_real_frame():
    torch.manual_seed(0)
    head = WordHead(4, 3)
    frames = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    per_frame = head.out(frames)
    expected = torch.stack([per_frame[0, :3].max(0).values, per_frame[1].max(0).values])
    assert torch.allclose(head(frames, mask), expected)
    assert torch.allclose(head(frames), per_frame.max(1).values)


def test_the_word_loss_is_binary_cross_entropy_over_clips_with_a_transcript():
    torch.manual_seed(0)
    head = WordHead(4, 3)
    frames = torch.randn(3, 5, 4, requires_grad=True)
    hot = torch.tensor([[1.0, 0, 1], [-1, -1, -1], [0, 1, 0]])
    loss = head.loss(frames, hot)
    expected = F.binary_cross_entropy_with_logits(head(frames[[0, 2]]), hot[[0, 2]])
    assert torch.isclose(loss, expected)
    loss.backward()
    assert frames.grad[1].abs().sum() == 0 and frames.grad[[0, 2]].abs().sum() > 0
    # A step along the frames' gradient makes the words more recognizable.
    assert head.loss(frames - 0.5 * frames.grad, hot) < loss
    assert head.loss(frames, torch.full((3, 3), -1.0)).item() == 0.0


def test_the_collator_sends_word_targets_only_when_asked():
    _, extractor = build_model("tiny", ["a", "b"])
    inputs = np.zeros((5, extractor.feature_size * extractor.stride), np.float32)
    examples = [
        {"inputs": inputs, "label": 0, "transcript": "my card"},
        {"inputs": inputs, "label": 1, "transcript": ""},
    ]
    batch = PadCollator(extractor, words={"card": 0, "my": 1, "balance": 2})(examples)
    assert batch["words"].tolist() == [[1, 1, 0], [-1, -1, -1]]
    assert "words" not in PadCollator(extractor)(examples)
    unlabelled = [{k: v for k, v in e.items() if k != "label"} for e in examples]
    assert "labels" not in PadCollator(extractor, words={"card": 0})(unlabelled)


def test_word_clip_texts_are_seeded_runs_of_two_to_eight_vocabulary_words():
    vocab = {w: i for i, w in enumerate(["atm", "card", "limit", "my", "the"])}
    texts = word_texts(vocab, 300, seed=3)
    assert texts == word_texts(vocab, 300, seed=3) and texts != word_texts(vocab, 300, seed=4)
    lengths = [len(t.split()) for t in texts]
    assert min(lengths) == 2 and max(lengths) == 8
    said = [w for t in texts for w in t.split()]
    assert set(said) == set(vocab)
    assert min(said.count(w) for w in vocab) > 0.7 * len(said) / len(vocab)  # evenly drawn


WORDS = {"low": "a low hum please", "mid": "the middle one please", "high": "a high whistle"}


def transcribed_manifest(root: Path, column: str = "text") -> Path:
    """Tone bursts in train and test folders, each with a transcript naming its tone."""
    data = write_tone_folder(root / "data", per_class=6, splits=True)
    rows = [f"path,label,split,{column}"]
    for path in sorted(data.glob("*/*/*.wav")):
        split, label = path.parent.parent.name, path.parent.name
        rows.append(f"{path},{label},{split},{WORDS[label]}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def short_run(manifest: Path, output: Path, weight: float, **fields) -> Path:
    config = TrainConfig(
        source=str(manifest),
        model="tiny",
        output=str(output),
        max_steps=6,
        batch_size=4,
        augment_copies=1,
        early_stopping=0,
        allow_outside_paths=True,
        word_loss=weight,
        **{"word_clips": 12, **fields},
    )
    return train(config)


def test_the_transcript_column_reaches_the_data_and_a_missing_one_is_named(tmp_path):
    manifest = transcribed_manifest(tmp_path)
    data = load_data(DataConfig(source=str(manifest), transcript_column="text"))
    assert set(data["train"]["transcript"]) == set(WORDS.values())
    with pytest.raises(DataError, match="no column 'words' for --transcript-column") as err:
        load_data(DataConfig(source=str(manifest), transcript_column="words"))
    assert "\n" not in str(err.value)


def test_word_targets_change_the_encoder_and_save_a_stock_model(tmp_path):
    manifest = transcribed_manifest(tmp_path)
    plain = short_run(manifest, tmp_path / "plain", 0.0, transcript_column="text")
    worded = short_run(manifest, tmp_path / "worded", 5.0, transcript_column="text")

    counted = [json.loads((m / "metrics.json").read_text())["train"] for m in (worded, plain)]
    # said in two or more training transcripts: a, hum, low, please, the, middle, one, high,
    # whistle (every tone has several training clips)
    assert [c["word_targets"] for c in counted] == [9, 0]
    assert [c["word_clips"] for c in counted] == [12, 0]
    plain_weights = load_file(plain / "model.safetensors")
    weights = load_file(worded / "model.safetensors")
    assert weights.keys() == plain_weights.keys()  # no word head in the saved model
    encoder = [k for k in weights if "encoder.layers.0." in k]
    assert encoder and any(not torch.equal(weights[k], plain_weights[k]) for k in encoder)
    classify = pipeline("audio-classification", model=str(worded), device="cpu")
    rate = classify.feature_extractor.sampling_rate
    result = classify({"raw": np.zeros(rate, np.float32), "sampling_rate": rate})
    assert {r["label"] for r in result} == {"low", "mid", "high"}


def test_word_loss_without_transcripts_is_refused_before_decoding(tmp_path):
    manifest = transcribed_manifest(tmp_path)
    with pytest.raises(ConfigError, match="--transcript-column COLUMN") as err:
        short_run(manifest, tmp_path / "out", 1.0)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="--word-clips 0: give 1 or more"):
        short_run(manifest, tmp_path / "out", 1.0, transcript_column="text", word_clips=0)
