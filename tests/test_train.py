import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from conftest import (
    TONES,
    burst,
    tone,
    write_local_wav2vec2,
    write_tone_folder,
    write_tone_mix_manifest,
)
from transformers import pipeline

from voxclass.config import ConfigError, build_config, parse_overrides
from voxclass.model import ModelError, build_model
from voxclass.train import (
    TrainConfig,
    augmentation,
    class_weighted_loss,
    freeze_pretrained_encoder,
    loss_function,
    multi_label_loss,
    push,
    train,
    training_arguments,
)

BIN = Path(sys.executable).parent


def _run(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "voxclass", *args], capture_output=True, text=True, **kwargs
    )


def test_output_directory_is_complete_and_loads_in_plain_pipeline(trained_tone_model):
    out = trained_tone_model
    for name in (
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "metrics.json",
        "voxclass_config.yaml",
        "README.md",
    ):
        assert (out / name).is_file(), name
    assert not Path(f"{out}.work").exists()  # checkpoints removed once the model is final
    metrics = json.loads((out / "metrics.json").read_text())
    evals = [e for e in metrics["epochs"] if "eval_macro_f1" in e]
    assert len(evals) >= 2 and all("eval_accuracy" in e for e in evals)
    assert metrics["final"]["macro_f1"] == max(e["eval_macro_f1"] for e in evals)  # best kept
    config = yaml.safe_load((out / "voxclass_config.yaml").read_text())
    assert config["model"] == "tiny" and config["epochs"] == 30
    card = (out / "README.md").read_text()
    assert "pipeline_tag: audio-classification" in card and "`high`" in card

    classify = pipeline("audio-classification", model=str(out))  # no voxclass involved
    for label, freq in TONES.items():
        top = classify({"raw": burst(freq, 1.0, 8000, seed=9), "sampling_rate": 8000}, top_k=1)
        assert top[0]["label"] == label


def test_defaults_evaluate_and_checkpoint_each_epoch_and_keep_best_by_macro_f1(tmp_path):
    args = training_arguments(TrainConfig(source="x", output=str(tmp_path / "m")), True)
    assert args.eval_strategy == "epoch" and args.save_strategy == "epoch"
    assert args.load_best_model_at_end and args.metric_for_best_model == "macro_f1"
    assert args.save_total_limit == 2 and args.train_sampling_strategy == "group_by_length"
    assert args.learning_rate == 1e-3 and args.num_train_epochs == 30  # from scratch
    pretrained = training_arguments(TrainConfig(source="x"), from_scratch=False)
    assert pretrained.learning_rate == 5e-5 and pretrained.num_train_epochs == 10
    assert Path(args.output_dir) == tmp_path / "m.work" / "checkpoints"


def test_feature_encoder_frozen_only_for_pretrained_wav2vec2(tmp_path):
    model, _ = build_model(str(write_local_wav2vec2(tmp_path / "w2v")), ["a", "b"])
    assert model.config.id2label == {0: "a", 1: "b"}  # new head for our labels
    assert freeze_pretrained_encoder(model, from_scratch=False, enabled=True)
    encoder = model.wav2vec2.feature_extractor
    assert not any(p.requires_grad for p in encoder.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())
    scratch, _ = build_model("tiny-wav2vec2", ["a", "b"])
    assert not freeze_pretrained_encoder(scratch, from_scratch=True, enabled=True)
    assert all(p.requires_grad for p in scratch.parameters())


