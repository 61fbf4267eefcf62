"""Does a recipe hold for a speaker it never heard? FSDD leave-one-speaker-out.

Each fold trains on three of FSDD's four speakers (validation: every tenth take of those three,
so the best epoch is chosen without the held-out voice), and tests on all 500 clips of the
fourth with stock `transformers.pipeline("audio-classification")`. Training is voxclass's own
`train()`: the `baseline` variant is exactly what `voxclass train --model PRESET` ships. A variant
changes one thing (TrainConfig fields, model config, feature extractor, augmentation or
TrainingArguments); join variants with `+` to combine them. Prints one row per variant: the
accuracy on each held-out speaker and their mean.

    python benchmarks/unseen_speakers.py [--preset tiny|speech-tiny|DIR]
        [--variants baseline,stride2,...] [--folds theo,...]
        [--data ../shared/data/fsdd] [--epochs N] [--lock /tmp/voxclass-cpu.lock] [--quick]
        [--check speakers,synth-digits,new-wording]

Two checks on synthetic speech (`voxclass.synth`, espeak-ng) run with `--check`:
`synth-digits` trains on synthetic digit words only (`phrases/digits.yaml`, no real clip) and
tests on each real speaker; `new-wording` trains on half of each banking intent's phrasings and
tests on the other half, spoken by voices never used in training.

`--lock FILE` holds an flock on FILE for each fold's training and test only, so that other jobs
on a shared machine run between folds. `--quick` is a seconds-long smoke run (one fold, three
takes per digit and speaker, one epoch): it checks the benchmark runs, not a recipe.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import functools
import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import pipeline

import voxclass.train as train_module
from voxclass.audio import load_audio
from voxclass.features import Augment
from voxclass.presets import PRESETS, preset_config
from voxclass.train import TrainConfig, train

# ../shared/data/fsdd beside the checkout (or beside a folder of worktrees)
FSDD = next(
    (p / "shared/data/fsdd" for p in Path(__file__).resolve().parents if (p / "shared").is_dir()),
    Path("../shared/data/fsdd"),
)
FILE_NAME = re.compile(r"^(?P<digit>\d+)_(?P<speaker>[a-z]+)_(?P<take>\d+)\.wav$")
CHECKS = ("speakers", "synth-digits", "new-wording")
PRETRAINED_CHANGES = {
    "use_weighted_layer_sum",
    "classifier_proj_size",
    "hidden_dropout",
    "feat_proj_dropout",
    "mask_time_prob",
    "mask_feature_prob",
}
"""Model config fields a variant may change on a pretrained encoder (`from_pretrained` applies
them over its saved config; the weights stay)."""


@dataclass
class Variant:
    """One change to the shipped recipe (every field empty: the recipe as shipped)."""

    train: dict = field(default_factory=dict)
    """TrainConfig fields."""
    model: dict = field(default_factory=dict)
    """Model config attributes of the preset."""
    extractor: dict = field(default_factory=dict)
    """Feature extractor arguments of the preset (the extractor is rebuilt with them)."""
    augment: dict = field(default_factory=dict)
    """Augment fields."""
    args: dict = field(default_factory=dict)
    """TrainingArguments attributes."""
    synth: dict = field(default_factory=dict)
    """`{"per_label": N}`: add N synthetic digit words per label (`synth_digits`) to the
    training split only (speakers check)."""

    def __add__(self, other: Variant) -> Variant:
        return Variant(
            **{k: {**getattr(self, k), **getattr(other, k)} for k in self.__dataclass_fields__}
        )


def width(hidden: int) -> dict:
    """Model fields of a conformer `hidden` wide, feed-forward twice that (as the presets)."""
    return {
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "output_hidden_size": hidden,
        "classifier_proj_size": hidden,
    }


VARIANTS: dict[str, Variant] = {
    "baseline": Variant(),
    "noearlystop": Variant(train={"early_stopping": 0}),
    "patience10": Variant(train={"early_stopping": 10}),
    "epochs60": Variant(train={"epochs": 60}),
    # frame rate: the preset stacks `stride` 20 ms frames at 8 kHz
    "stride2": Variant(model={"feature_projection_input_dim": 80}, extractor={"stride": 2}),
    "stride1": Variant(model={"feature_projection_input_dim": 40}, extractor={"stride": 1}),
    # mel resolution at stride 2: fewer bins smooth more of the speaker's pitch away
    "mel24": Variant(
        model={"feature_projection_input_dim": 48},
        extractor={"num_mel_bins": 24, "feature_size": 24, "stride": 2},
    ),
    "mel64": Variant(
        model={"feature_projection_input_dim": 128},
        extractor={"num_mel_bins": 64, "feature_size": 64, "stride": 2},
    ),
    "plus_synth": Variant(synth={"per_label": 150}),
    "nospecaug": Variant(model={"mask_time_prob": 0.0, "mask_feature_prob": 0.0}),
    "specaug2": Variant(model={"mask_time_prob": 0.1, "mask_feature_prob": 0.1}),
    "specaug4": Variant(model={"mask_time_prob": 0.2, "mask_feature_prob": 0.2}),
    "speed_wide": Variant(augment={"speed": (0.7, 1.4)}),
    "speed_off": Variant(augment={"speed": (1.0, 1.0)}),
    "copies6": Variant(train={"augment_copies": 6}),
    # Train on random 2 s crops of a sentence: each crop must name the intent from the words
    # in it, which might push towards word-level cues instead of whole-sentence templates.
    "crop2s": Variant(train={"max_seconds": 2.0}),
    "smooth": Variant(args={"label_smoothing_factor": 0.1}),
    "lr2e-3": Variant(train={"learning_rate": 2e-3}),
    "lr5e-4": Variant(train={"learning_rate": 5e-4}),
    "wide": Variant(model=width(192)),
    "wider": Variant(model=width(256)),
    "deep": Variant(model={"num_hidden_layers": 5}),
    "adversary": Variant(train={"group_by": "speaker", "speaker_adversary": 1.0}),
    "mixup": Variant(train={"mixup": 0.4}),
    "average5": Variant(train={"average_best": 5}),
    "dropout2": Variant(model={"hidden_dropout": 0.2, "feat_proj_dropout": 0.2}),
    # A pretrained encoder (`--preset DIR`) kept as it is below the classification head, so
    # the classifier reads what pretraining learned (phonemes) instead of re-learning sentences.
    "freeze2": Variant(train={"freeze_layers": 2}),
    "freeze3": Variant(train={"freeze_layers": 3}),
    "lr1e-4": Variant(train={"learning_rate": 1e-4}),
    # The head reads a learned mix of every layer's output, the lower (more phonetic) ones too.
    "layersum": Variant(model={"use_weighted_layer_sum": True}),
    # `speech-embedding`: fine-tune the encoder too, at a rate for pretrained weights.
    "finetune": Variant(train={"freeze_feature_encoder": False, "learning_rate": 3e-4}),
    # Word-sized detectors over the encoder's frames, mean and maximum (`--head keywords`: five
    # banks, the best epoch by validation loss): frozen encoder, and the encoder fine-tuned too
    # at speech-tiny's own rate.
    "keywords": Variant(train={"head": "keywords"}),
    "keywords1": Variant(train={"head": "keywords", "keyword_members": 1}),  # one detector bank
    # the best epoch by validation macro-F1, as for the other heads (keywords: by the loss)
    "keywords_bestf1": Variant(
        train={"head": "keywords"},
        args={"metric_for_best_model": "macro_f1", "greater_is_better": True},
    ),
    "keywords_finetune": Variant(
        train={"head": "keywords", "freeze_feature_encoder": False, "learning_rate": 5e-4}
    ),
}


@functools.cache
def mel_extractor(rate: int):
    from transformers import SeamlessM4TFeatureExtractor

    return SeamlessM4TFeatureExtractor(
        sampling_rate=rate, num_mel_bins=40, feature_size=40, stride=1
    )


def mfcc_features(path: str, rate: int = 8000) -> np.ndarray:
    """One fixed-size vector per clip: 13 MFCCs (log-mel of the `tiny` presets' extractor,
    unnormalized, then a DCT without c0) with their deltas, mean-normalized over the clip
    (cepstral mean normalization removes a fixed channel), resampled to 16 frames."""
    from scipy.fft import dct
    from scipy.signal import resample

    wave = load_audio(path, rate)
    wave = np.pad(wave, (0, max(0, 600 - len(wave))))  # at least 2 frames for the deltas
    mel = mel_extractor(rate)(wave, sampling_rate=rate, do_normalize_per_mel_bins=False)
    cepstra = dct(np.asarray(mel["input_features"][0]), type=2, axis=1, norm="ortho")[:, 1:14]
    cepstra -= cepstra.mean(axis=0)
    deltas = np.diff(cepstra, axis=0, prepend=cepstra[:1])
    return resample(np.concatenate([cepstra, deltas], axis=1), 16, axis=0).ravel()


def fitted_row(model, inputs, splits: dict[str, list[dict]], tests: dict[str, list[dict]]) -> dict:
    """A reference row: the scikit-learn `model` fitted on `inputs(row)` of the training and
    validation clips, then its accuracy on each of `tests`."""
    start = time.perf_counter()
    known = splits["train"] + splits["validation"]
    model.fit([inputs(r) for r in known], [r["label"] for r in known])
    accuracy = {
        name: float(np.mean(model.predict([inputs(r) for r in rows]) == [r["label"] for r in rows]))
        for name, rows in tests.items()
    }
    return {"accuracy": accuracy, "epochs": 0, "seconds": time.perf_counter() - start}


def mfcc_svm(splits: dict[str, list[dict]], tests: dict[str, list[dict]]) -> dict:
    """The `mfcc_svm` reference row: no network, no augmentation, an RBF support vector
    machine on `mfcc_features` of the training and validation clips. It says what a classical
    speech recipe reaches on the same folds."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    svm = make_pipeline(StandardScaler(), SVC(C=10.0))
    return fitted_row(svm, lambda r: mfcc_features(r["path"]), splits, tests)


