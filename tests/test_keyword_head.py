"""The keywords head (`keyword_head`): it carries the pretrained encoder's weights, masks batch
padding, trains only itself by default, and a trained folder runs in stock `pipeline`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_cli, stock_pipeline_top, tone, write_tone_folder

from voxclass.model import ModelError, build_model

LABELS = ["a", "b", "c"]


def waves(rate: int) -> list[np.ndarray]:
    """Three clips of different lengths, so a batch pads two of them."""
    shapes = ((300, 1.3), (900, 0.4), (2000, 0.8))
    return [tone(f, s, rate, seed=i) for i, (f, s) in enumerate(shapes)]


def extracted(extractor, clips: list[np.ndarray], rate: int) -> list[np.ndarray]:
    from voxclass.features import extract_one

    return [extract_one(extractor, c, rate) for c in clips]


def batched_and_alone(model, extractor, clips: list[np.ndarray], rate: int):
    from voxclass.features import pad_batch

    inputs = extracted(extractor, clips, rate)
    with torch.no_grad():
        together = model(**pad_batch(extractor, inputs)).logits
        alone = [model(**pad_batch(extractor, [x])).logits for x in inputs]
    return together, torch.cat(alone)


def test_speech_tiny_encoder_is_carried_over_under_the_new_head():
    from transformers import AutoModel

    from voxclass.model import pretrained_dir

    model, extractor = build_model("speech-tiny", LABELS, head="keywords")
    want = AutoModel.from_pretrained(pretrained_dir("speech-tiny")).state_dict()
    got = model.encoder.state_dict()
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, msg=name)
    assert model.config.num_labels == 3 and extractor.sampling_rate == 8000


def test_a_clip_scores_the_same_alone_and_in_a_padded_batch():
    """Padding never reaches the detectors or the pooling."""
    torch.manual_seed(0)
    model, extractor = build_model("tiny", LABELS, head="keywords")
    rate = extractor.sampling_rate
    together, alone = batched_and_alone(model.eval(), extractor, waves(rate), rate)
    assert together.shape == (3, 3)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_a_sample_mask_becomes_the_convolutional_front_ends_frame_mask():
    """wav2vec2-family encoders map samples to fewer frames: each clip keeps the frames its
    own samples make."""
    model, _ = build_model("tiny-wav2vec2", LABELS, head="keywords")
    lengths = torch.tensor([16000, 9000, 400])
    mask = (torch.arange(16000)[None, :] < lengths[:, None]).long()
    frames = int(model.encoder._get_feat_extract_output_lengths(torch.tensor(16000)))
    own = model.frame_mask(frames, mask, 3)
    assert own.shape == (3, frames)
    assert (
        own.sum(dim=1).tolist() == model.encoder._get_feat_extract_output_lengths(lengths).tolist()
    )


def test_padding_would_change_the_scores_without_the_mask():
    """The batch check above can fail: unmasked, the padded frames move a clip's logits."""
    model, extractor = build_model("speech-tiny", LABELS, head="keywords")
    model.eval()
    model.frame_mask = lambda frames, mask, batch: torch.ones(batch, frames, dtype=torch.bool)
    together, alone = batched_and_alone(model, extractor, waves(8000), 8000)
    assert not torch.allclose(together, alone, atol=1e-3)


def test_only_the_head_trains_by_default_and_learns_at_the_head_rate():
    from voxclass.model import HEAD_LEARNING_RATE, fine_tuning_rate
    from voxclass.train import freeze_pretrained_encoder

    model, _ = build_model("speech-tiny", LABELS, head="keywords")
    assert freeze_pretrained_encoder(model, from_scratch=False, enabled=True)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"detectors", "norm", "classifier"}
    assert fine_tuning_rate(model.config) == HEAD_LEARNING_RATE


def test_a_frozen_encoder_stays_in_eval_mode_while_the_head_trains():
    from voxclass.features import pad_batch
    from voxclass.train import freeze_pretrained_encoder

    model, extractor = build_model("speech-tiny", LABELS, head="keywords")
    model.train()
    assert model.encoder.training  # not frozen yet: it trains as a whole
    freeze_pretrained_encoder(model, from_scratch=False, enabled=True)
    model.train()
    assert model.training and model.detectors.training and model.dropout.training
    assert not any(m.training for m in model.encoder.modules())
    # so the frozen encoder's output is the same at every step: no dropout, no SpecAugment
    rate = extractor.sampling_rate
    inputs = pad_batch(extractor, extracted(extractor, waves(rate), rate))
    first, second = (model.encoder(**inputs).last_hidden_state for _ in range(2))
    assert torch.equal(first, second)
    model.eval()
    assert not model.training and not model.detectors.training