def test_pretrained_local_model_trains_reproducibly_with_a_frozen_encoder(tmp_path):
    """A local wav2vec2 dir (the wav2vec2-base role): same seed -> same metrics; the feature
    encoder leaves training untouched, the head does not; no attention mask is needed."""
    from safetensors.torch import load_file

    base = write_local_wav2vec2(tmp_path / "w2v")
    data = write_tone_folder(tmp_path / "data", per_class=4, splits=True)
    write_tone_folder(tmp_path / "data" / "validation", per_class=2)
    runs = []
    for name in ("a", "b"):
        config = TrainConfig(
            source=str(data),
            model=str(base),
            output=str(tmp_path / name),
            epochs=2,
            batch_size=4,
            augment_copies=2,
        )
        out = train(config)
        runs.append(json.loads((out / "metrics.json").read_text()))
    evals = [[e for e in r["epochs"] if "eval_macro_f1" in e] for r in runs]
    assert len(evals[0]) == 2 and runs[0]["world_size"] == 1
    # epochs are chosen on the validation split; the final figure is on the 12 test clips
    assert runs[0]["selected_on"] == "validation" and runs[0]["train"]["test_clips"] == 12
    strip = (
        "eval_runtime",
        "eval_samples_per_second",
        "eval_steps_per_second",
        "runtime",
        "samples_per_second",
        "steps_per_second",
    )
    same = [[{k: v for k, v in e.items() if k not in strip} for e in ev] for ev in evals]
    assert same[0] == same[1]
    assert {k: v for k, v in runs[0]["final"].items() if k not in strip} == {
        k: v for k, v in runs[1]["final"].items() if k not in strip
    }

    before = load_file(base / "model.safetensors")
    after = load_file(tmp_path / "a" / "model.safetensors")
    encoder = [k for k in before if k.startswith("wav2vec2.feature_extractor.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert not torch.equal(
        before["wav2vec2.encoder.layers.0.attention.q_proj.weight"],
        after["wav2vec2.encoder.layers.0.attention.q_proj.weight"],
    )
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["id2label"] == {"0": "high", "1": "low", "2": "mid"}
    assert saved["voxclass"]["max_seconds"] == runs[0]["max_seconds"]
    classify = pipeline("audio-classification", model=str(tmp_path / "a"))
    assert len(classify({"raw": burst(300.0, 1.0, 16000), "sampling_rate": 16000})) == 3


def test_augment_noise_loads_the_recordings_once_at_the_model_rate(tmp_path):
    noises = tmp_path / "noises"
    noises.mkdir()
    sf.write(noises / "fan.wav", tone(60.0, 0.5, 16000), 16000)
    sf.write(noises / "street.flac", tone(200.0, 0.25, 8000), 8000)
    values = parse_overrides(["--augment-noise", str(noises)])
    config = build_config(TrainConfig, None, {"source": "data", **values})
    augment = augmentation(config, 8000)
    assert [len(n) for n in augment.noises] == [4000, 2000]
    assert augmentation(TrainConfig(source="data"), 8000).noises is None
    assert augmentation(TrainConfig(source="data", augment=False), 8000) is None
    with pytest.raises(ConfigError, match="--augment-noise needs augmentation on"):
        augmentation(TrainConfig(source="data", augment=False, augment_noise=str(noises)), 8000)


def test_class_weighted_loss_matches_hand_computation():
    from datasets import Dataset

    train = Dataset.from_dict({"label": [0, 0, 0, 1]})  # class 1 is rare
    loss = class_weighted_loss(train, 2)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    weights = torch.tensor([4 / 3 / 2, 4 / 1 / 2])
    per_clip = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = (per_clip * weights[labels]).sum() / weights[labels].sum()
    got = loss(type("Out", (), {"logits": logits})(), labels)
    assert torch.isclose(got, expected)


def test_push_fails_clearly_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="cannot push to the Hugging Face Hub repo 'me/m'"):
        push(tmp_path, "me/m")