def text_bow(splits: dict[str, list[dict]], tests: dict[str, list[dict]]) -> dict:
    """The `text_bow` reference row (new-wording check): no audio at all, a logistic
    regression on the word counts of what the training and validation clips say, tested on
    what the test clips say. It says how much of the intent the words carry, the most a
    model that heard every word right could use."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    clips = [*splits["train"], *splits["validation"], *(r for rows in tests.values() for r in rows)]
    if not all("text" in r for r in clips):
        raise SystemExit("text_bow needs what each clip says: use it with --check new-wording")
    model = make_pipeline(CountVectorizer(), LogisticRegression(C=10.0, max_iter=2000))
    return fitted_row(model, lambda r: r["text"], splits, tests)


EMBEDDING_SECONDS = 2.5
"""Clips are zero-padded on both sides to at least this long: the encoder reads 76 log-mel
frames (0.78 s of audio) at a time, every 80 ms, so a short word gets several views of its
context."""


@functools.cache
def speech_embedding_sessions() -> tuple:
    """onnxruntime sessions of openWakeWord's two graphs (the front end and Google's
    `speech_embedding` encoder), from the pinned wheel (`voxclass.speech_embedding_onnx`)."""
    import onnxruntime as ort

    from voxclass.speech_embedding_onnx import fetch_onnx

    options = ort.SessionOptions()
    options.log_severity_level = 3
    cpu = ["CPUExecutionProvider"]
    return tuple(ort.InferenceSession(m, options, providers=cpu) for m in fetch_onnx())


@functools.cache
def speech_embedding_features(path: str) -> np.ndarray:
    """One vector per clip: Google's `speech_embedding` (96 values per 80 ms step, each over a
    0.78 s window) of the clip at 16 kHz, padded as `EMBEDDING_SECONDS` says, its mean and
    maximum over the steps. The front end takes 16-bit sample values, and the embedding its
    output scaled as openWakeWord scales it (x / 10 + 2)."""
    front, encoder = speech_embedding_sessions()
    wave = load_audio(path, 16000)
    pad = max(0, int(EMBEDDING_SECONDS * 16000) - len(wave))
    wave = np.pad(wave, (pad // 2, pad - pad // 2)) * 32767
    mel = front.run(None, {"input": wave[None].astype(np.float32)})[0].reshape(-1, 32) / 10 + 2
    windows = np.stack([mel[i : i + 76] for i in range(0, len(mel) - 75, 8)])
    steps = encoder.run(None, {"input_1": windows[..., None].astype(np.float32)})[0]
    steps = steps.reshape(len(windows), -1)
    return np.concatenate([steps.mean(axis=0), steps.max(axis=0)])


def speech_embedding(splits: dict[str, list[dict]], tests: dict[str, list[dict]]) -> dict:
    """The `speech_embedding` reference row: an encoder pretrained on real speech by others,
    frozen, and a logistic regression on `speech_embedding_features` of the training and
    validation clips. It says what knowledge of many real voices is worth on the same folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    return fitted_row(model, lambda r: speech_embedding_features(r["path"]), splits, tests)