def test_members_learn_on_their_own_and_answer_by_their_mean():
    """Three detector banks: the logits are their mean, the model's loss is the mean of their
    own losses, and one member's loss moves only that member's detectors, norm and columns
    of the classifier."""
    torch.manual_seed(0)
    model, extractor = build_model(
        "tiny", LABELS, head="keywords", members=3, detectors=4, classifier_dropout=0.0
    )
    from voxclass.features import pad_batch

    rate = extractor.sampling_rate
    inputs = pad_batch(extractor, extracted(extractor, waves(rate), rate))
    labels = torch.tensor([0, 1, 2])
    model.train()
    out = model(**inputs, labels=labels)
    assert out.member_logits.shape == (3, 3, 3)
    torch.testing.assert_close(out.logits, out.member_logits.mean(0))
    own = [torch.nn.functional.cross_entropy(m, labels) for m in out.member_logits]
    torch.testing.assert_close(out.loss, torch.stack(own).mean())

    model.zero_grad()
    own[1].backward()
    touched = {
        name: (p.grad is not None and bool(p.grad.abs().sum() > 0))
        for name, p in model.named_parameters()
        if not name.startswith("encoder.")
    }
    second = slice(4, 8)  # member 1's detectors; its pooled part is 8 wide (mean and max)
    detector_rows = model.detectors.weight.grad.abs().sum(dim=(1, 2))
    assert bool((detector_rows[second] > 0).all())
    assert float(detector_rows[:4].sum() + detector_rows[8:].sum()) == 0.0
    columns = model.classifier.weight.grad.abs().sum(dim=0)
    assert bool((columns[8:16] > 0).any())
    assert float(columns[:8].sum() + columns[16:].sum()) == 0.0
    assert (
        float(model.norm.weight.grad[:8].abs().sum() + model.norm.weight.grad[16:].abs().sum())
        == 0.0
    )
    assert touched["detectors.weight"] and touched["classifier.bias"]

    model.eval()
    with torch.no_grad():
        out = model(**inputs)
    assert out.member_logits is None and out.logits.shape == (3, 3)


def test_a_folder_that_names_no_members_has_one():
    from voxclass.keyword_head import KeywordHeadConfig

    assert KeywordHeadConfig.from_dict({"kernel_frames": 9}).members == 1
    model, _ = build_model("tiny", LABELS, head="keywords", detectors=4)
    shapes = {
        n: tuple(p.shape) for n, p in model.named_parameters() if not n.startswith("encoder.")
    }
    assert isinstance(model.norm, torch.nn.LayerNorm)
    assert shapes["detectors.weight"][0] == 4 and shapes["classifier.weight"] == (3, 8)


def test_heads_that_cannot_be_built_are_one_line_errors(tmp_path):
    with pytest.raises(ModelError, match="--head 'attention': choose mean or keywords"):
        build_model("tiny", LABELS, head="attention")
    with pytest.raises(ModelError, match="speech-embedding has its own head"):
        build_model("speech-embedding", LABELS, head="keywords")
    with pytest.raises(ModelError, match="no such model directory"):
        build_model(str(tmp_path / "nowhere"), LABELS, head="keywords")
    from voxclass.keyword_head import KeywordHeadConfig

    with pytest.raises(ValueError, match="kernel_frames 4"):
        KeywordHeadConfig(kernel_frames=4)
    with pytest.raises(ValueError, match="members 0"):
        KeywordHeadConfig(members=0)


def test_trained_folder_runs_in_stock_pipeline_without_voxclass(tmp_path, monkeypatch, capsys):
    """`voxclass train --head keywords` writes a folder that stock transformers loads from the
    code saved in it, with the same scores as voxclass's own model, and an encoder unchanged
    by training (frozen)."""
    from transformers import AutoModel

    from voxclass.classifier import Classifier
    from voxclass.model import pretrained_dir

    data = write_tone_folder(tmp_path / "tones", per_class=4, splits=True)
    code, _, err = run_cli(
        monkeypatch, capsys, "train", "--data", data, "--model", "speech-tiny",
        "--head", "keywords", "--output", tmp_path / "m", "--epochs", "1", "--batch-size", "4",
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "m" / "keyword_head.py").is_file()
    assert "trust_remote_code=True" in (tmp_path / "m" / "README.md").read_text()  # the card
    clip = next((data / "test").glob("*/*.wav"))
    stock = stock_pipeline_top(tmp_path / "m", clip, 8000)
    assert not stock["voxclass"]
    own = Classifier.load(tmp_path / "m")
    assert own.model.config.members == 5  # --keyword-members' default
    top = own.predict(clip, top_k=3)
    assert [p["label"] for p in stock["top"]] == top.labels
    np.testing.assert_allclose([p["score"] for p in stock["top"]], top.scores, atol=1e-4)
    before = AutoModel.from_pretrained(pretrained_dir("speech-tiny")).state_dict()
    after = own.model.encoder.state_dict()
    for name, tensor in before.items():
        torch.testing.assert_close(after[name], tensor, msg=name)
    code, _, err = run_cli(monkeypatch, capsys, "export", tmp_path / "m", "--out", tmp_path / "x")
    assert code == 0, err
    exported = Classifier.load(tmp_path / "x").predict(clip, top_k=3)
    assert exported.labels == top.labels
    np.testing.assert_allclose(exported.scores, top.scores, atol=1e-3)