@pytest.mark.slow
def test_resume_after_sigkill_finishes_with_a_valid_model(tmp_path):
    data = write_tone_folder(tmp_path / "data", per_class=12, splits=True)
    out = tmp_path / "model"
    args = [
        "train",
        "--data",
        str(data),
        "--model",
        "tiny",
        "--output",
        str(out),
        "--epochs",
        "6",
        "--batch-size",
        "2",
        "--early-stopping",
        "0",
        "--augment-copies",
        "2",
    ]
    job = subprocess.Popen(
        [sys.executable, "-m", "voxclass", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoints = tmp_path / "model.work" / "checkpoints"
    deadline = time.time() + 240
    while not list(checkpoints.glob("checkpoint-*/trainer_state.json")) and job.poll() is None:
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    time.sleep(1.0)  # mid-way through the next epoch
    assert job.poll() is None, "training ended before it could be killed"
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    assert not out.exists()  # no half-written final directory
    first = min(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*"))

    run = _run(*args, "--resume")
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    steps = [e["step"] for e in metrics["epochs"] if "eval_macro_f1" in e]
    assert max(steps) > first and metrics["final"]["accuracy"] > 0.5
    pipeline("audio-classification", model=str(out))


@pytest.mark.distributed
def test_torchrun_two_processes_write_one_coherent_model(tmp_path):
    data = write_tone_folder(tmp_path / "data", per_class=6, splits=True)
    out = tmp_path / "model"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [
            str(BIN / "torchrun"),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "voxclass",
            "train",
            "--data",
            str(data),
            "--model",
            "tiny",
            "--output",
            str(out),
            "--epochs",
            "2",
            "--batch-size",
            "4",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("data", "model")]
    assert leftovers == []
    classify = pipeline("audio-classification", model=str(out))
    assert len(classify({"raw": np.zeros(8000, np.float32), "sampling_rate": 8000})) == 3


@pytest.mark.slow
def test_multi_label_training_writes_a_sigmoid_model_with_set_metrics(tmp_path):
    manifest = write_tone_mix_manifest(tmp_path / "data", per_set=4)
    config = TrainConfig(
        source=str(manifest),
        multi_label=True,
        model="tiny",
        output=str(tmp_path / "model"),
        epochs=3,
        batch_size=4,
        augment_copies=1,
    )
    out = train(config)
    saved = json.loads((out / "config.json").read_text())
    assert saved["problem_type"] == "multi_label_classification"
    assert saved["id2label"] == {"0": "high", "1": "low", "2": "mid"}
    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics["final"]
    assert 0 <= final["accuracy"] <= 1 and 0 <= final["macro_f1"] <= 1
    assert metrics["labels"] == ["high", "low", "mid"] and metrics["train"]["test_clips"] == 5
    assert "**Multi-label:**" in (out / "README.md").read_text()
    # plain transformers reads problem_type too: independent sigmoids, not a softmax
    classify = pipeline("audio-classification", model=str(out))
    scores = [s["score"] for s in classify({"raw": burst(300.0, 1.0, 8000), "sampling_rate": 8000})]
    assert len(scores) == 3 and not np.isclose(sum(scores), 1.0)


def test_multi_label_loss_is_per_label_bce_and_refuses_class_weights():
    from datasets import ClassLabel, Dataset, Features, List

    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    hot = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    out = type("Out", (), {"logits": logits})()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, hot)
    assert torch.isclose(multi_label_loss(out, hot), expected)
    # with gradient accumulation the Trainer passes the count of multi-hot entries
    assert torch.isclose(multi_label_loss(out, hot, num_items_in_batch=12), expected / 2)
    features = Features({"label": List(ClassLabel(names=["a", "b", "c"]))})
    multi = Dataset.from_dict({"label": [[0, 2], [1]]}, features=features)
    assert loss_function(TrainConfig(source="x"), multi, 3) is multi_label_loss
    with pytest.raises(ConfigError, match="--class-weights .* drop --class-weights"):
        loss_function(TrainConfig(source="x", class_weights=True), multi, 3)


def test_collator_sends_multi_hot_float_labels():
    from voxclass.features import PadCollator

    _, extractor = build_model("tiny", ["a", "b", "c"])
    inputs = np.zeros((5, extractor.feature_size * extractor.stride), np.float32)
    examples = [{"inputs": inputs, "label": np.array([0, 2])}, {"inputs": inputs, "label": [1]}]
    labels = PadCollator(extractor, num_labels=3)(examples)["labels"]
    assert labels.dtype == torch.float32
    assert labels.tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    single = PadCollator(extractor)([{"inputs": inputs, "label": 2}])["labels"]
    assert single.dtype == torch.int64 and single.tolist() == [2]
