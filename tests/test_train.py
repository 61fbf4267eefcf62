import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import yaml
from conftest import (
    TONE_SETS,
    TONES,
    burst,
    default_sigint,
    tone,
    write_local_wav2vec2,
    write_tone_folder,
    write_tone_mix_manifest,
)
from safetensors.torch import load_file
from transformers import pipeline

from voxclass.config import ConfigError, build_config, parse_overrides, recover_interrupted_write
from voxclass.model import ModelError, build_model
from voxclass.train import (
    OUTPUT_MARKERS,
    BestWeights,
    PatientEarlyStopping,
    TrainConfig,
    augmentation,
    average_weights,
    class_weighted_loss,
    each_member,
    early_stopping_start,
    freeze_pretrained_encoder,
    last_complete_checkpoint,
    loss_function,
    multi_label_loss,
    push,
    resume_checkpoint,
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
    mask = os.umask(0)
    os.umask(mask)
    for path in (out, out / "model.safetensors", out / "config.json"):
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        assert path.stat().st_mode & 0o777 == expected, path  # the user's umask, not 0600
    metrics = json.loads((out / "metrics.json").read_text())
    evals = [e for e in metrics["epochs"] if "eval_macro_f1" in e]
    assert len(evals) >= 2 and all("eval_accuracy" in e for e in evals)
    assert metrics["final"]["macro_f1"] == max(e["eval_macro_f1"] for e in evals)  # best kept
    config = yaml.safe_load((out / "voxclass_config.yaml").read_text())
    assert config["model"] == "tiny" and config["epochs"] == 30
    card = (out / "README.md").read_text()
    assert "pipeline_tag: audio-classification" in card and "`high`" in card
    assert "trust_remote_code" not in card  # stock transformers code: no flag needed

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


def test_keyword_head_keeps_the_epoch_of_lowest_validation_loss_unless_told_otherwise():
    keywords = training_arguments(TrainConfig(source="x", head="keywords"), from_scratch=False)
    assert keywords.metric_for_best_model == "loss" and not keywords.greater_is_better
    told = TrainConfig(
        source="x",
        head="keywords",
        training_args={"metric_for_best_model": "macro_f1", "greater_is_better": True},
    )
    told_args = training_arguments(told, from_scratch=False)
    assert told_args.metric_for_best_model == "macro_f1" and told_args.greater_is_better


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


def test_push_fails_clearly_offline(no_network, tmp_path):
    with pytest.raises(ModelError, match="cannot push to the Hugging Face Hub repo 'me/m'"):
        push(tmp_path, "me/m")
    assert no_network == []  # stopped by offline mode, not by a connection attempt


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
def test_multi_label_training_learns_the_label_sets(tmp_path):
    manifest = write_tone_mix_manifest(tmp_path / "data", per_set=8)
    config = TrainConfig(
        source=str(manifest),
        multi_label=True,
        model="tiny",
        output=str(tmp_path / "model"),
        epochs=12,
        batch_size=4,
        augment_copies=1,
        early_stopping=0,
    )
    out = train(config)
    saved = json.loads((out / "config.json").read_text())
    assert saved["problem_type"] == "multi_label_classification"
    assert saved["id2label"] == {"0": "high", "1": "low", "2": "mid"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"] == ["high", "low", "mid"]
    assert "**Multi-label:**" in (out / "README.md").read_text()
    # Plain transformers reads problem_type too: independent sigmoids, not a softmax. Scored
    # on fresh clips (new noise and lengths) by exact match of the label set, a label present
    # above 0.5. Always answering the commonest label set would score its share, 1/6.
    classify = pipeline("audio-classification", model=str(out))
    hits, clips = 0, 0
    for labels in TONE_SETS:
        for seed in (100, 101):
            wave = sum(burst(TONES[x], 0.8, 8000, seed=seed) for x in labels) / len(labels)
            scores = classify({"raw": wave.astype(np.float32), "sampling_rate": 8000})
            assert len(scores) == 3 and not np.isclose(sum(s["score"] for s in scores), 1.0)
            hits += {s["label"] for s in scores if s["score"] > 0.5} == set(labels)
            clips += 1
    assert hits / clips >= 0.5, f"{hits} of {clips} label sets right"  # 3x the 1/6


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


# ------------------------------------------------------------------ the guarantees of a run

DRIVER = '''
"""voxclass.train in a process of its own, killed with SIGKILL at a chosen point."""
import json, os, signal, sys

from safetensors.torch import save_file
from transformers import Trainer, TrainerCallback

import voxclass.train

spec = json.loads(sys.argv[1])


def die():
    os.kill(os.getpid(), signal.SIGKILL)


class Probe(TrainerCallback):
    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        # the global step and AdamW's own step count, which restarts at 1 if its state is lost
        adam = max(int(s["step"]) for s in optimizer.state.values())
        with open(spec["steps"], "a") as f:
            f.write(json.dumps([state.global_step, adam]) + "\\n")

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        path = os.path.join(spec.get("snapshots") or "", f"{state.global_step}.safetensors")
        if spec.get("snapshots") and not os.path.exists(path):  # not the final evaluation
            weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
            save_file(weights, path)

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == spec.get("kill_after_save"):
            die()


save_optimizer = Trainer._save_optimizer_and_scheduler


def save_optimizer_or_die(self, output_dir):  # the checkpoint's model is written, no more
    if self.state.global_step == spec.get("kill_during_save"):
        die()
    save_optimizer(self, output_dir)


Trainer._save_optimizer_and_scheduler = save_optimizer_or_die
save_config = voxclass.train.save_config


def save_config_or_die(config, path):  # the new output half-written in its temp folder
    if spec.get("kill_in_write"):
        die()
    save_config(config, path)


voxclass.train.save_config = save_config_or_die
voxclass.train.train(voxclass.train.TrainConfig(**spec["config"]), callbacks=[Probe()])
'''


def _drive(root: Path, name: str, config: dict, **spec) -> tuple[int, list[list[int]]]:
    """Run DRIVER on `config`; its exit code and the [global step, AdamW step] it logged."""
    driver = root / "driver.py"
    driver.write_text(DRIVER)
    steps = root / f"{name}.steps"
    run = subprocess.run(
        [sys.executable, str(driver), json.dumps({"config": config, "steps": str(steps), **spec})],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=600,
    )
    if run.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(run.stderr[-3000:])
    logged = [json.loads(line) for line in steps.read_text().splitlines()] if steps.exists() else []
    return run.returncode, logged


def write_degrading_tone_folder(root: Path) -> Path:
    """Tone bursts whose validation split has its labels rotated (low clips called mid, ...):
    the better the model learns the tones, the worse it scores on validation, so the best
    epoch is an early one and the later ones only get worse."""
    write_tone_folder(root, per_class=6, splits=True)
    validation = write_tone_folder(root / "validation", per_class=3)
    for name, renamed in (("low", "x"), ("mid", "low"), ("high", "mid"), ("x", "high")):
        (validation / name).rename(validation / renamed)
    return root


TIMINGS = (
    "runtime",
    "samples_per_second",
    "steps_per_second",
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
)


def _untimed(entries: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in TIMINGS} for e in entries]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted run on the degrading data (10 epochs asked, early stopping after 2
    evaluations without a better macro-F1), with a copy of the weights at every evaluation."""
    root = tmp_path_factory.mktemp("reference")
    data = write_degrading_tone_folder(root / "data")
    config = {
        "source": str(data),
        "model": "tiny",
        "epochs": 10,
        "batch_size": 4,
        "augment_copies": 1,
        "early_stopping": 2,
        "early_stopping_from": 0,  # the count from the first evaluation (the floor: below)
    }
    (root / "snapshots").mkdir()
    code, steps = _drive(
        root,
        "reference",
        {**config, "output": str(root / "model")},
        snapshots=str(root / "snapshots"),
    )
    assert code == 0
    metrics = json.loads((root / "model" / "metrics.json").read_text())
    evals = [(e["step"], e["eval_macro_f1"]) for e in metrics["epochs"] if "eval_macro_f1" in e]
    return {"root": root, "config": config, "metrics": metrics, "evals": evals, "steps": steps}


@pytest.mark.slow
def test_the_saved_weights_are_the_best_epochs_not_the_last(reference_run):
    from safetensors.torch import load_file

    evals = reference_run["evals"]
    scores = [f1 for _, f1 in evals]
    best_step = evals[scores.index(max(scores))][0]  # the first evaluation reaching the max
    last_step = evals[-1][0]
    assert best_step != last_step, f"the fixture did not degrade: {evals}"
    snapshots = reference_run["root"] / "snapshots"
    saved = load_file(reference_run["root"] / "model" / "model.safetensors")
    best = load_file(snapshots / f"{best_step}.safetensors")
    last = load_file(snapshots / f"{last_step}.safetensors")
    assert all(torch.equal(saved[k], best[k]) for k in saved)
    assert not all(torch.equal(saved[k], last[k]) for k in saved)
    assert reference_run["metrics"]["best_checkpoint"].endswith(f"checkpoint-{best_step}")


@pytest.mark.slow
def test_early_stopping_stops_patience_evaluations_after_the_best(reference_run):
    evals = reference_run["evals"]
    best, waited, expected_stop = -1.0, 0, None
    for i, (_, f1) in enumerate(evals):
        best, waited = (f1, 0) if f1 > best else (best, waited + 1)
        if waited == 2:  # --early-stopping 2
            expected_stop = i
            break
    assert expected_stop == len(evals) - 1, evals  # stopped at that evaluation, not later
    steps_per_epoch = 18 // 4 + 1  # 18 training clips in batches of 4
    assert reference_run["steps"][-1][0] == evals[-1][0] < 10 * steps_per_epoch


def test_best_weights_keeps_copies_of_the_best_evaluations_only():
    args = SimpleNamespace(metric_for_best_model="macro_f1", greater_is_better=True)
    model = torch.nn.Linear(2, 1)
    best = BestWeights(2)
    for step, score in enumerate([0.2, 0.5, 0.5, 0.1, 0.7], start=1):
        with torch.no_grad():
            model.weight.fill_(step)  # the copy must be of the weights at that evaluation
        best.on_evaluate(
            args, SimpleNamespace(global_step=step), None, {"eval_macro_f1": score}, model
        )
    assert [(score, step) for score, step, _ in best.kept] == [(0.7, 5), (0.5, 2)]  # ties: first
    assert [w["weight"][0, 0].item() for _, _, w in best.kept] == [5.0, 2.0]
    lower = SimpleNamespace(metric_for_best_model="loss", greater_is_better=False)
    best = BestWeights(1)
    for step, loss in enumerate([0.9, 0.3, 0.6], start=1):
        best.on_evaluate(lower, SimpleNamespace(global_step=step), None, {"eval_loss": loss}, model)
    assert [step for _, step, _ in best.kept] == [2]


def test_average_weights_means_floats_and_keeps_counters():
    states = [
        {
            "w": torch.tensor([1.0, 2.0]),
            "h": torch.tensor([2.0], dtype=torch.bfloat16),
            "n": torch.tensor(3),
        },
        {
            "w": torch.tensor([3.0, 6.0]),
            "h": torch.tensor([4.0], dtype=torch.bfloat16),
            "n": torch.tensor(7),
        },
    ]
    mean = average_weights(states)
    assert torch.equal(mean["w"], torch.tensor([2.0, 4.0]))
    assert mean["h"].dtype == torch.bfloat16 and mean["h"].item() == 3.0
    assert mean["n"].item() == 3


@pytest.mark.slow
def test_average_best_saves_the_mean_of_the_best_epochs_only_if_validation_agrees(tmp_path):
    data = write_degrading_tone_folder(tmp_path / "data")
    (tmp_path / "snapshots").mkdir()
    config = {
        "source": str(data),
        "model": "tiny",
        "epochs": 4,
        "batch_size": 4,
        "augment_copies": 1,
        "early_stopping": 0,
        "average_best": 2,
        "output": str(tmp_path / "model"),
    }
    code, _ = _drive(tmp_path, "average", config, snapshots=str(tmp_path / "snapshots"))
    assert code == 0
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    evals = [(e["step"], e["eval_macro_f1"]) for e in metrics["epochs"] if "eval_macro_f1" in e]
    ranked = sorted(evals, key=lambda e: -e[1])  # stable: the earlier of equal scores first
    average = metrics["checkpoint_average"]
    assert average["evaluations"] == 2 and average["steps"] == sorted(s for s, _ in ranked[:2])
    assert average["best_single"] == ranked[0][1]
    assert average["used"] == (average["average"] >= average["best_single"])
    snapshots = [load_file(tmp_path / "snapshots" / f"{s}.safetensors") for s, _ in ranked[:2]]
    expected = average_weights(snapshots) if average["used"] else snapshots[0]
    saved = load_file(tmp_path / "model" / "model.safetensors")
    assert all(torch.allclose(saved[k], expected[k]) for k in saved)
    assert average["used"] == (
        "average of the 2 best" in (tmp_path / "model" / "README.md").read_text()
    )


def test_average_best_of_one_is_refused_before_any_data(tmp_path):
    with pytest.raises(ConfigError, match="--average-best 1"):
        train(TrainConfig(source=str(tmp_path / "none"), average_best=1))


def test_an_unknown_head_is_refused_before_any_data(tmp_path):
    with pytest.raises(ConfigError, match="--head 'attention': choose mean or keywords"):
        train(TrainConfig(source=str(tmp_path / "none"), head="attention"))


def test_keyword_members_below_one_are_refused_before_any_data(tmp_path):
    with pytest.raises(ConfigError, match="--keyword-members 0: give 1 or more"):
        train(TrainConfig(source=str(tmp_path / "none"), head="keywords", keyword_members=0))


def test_voxclass_losses_train_each_member_on_its_own():
    """Class-weighted, multi-label and mixup's losses see the members' own logits, not only
    their mean: a mean of losses, not the loss of the mean."""
    from datasets import Dataset
    from transformers.modeling_outputs import SequenceClassifierOutput

    from voxclass.pooled_head import PooledHeadOutput

    members = torch.tensor([[[4.0, -4.0]], [[-4.0, 4.0]]])  # two members, one clip, 2 labels
    labels = torch.tensor([0])
    outputs = PooledHeadOutput(logits=members.mean(0), member_logits=members)
    each = [F.cross_entropy(m, labels) for m in members]
    assert each_member(lambda logits: F.cross_entropy(logits, labels), outputs) == pytest.approx(
        float(sum(each) / 2)
    )
    weighted = class_weighted_loss(Dataset.from_dict({"label": [0, 1]}), 2)
    assert float(weighted(outputs, labels)) == pytest.approx(float(sum(each) / 2))
    hot = torch.tensor([[1.0, 0.0]])
    bce = [F.binary_cross_entropy_with_logits(m, hot) for m in members]
    assert float(multi_label_loss(outputs, hot)) == pytest.approx(float(sum(bce) / 2))
    plain = SequenceClassifierOutput(logits=members.mean(0))  # one member: its own logits
    assert float(multi_label_loss(plain, hot)) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(members.mean(0), hot))
    )


def test_early_stopping_waits_until_validation_leaves_chance():
    """10 labels: the count starts at macro-F1 0.325. Five evaluations at chance do not stop
    a from-scratch run; once it learns, two without a better score do. A resumed run's
    callback, rebuilt from its saved state, goes on counting where it was."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    config = TrainConfig(source="x", early_stopping=2)
    assert early_stopping_start(config, 10, multi_label=False) == pytest.approx(0.325)
    assert early_stopping_start(config, 10, multi_label=True) == 0.0
    assert early_stopping_start(TrainConfig(source="x", early_stopping_from=0.6), 10, False) == 0.6
    args = TrainingArguments("unused", metric_for_best_model="macro_f1", greater_is_better=True)

    def run(callback, scores, state):
        stopped_at = None
        for i, score in enumerate(scores):
            control = TrainerControl()
            callback.on_evaluate(args, state, control, metrics={"eval_macro_f1": score})
            state.best_metric = max(state.best_metric or score, score)  # as the Trainer does
            if control.should_training_stop:
                stopped_at = i
                break
        return stopped_at

    scores = [0.10, 0.09, 0.11, 0.10, 0.08, 0.50, 0.45, 0.44, 0.60]
    assert run(PatientEarlyStopping(2, start=0.325), scores, TrainerState()) == 7
    assert run(PatientEarlyStopping(2, start=0.0), scores, TrainerState()) == 4  # plain patience

    first = PatientEarlyStopping(2, start=0.325)
    state = TrainerState()
    assert run(first, scores[:7], state) is None  # killed after the evaluation scoring 0.45
    saved = first.state()
    resumed = PatientEarlyStopping(**saved["args"])
    for name, value in saved["attributes"].items():
        setattr(resumed, name, value)
    assert run(resumed, scores[7:], state) == 0  # 0.44: the second without a better score


def test_early_stopping_on_the_loss_waits_for_macro_f1_to_leave_chance():
    """With the best model picked by validation loss, the count still starts at a macro-F1:
    losses that do not fall while macro-F1 is at chance do not stop the run."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    args = TrainingArguments("unused", metric_for_best_model="loss", greater_is_better=False)
    callback, state = PatientEarlyStopping(2, start=0.325), TrainerState()
    evaluations = [(2.30, 0.10), (2.31, 0.10), (2.32, 0.09), (2.33, 0.10), (1.0, 0.5), (1.1, 0.5)]
    evaluations += [(1.2, 0.6)]
    stopped_at = None
    for i, (loss, f1) in enumerate(evaluations):
        control = TrainerControl()
        metrics = {"eval_loss": loss, "eval_macro_f1": f1}
        callback.on_evaluate(args, state, control, metrics=metrics)
        state.best_metric = min(state.best_metric or loss, loss)  # as the Trainer does
        if control.should_training_stop:
            stopped_at = i
            break
    assert stopped_at == 6


@pytest.mark.slow
def test_resume_after_a_kill_right_after_a_checkpoint_ends_like_an_uninterrupted_run(
    reference_run, tmp_path
):
    """Killed right after the checkpoint of the evaluation before early stopping fired: the
    resumed run continues at the next step with AdamW's state, keeps the early-stopping
    count, and ends with the uninterrupted run's history and metrics."""
    evals = [step for step, _ in reference_run["evals"]]
    config = {**reference_run["config"], "output": str(tmp_path / "model")}
    code, _ = _drive(tmp_path, "killed", config, kill_after_save=evals[-2])
    assert code == -signal.SIGKILL and not (tmp_path / "model").exists()

    code, steps = _drive(tmp_path, "resumed", {**config, "resume": True})
    assert code == 0
    assert steps[0] == [evals[-2] + 1, evals[-2] + 1]  # global step and AdamW's continue
    resumed = json.loads((tmp_path / "model" / "metrics.json").read_text())
    reference = reference_run["metrics"]
    assert _untimed(resumed["epochs"]) == _untimed(reference["epochs"])
    assert _untimed([resumed["final"]]) == _untimed([reference["final"]])
    assert not (tmp_path / "model.work").exists()


@pytest.mark.slow
def test_resume_after_a_kill_during_a_save_takes_the_last_complete_checkpoint(
    reference_run, tmp_path
):
    from transformers.trainer_utils import get_last_checkpoint

    evals = [step for step, _ in reference_run["evals"]]
    config = {**reference_run["config"], "output": str(tmp_path / "model")}
    code, _ = _drive(tmp_path, "killed", config, kill_during_save=evals[-2])
    assert code == -signal.SIGKILL
    checkpoints = tmp_path / "model.work" / "checkpoints"
    half = checkpoints / f"checkpoint-{evals[-2]}"
    assert (half / "model.safetensors").is_file() and not (half / "optimizer.pt").exists()
    assert get_last_checkpoint(str(checkpoints)) == str(half)  # what transformers would take

    code, steps = _drive(tmp_path, "resumed", {**config, "resume": True})
    assert code == 0
    assert steps[0] == [evals[-3] + 1, evals[-3] + 1]  # from the checkpoint before
    resumed = json.loads((tmp_path / "model" / "metrics.json").read_text())
    reference = reference_run["metrics"]
    assert _untimed(resumed["epochs"]) == _untimed(reference["epochs"])
    assert _untimed([resumed["final"]]) == _untimed([reference["final"]])


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_kill_while_writing_the_output_leaves_the_earlier_output_intact(reference_run, tmp_path):
    earlier = tmp_path / "model"
    shutil.copytree(reference_run["root"] / "model", earlier)
    before = _contents(earlier)
    config = {**reference_run["config"], "output": str(earlier), "overwrite": True}
    code, _ = _drive(tmp_path, "killed", config, kill_in_write=True)
    assert code == -signal.SIGKILL
    assert _contents(earlier) == before
    leftovers = [p.name for p in tmp_path.glob(".model.voxclass-new-*")]
    assert len(leftovers) == 1 and (tmp_path / leftovers[0] / "config.json").is_file()

    code, _ = _drive(tmp_path, "again", config)  # starts over (--overwrite) and tidies up
    assert code == 0
    assert not list(tmp_path.glob(".model.voxclass-*"))
    written = yaml.safe_load((earlier / "voxclass_config.yaml").read_text())
    assert written["output"] == str(earlier)  # the new output, not the copied one
    again = json.loads((earlier / "metrics.json").read_text())
    assert _untimed(again["epochs"]) == _untimed(reference_run["metrics"]["epochs"])


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        timeout=60,
    )
    return int(done.stdout)


