import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tone_folder
from safetensors.torch import load_file
from transformers import pipeline

from voxclass.adversary import SpeakerAdversary, ramp
from voxclass.config import ConfigError
from voxclass.features import PadCollator
from voxclass.model import build_model
from voxclass.train import TrainConfig, train


def test_the_confusion_loss_ramps_from_zero_to_full_strength():
    assert ramp(0.0) == 0.0
    assert 0.45 < ramp(0.1) < 0.5
    assert ramp(1.0) > 0.999 and ramp(2.0) == ramp(1.0)


def head_and_features(weight: float) -> tuple[SpeakerAdversary, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    head = SpeakerAdversary(4, 3)
    pooled = torch.randn(5, 4, requires_grad=True)
    head.loss(pooled, torch.tensor([0, 1, 2, 0, -100]), weight).backward()
    return head, pooled, pooled.grad


def test_the_head_learns_the_speaker_and_only_the_confusion_loss_moves_the_features():
    head, _, grad = head_and_features(0.0)
    assert grad.abs().sum() == 0  # the speaker cross-entropy trains the head alone
    assert head.out.weight.grad.abs().sum() > 0
    confused, pooled, grad = head_and_features(2.0)
    assert grad[:4].abs().sum() > 0 and grad[4].abs().sum() == 0  # -100: not counted
    # The confusion term leaves the head's weights alone.
    assert torch.equal(confused.out.weight.grad, head.out.weight.grad)

    # A step along the features' gradient brings the head's output nearer uniform.
    def distance_to_uniform(x: torch.Tensor) -> float:
        with torch.no_grad():
            return float(-torch.log_softmax(confused(x[:4]), -1).mean())

    assert distance_to_uniform(pooled - 0.1 * grad) < distance_to_uniform(pooled)


def test_no_known_speaker_is_no_loss():
    head = SpeakerAdversary(4, 2)
    pooled = torch.randn(3, 4, requires_grad=True)
    assert head.loss(pooled, torch.tensor([-100, -100, -100]), 1.0).item() == 0.0


def test_the_collator_sends_speaker_ids_and_minus_100_for_unknown_speakers():
    _, extractor = build_model("tiny", ["a", "b"])
    inputs = np.zeros((5, extractor.feature_size * extractor.stride), np.float32)
    examples = [
        {"inputs": inputs, "label": 0, "group": "ann"},
        {"inputs": inputs, "label": 1, "group": "bob"},
        {"inputs": inputs, "label": 1, "group": "eve"},
    ]
    batch = PadCollator(extractor, speakers={"ann": 0, "bob": 1})(examples)
    assert batch["speakers"].tolist() == [0, 1, -100]
    assert "speakers" not in PadCollator(extractor)(examples)


def speaker_manifest(root: Path) -> Path:
    """Tone bursts in train and test folders: training clips said by three speakers, test
    clips by a fourth (speakers never straddle train and test)."""
    data = write_tone_folder(root / "data", per_class=6, splits=True)
    rows = ["path,label,split,speaker"]
    for i, path in enumerate(sorted(data.glob("*/*/*.wav"))):
        split, label = path.parent.parent.name, path.parent.name
        speaker = f"s{i % 3}" if split == "train" else "held-out"
        rows.append(f"{path},{label},{split},{speaker}")
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
        speaker_adversary=weight,
        **fields,
    )
    return train(config)


def test_speaker_adversarial_training_changes_the_encoder_and_saves_a_stock_model(tmp_path):
    manifest = speaker_manifest(tmp_path)
    plain = short_run(manifest, tmp_path / "plain", 0.0, group_by="speaker")
    adversarial = short_run(manifest, tmp_path / "adversarial", 5.0, group_by="speaker")

    counted = [json.loads((m / "metrics.json").read_text())["train"] for m in (adversarial, plain)]
    assert [c["adversary_speakers"] for c in counted] == [3, 0]
    plain_weights = load_file(plain / "model.safetensors")
    weights = load_file(adversarial / "model.safetensors")
    assert weights.keys() == plain_weights.keys()  # no speaker head in the saved model
    encoder = [k for k in weights if "encoder.layers.0." in k]
    assert encoder and any(not torch.equal(weights[k], plain_weights[k]) for k in encoder)
    # The classifier was trained too, and the stock pipeline loads and runs the result.
    classify = pipeline("audio-classification", model=str(adversarial), device="cpu")
    rate = classify.feature_extractor.sampling_rate
    result = classify({"raw": np.zeros(rate, np.float32), "sampling_rate": rate})
    assert {r["label"] for r in result} == {"low", "mid", "high"}


def test_speaker_adversary_without_speakers_is_refused_before_decoding(tmp_path):
    manifest = speaker_manifest(tmp_path)
    with pytest.raises(ConfigError, match="--group-by COLUMN or --group-pattern") as err:
        short_run(manifest, tmp_path / "out", 1.0)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="at least 2 speakers"):
        short_run(manifest, tmp_path / "out", 1.0, group_by="split")