REFERENCES = {"mfcc_svm": mfcc_svm, "text_bow": text_bow, "speech_embedding": speech_embedding}
"""Rows that are not a voxclass recipe, for scale: `--variants baseline,mfcc_svm`."""


def variant_part(part: str) -> Variant | None:
    """A named variant, or `seedN`: another seed for initialization and augmentation (the
    splits are fixed), a replicate of whatever it is added to (`wide+seed2`)."""
    if seed := re.fullmatch(r"seed(\d+)", part):
        return Variant(train={"seed": int(seed[1])})
    return VARIANTS.get(part)


def variant_named(name: str) -> Variant:
    if name in REFERENCES:
        return Variant()
    parts = {p: variant_part(p) for p in name.split("+")}
    unknown = [p for p, v in parts.items() if v is None]
    if unknown:
        known = ", ".join([*VARIANTS, "seedN", *REFERENCES])
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; known: {known}")
    return functools.reduce(lambda a, b: a + b, parts.values())


@contextlib.contextmanager
def applied(variant: Variant, preset: str) -> Iterator[str]:
    """The preset name to train, with the variant's changes in place while training runs.
    A pretrained model (`speech-tiny`, a model directory) keeps its extractor, and its model
    config changes only where `from_pretrained` can apply them over the saved config (the
    classification head, dropout, SpecAugment)."""

    def spec():
        config, extractor = preset_config(preset)
        for key, value in variant.model.items():
            setattr(config, key, value)
        if variant.extractor:
            arguments = ("feature_size", "sampling_rate", "num_mel_bins", "padding_value", "stride")
            kept = {k: getattr(extractor, k) for k in arguments}
            extractor = type(extractor)(**{**kept, **variant.extractor})
        return config, extractor

    def arguments(*a, **k):
        args = original_arguments(*a, **k)
        for key, value in variant.args.items():
            setattr(args, key, value)
        return args

    def build(*a, **k):
        return original_build(*a, **{**k, **variant.model})

    pretrained = preset not in PRESETS
    if pretrained and (set(variant.model) - PRETRAINED_CHANGES or variant.extractor):
        raise SystemExit(
            f"{preset} is pretrained: its extractor cannot change, and of its model config "
            f"only {', '.join(sorted(PRETRAINED_CHANGES))}"
        )
    name = preset if pretrained else f"{preset}@bench"
    original_arguments, original_build = train_module.training_arguments, train_module.build_model
    if pretrained:
        train_module.build_model = build
    else:
        PRESETS[name] = spec
    train_module.Augment = functools.partial(Augment, **variant.augment)
    train_module.training_arguments = arguments
    try:
        yield name
    finally:
        PRESETS.pop(f"{preset}@bench", None)
        train_module.Augment = Augment
        train_module.training_arguments = original_arguments
        train_module.build_model = original_build