def test_leftovers_of_a_killed_write_are_cleaned_and_a_moved_output_put_back(tmp_path):
    dead = _dead_pid()
    moved = tmp_path / f".model.voxclass-old-{dead}"
    moved.mkdir()
    (moved / "config.json").write_text("{}")
    half = tmp_path / f".model.voxclass-new-{dead}"
    half.mkdir()
    live = tmp_path / f".model.voxclass-new-{os.getpid()}"  # a run still writing
    live.mkdir()
    other = tmp_path / f".other.voxclass-new-{dead}"  # another output's
    other.mkdir()
    recover_interrupted_write(tmp_path / "model")
    # killed between moving the earlier output aside and renaming the new one in: put back
    assert (tmp_path / "model" / "config.json").is_file() and not moved.exists()
    assert not half.exists() and live.is_dir() and other.is_dir()


def _fake_output(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("config.json", "metrics.json", "voxclass_config.yaml", "model.safetensors"):
        (folder / name).write_text("{}")
    return folder


def _fake_checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("trainer_state.json", "optimizer.pt", "model.safetensors"):
        (folder / name).write_text("{}")
    return folder


@pytest.fixture
def refuse_before_reading_data(monkeypatch):
    """Every refusal below must come before the data is read, let alone decoded."""
    import voxclass.train as train_module

    def fail(*args, **kwargs):
        raise AssertionError("read the data before refusing the output")

    monkeypatch.setattr(train_module, "load_data", fail)


def test_an_existing_folder_voxclass_did_not_write_is_never_replaced(
    tmp_path, refuse_before_reading_data
):
    data = write_tone_folder(tmp_path / "data", per_class=2)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    for overwrite in (False, True):
        config = TrainConfig(source=str(data), output=str(notes), overwrite=overwrite)
        with pytest.raises(ConfigError, match=f"--output {notes} exists and voxclass did not"):
            train(config)
    assert (notes / "todo.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("keep me too")
    with pytest.raises(ConfigError, match="voxclass did not write it"):
        train(TrainConfig(source=str(data), output=str(tmp_path / "file"), overwrite=True))


def test_an_earlier_voxclass_output_needs_overwrite(tmp_path, refuse_before_reading_data):
    data = write_tone_folder(tmp_path / "data", per_class=2)
    earlier = _fake_output(tmp_path / "model")
    with pytest.raises(ConfigError, match="holds an earlier voxclass model: pass --overwrite"):
        train(TrainConfig(source=str(data), output=str(earlier)))
    with pytest.raises(AssertionError, match="read the data"):  # accepted: goes on to the data
        train(TrainConfig(source=str(data), output=str(earlier), overwrite=True))
    assert sorted(p.name for p in earlier.iterdir())[0] == "config.json"


def test_a_folder_holding_the_data_is_refused_even_with_overwrite(
    tmp_path, refuse_before_reading_data
):
    data = write_tone_folder(tmp_path / "data", per_class=2)
    inside = _fake_output(data / "model")  # looks like a voxclass output, sits in the data
    holder = tmp_path / "holder"
    write_tone_folder(holder / "clips", per_class=2)
    (holder / "config.json").write_text("{}")
    (holder / "metrics.json").write_text("{}")
    (holder / "voxclass_config.yaml").write_text("{}")
    cases = [(data, data), (data, inside), (holder / "clips", holder), (data, tmp_path / "d")]
    (tmp_path / "d.work").symlink_to(data)  # OUTPUT.work would be the data folder
    for source, output in cases:
        config = TrainConfig(source=str(source), output=str(output), overwrite=True)
        with pytest.raises(ConfigError, match="would hold or sit inside the training data"):
            train(config)
    assert len(list(data.rglob("*.wav"))) == 6 and len(list(holder.rglob("*.wav"))) == 6


def test_a_manifest_pointing_at_the_output_folder_is_refused(tmp_path, monkeypatch):
    import voxclass.train as train_module

    def fail(*args, **kwargs):
        raise AssertionError("decoded the data before refusing the output")

    monkeypatch.setattr(train_module, "decode_data", fail)
    earlier = _fake_output(tmp_path / "earlier")  # an earlier output, the clips put in it
    clips = write_tone_folder(earlier / "clips", per_class=2)
    manifest = tmp_path / "lists" / "train.csv"
    manifest.parent.mkdir()
    rows = [f"{p.resolve()},{p.parent.name}" for p in sorted(clips.rglob("*.wav"))]
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    for output in (earlier, clips / "high" / "model"):
        config = TrainConfig(
            source=str(manifest), output=str(output), overwrite=True, allow_outside_paths=True
        )
        with pytest.raises(ConfigError, match="would hold or sit inside the training data"):
            train(config)
    assert len(list(clips.rglob("*.wav"))) == 6


def test_the_work_folder_must_be_voxclass_own_and_is_kept_for_resume(
    tmp_path, refuse_before_reading_data
):
    data = write_tone_folder(tmp_path / "data", per_class=2)
    out = tmp_path / "model"
    work = tmp_path / "model.work"
    work.mkdir()
    (work / "diary.txt").write_text("mine")
    for resume in (False, True):
        config = TrainConfig(source=str(data), output=str(out), resume=resume, overwrite=True)
        with pytest.raises(ConfigError, match=f"{work} exists and voxclass did not make it"):
            train(config)
    (work / "diary.txt").unlink()
    _fake_checkpoint(work / "checkpoints" / "checkpoint-5")
    with pytest.raises(ConfigError, match="interrupted run: continue it with --resume"):
        train(TrainConfig(source=str(data), output=str(out)))
    assert (work / "checkpoints" / "checkpoint-5" / "optimizer.pt").is_file()


def test_the_last_complete_checkpoint_is_resumed_and_half_written_ones_dropped(tmp_path):
    checkpoints = tmp_path / "model.work" / "checkpoints"
    _fake_checkpoint(checkpoints / "checkpoint-10")
    _fake_checkpoint(checkpoints / "checkpoint-5")
    no_state = checkpoints / "checkpoint-15"  # killed before trainer_state.json
    no_state.mkdir()
    (no_state / "model.safetensors").write_text("{}")
    truncated = _fake_checkpoint(checkpoints / "checkpoint-20")  # killed while writing it
    (truncated / "trainer_state.json").write_text('{"global_step": 2')
    config = TrainConfig(source="x", output=str(tmp_path / "model"), resume=True)
    assert resume_checkpoint(config) == checkpoints / "checkpoint-10"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-10", "checkpoint-5"]
    empty = TrainConfig(source="x", output=str(tmp_path / "other"), resume=True)
    with pytest.raises(ModelError, match="no complete checkpoint"):
        resume_checkpoint(empty)


def test_cli_refuses_training_into_the_data_folder_in_one_line(tmp_path):
    data = write_tone_folder(tmp_path / "data", per_class=2)
    run = _run("train", "--data", str(data), "--output", str(data), "--model", "tiny", timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --output") and str(data) in lines[0]
    assert len(list(data.rglob("*.wav"))) == 6


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_exits_130(tmp_path):
    data = write_tone_folder(tmp_path / "data", per_class=4, splits=True)
    out = tmp_path / "model"
    log = tmp_path / "stderr.txt"
    args = [
        "train",
        "--data",
        str(data),
        "--model",
        "tiny",
        "--output",
        str(out),
        "--epochs",
        "1000",
        "--batch-size",
        "4",
        "--augment-copies",
        "1",
    ]
    with open(log, "w") as stderr:
        job = subprocess.Popen(
            [sys.executable, "-m", "voxclass", *args],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            preexec_fn=default_sigint,
        )
        try:
            deadline = time.monotonic() + 300
            while last_complete_checkpoint(tmp_path / "model.work" / "checkpoints") is None:
                assert job.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, "no checkpoint appeared"
                time.sleep(0.1)
            job.send_signal(signal.SIGINT)
            assert job.wait(timeout=120) == 130
        finally:
            job.kill()
    last = log.read_text().strip().splitlines()[-1]
    assert last == (
        f"training interrupted; its checkpoints are kept in {out}.work/: continue with the "
        f"same command and --resume"
    )
    assert "Traceback" not in log.read_text() and not out.exists()
    assert last_complete_checkpoint(tmp_path / "model.work" / "checkpoints") is not None


def test_the_time_budget_stops_training_and_still_writes_a_complete_output(tmp_path):
    data = write_tone_folder(tmp_path / "data", per_class=4, splits=True)
    config = TrainConfig(
        source=str(data),
        model="tiny",
        output=str(tmp_path / "model"),
        epochs=20,  # 60 steps asked
        batch_size=4,
        augment_copies=1,
        time_budget_minutes=1e-9,  # spent by the end of the first step
    )
    out = train(config)
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["step"] for e in metrics["epochs"] if "eval_macro_f1" in e] == [1]
    assert metrics["best_checkpoint"].endswith("checkpoint-1")
    for name in OUTPUT_MARKERS + ("model.safetensors", "preprocessor_config.json", "README.md"):
        assert (out / name).is_file(), name
    assert not Path(f"{out}.work").exists()
    classify = pipeline("audio-classification", model=str(out))
    assert len(classify({"raw": burst(300.0, 1.0, 8000), "sampling_rate": 8000})) == 3


def test_mixup_mixes_each_row_with_its_partner_by_one_share_and_joins_the_masks():
    from voxclass.train import mix

    torch.manual_seed(0)
    features = torch.randn(4, 5, 3)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    inputs = {"input_features": features.clone(), "attention_mask": mask.clone()}
    share, partner = mix(inputs, "input_features", 0.4)
    assert 0.0 < share < 1.0 and sorted(partner.tolist()) == [0, 1, 2, 3]
    expected = share * features + (1 - share) * features[partner]
    assert torch.allclose(inputs["input_features"], expected)
    assert torch.equal(inputs["attention_mask"], torch.maximum(mask, mask[partner]))
    untouched = {"input_features": features.clone()}
    assert mix(untouched, "input_features", 0.0) == (1.0, None)
    assert torch.equal(untouched["input_features"], features)


@pytest.mark.parametrize("multi_label", [False, True])
def test_mixup_trains_single_and_multi_label_models_and_saves_stock_ones(tmp_path, multi_label):
    if multi_label:
        source = write_tone_mix_manifest(tmp_path / "data")
    else:
        source = write_tone_folder(tmp_path / "data", per_class=6, splits=True)

    def run(name: str, mixup: float) -> dict:
        out = train(
            TrainConfig(
                source=str(source),
                model="tiny",
                output=str(tmp_path / name),
                max_steps=6,
                batch_size=4,
                augment_copies=1,
                early_stopping=0,
                mixup=mixup,
            )
        )
        assert np.isfinite(json.loads((out / "metrics.json").read_text())["train"]["train_loss"])
        return load_file(out / "model.safetensors")

    plain, mixed = run("plain", 0.0), run("mixed", 0.4)
    assert plain.keys() == mixed.keys()  # the stock model, nothing of mixup's in it
