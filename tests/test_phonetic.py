"""phonetic.py and `voxclass train --phoneme-loss`: the pretrained CTC head goes on learning
what the training clips say."""

import json

import pytest
import torch
from safetensors import safe_open

from voxclass.audio import resample_to
from voxclass.config import ConfigError
from voxclass.features import PadCollator, extract_one, pad_batch
from voxclass.model import build_model
from voxclass.phonetic import PhonemeHead, load_head, phoneme_ids
from voxclass.synth import Espeak, SynthConfig, synthesize
from voxclass.train import TrainConfig, train

SENTENCES = ["my card was stolen yesterday", "what is the balance of my account"]


def padded(ids: list[list[int]]) -> torch.Tensor:
    width = max(map(len, ids))
    return torch.tensor([i + [-100] * (width - len(i)) for i in ids])


def test_the_shipped_head_knows_what_was_said_from_the_classifiers_hidden_states():
    """The head is read from speech-tiny's weights and reads the last hidden states of the
    classifier `build_model` makes from it: on two spoken sentences, their own transcripts
    cost far less than each other's."""
    model, extractor = build_model("speech-tiny", ["a", "b"])
    head, vocab = load_head("speech-tiny", dropout=0.0)
    model.eval()
    head.eval()
    espeak, rate = Espeak(), extractor.sampling_rate
    said = [espeak.say(s, "en-us", rate=160, pitch=50, pitch_range=50) for s in SENTENCES]
    waves = [resample_to(w, espeak.sampling_rate, rate) for w in said]
    batch = pad_batch(extractor, [extract_one(extractor, w, rate, 0) for w in waves])
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1]
        frames = model._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1))
        right = float(head.loss(hidden, frames, padded(phoneme_ids(SENTENCES, vocab))))
        swapped = float(head.loss(hidden, frames, padded(phoneme_ids(SENTENCES[::-1], vocab))))
    assert right < 2.0 and swapped > 2 * right, (right, swapped)


def test_phoneme_ids_use_the_vocabulary_its_unknown_id_and_nothing_for_no_text():
    vocab = {"<pad>": 0, "<unk>": 1, "k": 2, "a:": 3}
    card, empty, again = phoneme_ids(["card", " ", "card"], vocab)
    assert card and set(card) <= {1, 2, 3} and 2 in card and 1 in card  # `d` is not in it
    assert empty == [] and again == card


def test_rows_without_a_transcript_do_not_count():
    torch.manual_seed(0)
    head = PhonemeHead(torch.randn(5, 8), torch.zeros(5), dropout=0.0)
    hidden, frames = torch.randn(3, 12, 8), torch.tensor([12, 10, 12])
    targets = padded([[1, 2, 3], [], [4, 4, 2, 1]])
    both = head.loss(hidden, frames, targets)
    said = head.loss(hidden[[0, 2]], frames[[0, 2]], targets[[0, 2]])
    assert torch.isclose(both, said)
    assert float(head.loss(hidden, frames, padded([[], [], []]))) == 0.0


def test_the_collator_pads_phonemes_with_minus_100_only_when_asked():
    extractor = build_model("tiny", ["a"])[1]
    rows = [
        {"inputs": extract_one(extractor, torch.zeros(8000).numpy(), 8000, 0), "label": 0}
        for _ in range(2)
    ]
    rows[0]["phonemes"], rows[1]["phonemes"] = [4, 5, 6], [7]
    batch = PadCollator(extractor, phonemes=True)(rows)
    assert batch["phonemes"].tolist() == [[4, 5, 6], [7, -100, -100]]
    assert "phonemes" not in PadCollator(extractor)(rows)


def test_a_folder_without_a_phoneme_head_is_a_one_line_error(tmp_path):
    (tmp_path / "vocab.json").write_text('{"<pad>": 0}')
    with pytest.raises(ConfigError, match=rf"{tmp_path} has no readable phoneme head") as err:
        load_head(str(tmp_path), dropout=0.1)
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def transcribed(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "digits"
    synthesize(
        SynthConfig(
            out=out,
            phrases="digits",
            train_per_label=2,
            validation_per_label=1,
            test_per_label=1,
            channel="wideband",
        )
    )
    return out


def _train(transcribed, out, **changes):
    settings = {
        "model": "speech-tiny",
        "text_column": "text",
        "max_steps": 2,
        "batch_size": 8,
        "augment_copies": 1,
        "early_stopping": 0,
    }
    return train(TrainConfig(source=str(transcribed), output=str(out), **{**settings, **changes}))


@pytest.mark.slow
def test_training_adds_the_phoneme_loss_and_saves_a_stock_classifier(transcribed, tmp_path):
    plain = _train(transcribed, tmp_path / "plain")
    phonetic = _train(transcribed, tmp_path / "phonetic", phoneme_loss=1.0)
    losses = [json.loads((m / "metrics.json").read_text())["train"] for m in (plain, phonetic)]
    # same seed, same batches: the difference is the CTC loss of what the clips say (about 1)
    assert losses[1]["train_loss"] > losses[0]["train_loss"] + 0.3, losses
    assert (losses[0]["transcribed_clips"], losses[1]["transcribed_clips"]) == (0, 20)
    with safe_open(str(phonetic / "model.safetensors"), "pt") as saved:
        names = saved.keys()
    assert names and not [k for k in names if "lm_head" in k]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": "tiny"}, "needs an encoder made by `voxclass pretrain`"),
        ({"text_column": None}, "add --text-column COLUMN"),
        ({"mixup": 0.4}, "--phoneme-loss and --mixup do not combine"),
    ],
)
def test_impossible_settings_are_refused_before_any_audio_is_decoded(
    transcribed, tmp_path, monkeypatch, changes, message
):
    import voxclass.train as train_module

    def refuse(*args):
        raise AssertionError("decoded audio")

    monkeypatch.setattr(train_module, "decode_data", refuse)
    with pytest.raises(ConfigError, match=message):
        _train(transcribed, tmp_path / "model", phoneme_loss=0.3, **changes)