def clips(data: Path, takes: int | None) -> list[dict]:
    """Every FSDD clip with digit, speaker and take number (only takes < `takes` if given)."""
    rows = []
    for path in sorted(data.glob("*/*.wav")):
        match = FILE_NAME.match(path.name)
        if match and (takes is None or int(match["take"]) < takes):
            rows.append({"path": str(path.resolve()), "label": match["digit"], **match.groupdict()})
    if not rows:
        raise SystemExit(f"{data}: no FSDD clips (<digit>/<digit>_<speaker>_<n>.wav)")
    return rows


def write_manifest(splits: dict[str, list[dict]], manifest: Path) -> None:
    """A CSV manifest (path, label, split, speaker) of the given clips."""
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "label", "split", "speaker"])
        writer.writeheader()
        for split, rows in splits.items():
            writer.writerows(
                {"path": r["path"], "label": r["label"], "split": split, "speaker": r["speaker"]}
                for r in rows
            )


def fold_splits(rows: list[dict], held_out: str) -> dict[str, list[dict]]:
    """The held-out speaker as test, every tenth take of the others as validation."""
    others = [r for r in rows if r["speaker"] != held_out]
    return {
        "train": [r for r in others if int(r["take"]) % 10],
        "validation": [r for r in others if int(r["take"]) % 10 == 0],
        "test": [r for r in rows if r["speaker"] == held_out],
    }


def pipeline_accuracy(model_dir: Path, rows: list[dict]) -> float:
    """Accuracy of stock `pipeline("audio-classification")` on the clips (decoded at the
    model's rate, as the pipeline does not resample without torchaudio). A model type that
    transformers does not have (`speech-embedding`) runs the code saved in its folder."""
    classify = pipeline(
        "audio-classification", model=str(model_dir), device="cpu", trust_remote_code=True
    )
    rate = classify.feature_extractor.sampling_rate
    inputs = [{"raw": load_audio(r["path"], rate), "sampling_rate": rate} for r in rows]
    predicted = [p[0]["label"] for p in classify(inputs, top_k=1)]
    return float(np.mean([p == r["label"] for p, r in zip(predicted, rows, strict=True)]))


@contextlib.contextmanager
def locked(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def train_and_test(
    preset: str,
    variant: Variant,
    splits: dict[str, list[dict]],
    tests: dict[str, list[dict]],
    work: Path,
    epochs: float | None,
    lock: Path | None,
) -> dict:
    """Train the preset with the variant on `splits` (the trainer's own test:
    `splits["test"]`), then the stock pipeline's accuracy on each of `tests`."""
    manifest = work / "manifest.csv"
    write_manifest(splits, manifest)
    settings = {"epochs": epochs} if epochs else {}
    with locked(lock), applied(variant, preset) as name:
        config = TrainConfig(
            source=str(manifest),
            model=name,
            output=str(work / "model"),
            allow_outside_paths=True,  # the fold's manifest (a temp file) names FSDD's clips
            **{**settings, **variant.train},
        )
        model_dir = train(config)
        accuracies = {name: pipeline_accuracy(model_dir, rows) for name, rows in tests.items()}
    metrics = json.loads((model_dir / "metrics.json").read_text())
    shutil.rmtree(model_dir)
    return {
        "accuracy": accuracies,
        "epochs": max((e.get("epoch", 0) for e in metrics["epochs"]), default=0),
        "seconds": metrics["train"]["wall_seconds"],
    }


def synth_rows(out: Path) -> dict[str, list[dict]]:
    """The clips of a `voxclass synth` folder by split, from its metadata.csv."""
    by_split: dict[str, list[dict]] = {}
    with open(out / "metadata.csv", newline="") as f:
        for r in csv.DictReader(f):
            row = {
                "path": str(out / r["file_name"]),
                "label": r["label"],
                "speaker": r["voice"],
                "text": r["text"],
            }
            by_split.setdefault(r["split"], []).append(row)
    return by_split


def digit_words(out: Path, per_label: int) -> dict[str, list[dict]]:
    """Synthetic digit words (`phrases/digits.yaml`; every voice, wideband at FSDD's 8 kHz)
    in train and validation splits."""
    from voxclass.synth import SynthConfig, synthesize

    synthesize(
        SynthConfig(
            out=out,
            phrases="digits",
            train_per_label=per_label,
            validation_per_label=max(1, per_label // 10),
            test_per_label=0,
            test_voice_fraction=0.0,
            channel="wideband",
            sampling_rate=8000,
        )
    )
    return synth_rows(out)


def synth_digits(rows: list[dict], work: Path, quick: bool) -> dict[str, dict[str, list[dict]]]:
    """Synthetic digit words only as train and validation; every real clip as test, one test
    set per speaker."""
    synth = digit_words(work / "synth-digits", 5 if quick else 150)
    speakers = sorted({r["speaker"] for r in rows})
    splits = {"train": synth["train"], "validation": synth["validation"], "test": rows}
    tests = {s: [r for r in rows if r["speaker"] == s] for s in speakers}
    return {"splits": splits, "tests": tests}


def added_synth(variant: Variant, tmp: Path, quick: bool, lock: Path | None) -> list[dict]:
    """The variant's synthetic digit words for the training split (none for most variants)."""
    if not variant.synth:
        return []
    per_label = 5 if quick else variant.synth["per_label"]
    with locked(lock):
        return digit_words(tmp / f"added-{per_label}", per_label)["train"]


def new_wording(rows: list[dict], work: Path, quick: bool) -> dict[str, dict[str, list[dict]]]:
    """Synthetic banking requests: train on half of each intent's phrasings; test on unseen
    voices saying trained phrasings, and unseen voices saying the other half (`rows`, the real
    clips, are not used)."""
    from voxclass.synth import NEW_WORDING_SPLIT, SynthConfig, synthesize

    per_label = 4 if quick else 60
    out = work / "new-wording"
    synthesize(
        SynthConfig(
            out=out,
            phrases="banking",
            train_per_label=per_label,
            validation_per_label=max(1, per_label // 10),
            test_per_label=max(2, per_label // 3),
            new_wording_per_label=max(2, per_label // 3),
            new_wording_fraction=0.5,
        )
    )
    synth = synth_rows(out)
    splits = {k: synth[k] for k in ("train", "validation", "test")}
    tests = {"unseen voices": synth["test"], "unseen wording": synth[NEW_WORDING_SPLIT]}
    return {"splits": splits, "tests": tests}


def table(title: str, results: dict[str, dict[str, float]], seconds: dict[str, float]) -> None:
    columns = list(next(iter(results.values())))
    print(f"\n{title}\n")
    print("| variant | " + " | ".join(columns) + " | mean | train s |")
    print("|---|" + "---|" * (len(columns) + 2))
    for name, accuracies in results.items():
        cells = " | ".join(f"{accuracies[c]:.3f}" for c in columns)
        mean = np.mean(list(accuracies.values()))
        print(f"| {name} | {cells} | **{mean:.3f}** | {seconds[name]:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", default="baseline", help=f"of: {', '.join([*VARIANTS, *REFERENCES])}"
    )
    parser.add_argument("--folds", help="held-out speakers (default: all four)")
    parser.add_argument("--check", default="speakers", help="of: " + ", ".join(CHECKS))
    parser.add_argument(
        "--preset",
        default="tiny",
        help=f"{', '.join(PRESETS)}, speech-tiny, speech-embedding, or a `voxclass pretrain` "
        "output folder",
    )
    parser.add_argument("--data", type=Path, default=FSDD)
    parser.add_argument("--epochs", type=float, help="override the recipe's epochs (screening)")
    parser.add_argument("--lock", type=Path, help="flock this file around each training run")
    parser.add_argument("--json", type=Path, help="also write every result here")
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    args = parser.parse_args()
    rows = clips(args.data, takes=3 if args.quick else None)
    speakers = sorted({r["speaker"] for r in rows})
    folds = args.folds.split(",") if args.folds else speakers
    if args.quick:
        folds, args.epochs = folds[-1:], 1
    unknown = sorted(set(folds) - set(speakers))
    if unknown:
        raise SystemExit(f"--folds {', '.join(unknown)}: speakers are {', '.join(speakers)}")
    checks = args.check.split(",")
    if set(checks) - set(CHECKS):
        raise SystemExit(f"--check {args.check}: checks are {', '.join(CHECKS)}")
    variants = {name: variant_named(name) for name in args.variants.split(",")}
    results: dict[str, dict[str, dict]] = {check: {} for check in checks}
    seconds: dict[str, dict[str, float]] = {check: {} for check in checks}
    with tempfile.TemporaryDirectory(prefix="unseen_speakers_") as tmp:
        runs = []  # (check, variant, label of the run, splits and tests)
        for check in checks:
            if check == "speakers":
                for name, variant in variants.items():
                    added = added_synth(variant, Path(tmp), args.quick, args.lock)
                    for held_out in folds:
                        held = fold_splits(rows, held_out)
                        held["train"] = held["train"] + added
                        runs.append((check, name, held_out, held, {held_out: held["test"]}))
                continue
            make = synth_digits if check == "synth-digits" else new_wording
            with locked(args.lock):
                made = make(rows, Path(tmp) / check, args.quick)
            runs += [(check, name, check, made["splits"], made["tests"]) for name in variants]
        for check, name, label, splits, tests in runs:
            work = Path(tmp) / re.sub(r"\W", "_", f"{check}-{name}-{label}")
            work.mkdir()
            if name in REFERENCES:
                with locked(args.lock):
                    r = REFERENCES[name](splits, tests)
            else:
                r = train_and_test(
                    args.preset, variants[name], splits, tests, work, args.epochs, args.lock
                )
            results[check].setdefault(name, {}).update(r["accuracy"])
            seconds[check][name] = seconds[check].get(name, 0) + r["seconds"]
            found = ", ".join(f"{k} {v:.3f}" for k, v in r["accuracy"].items())
            print(f"[{check}: {name}] {found} ({r['epochs']:.0f} epochs, {r['seconds']:.0f} s)")
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))
    epochs = f"{args.epochs:g} epochs" if args.epochs else "the recipe's epochs"
    titles = {
        "speakers": "accuracy on each held-out FSDD speaker (trained on the other three)",
        "synth-digits": "trained on synthetic digit words only; accuracy on each real speaker",
        "new-wording": "synthetic banking requests; accuracy on unseen voices and unseen wording",
    }
    for check in checks:
        table(
            f"preset {args.preset}, {epochs}, stock pipeline: {titles[check]}",
            results[check],
            seconds[check]
            if check != "speakers"
            else {k: v / len(folds) for k, v in seconds[check].items()},
        )


if __name__ == "__main__":
    main()
