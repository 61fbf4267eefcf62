"""Does a recipe hold for a speaker it never heard? FSDD leave-one-speaker-out.

Each fold trains on three of FSDD's four speakers (validation: every tenth take of those three,
so the best epoch is chosen without the held-out voice), and tests on all 500 clips of the
fourth with stock `transformers.pipeline("audio-classification")`. Training is voxclass's own
`train()`: the `baseline` variant is exactly what `voxclass train --model tiny` ships. A variant
changes one thing (TrainConfig fields, model config, feature extractor, augmentation or
TrainingArguments); join variants with `+` to combine them. Prints one row per variant: the
accuracy on each held-out speaker and their mean.

    python benchmarks/unseen_speakers.py [--variants baseline,stride2,...] [--folds theo,...]
        [--data ../shared/data/fsdd] [--epochs N] [--lock /tmp/voxclass-cpu.lock] [--quick]

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
PRESET = "tiny"


@dataclass
class Variant:
    """One change to the shipped recipe (every field empty: the recipe as shipped)."""

    train: dict = field(default_factory=dict)
    """TrainConfig fields."""
    model: dict = field(default_factory=dict)
    """Model config attributes of the preset."""
    extractor: dict = field(default_factory=dict)
    """Feature extractor attributes of the preset."""
    augment: dict = field(default_factory=dict)
    """Augment fields."""
    args: dict = field(default_factory=dict)
    """TrainingArguments attributes."""

    def __add__(self, other: Variant) -> Variant:
        return Variant(
            **{k: {**getattr(self, k), **getattr(other, k)} for k in self.__dataclass_fields__}
        )


VARIANTS: dict[str, Variant] = {
    "baseline": Variant(),
    "noearlystop": Variant(train={"early_stopping": 0}),
    "patience10": Variant(train={"early_stopping": 10}),
    "epochs60": Variant(train={"epochs": 60}),
    # frame rate: the preset stacks `stride` 20 ms frames at 8 kHz
    "stride2": Variant(model={"feature_projection_input_dim": 80}, extractor={"stride": 2}),
    "stride1": Variant(model={"feature_projection_input_dim": 40}, extractor={"stride": 1}),
    "nospecaug": Variant(model={"mask_time_prob": 0.0, "mask_feature_prob": 0.0}),
    "specaug2": Variant(model={"mask_time_prob": 0.1, "mask_feature_prob": 0.1}),
    "specaug4": Variant(model={"mask_time_prob": 0.2, "mask_feature_prob": 0.2}),
    "speed_wide": Variant(augment={"speed": (0.7, 1.4)}),
    "speed_off": Variant(augment={"speed": (1.0, 1.0)}),
    "copies6": Variant(train={"augment_copies": 6}),
    "smooth": Variant(args={"label_smoothing_factor": 0.1}),
    "lr2e-3": Variant(train={"learning_rate": 2e-3}),
    "lr5e-4": Variant(train={"learning_rate": 5e-4}),
    "wide": Variant(
        model={
            "hidden_size": 192,
            "intermediate_size": 384,
            "output_hidden_size": 192,
            "classifier_proj_size": 192,
        }
    ),
    "deep": Variant(model={"num_hidden_layers": 5}),
    "dropout2": Variant(model={"hidden_dropout": 0.2, "feat_proj_dropout": 0.2}),
}


def variant_named(name: str) -> Variant:
    parts = name.split("+")
    unknown = [p for p in parts if p not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    return functools.reduce(lambda a, b: a + b, (VARIANTS[p] for p in parts))


@contextlib.contextmanager
def applied(variant: Variant) -> Iterator[str]:
    """The preset name to train, with the variant's changes in place while training runs."""

    def spec():
        config, extractor = preset_config(PRESET)
        for key, value in variant.model.items():
            setattr(config, key, value)
        for key, value in variant.extractor.items():
            setattr(extractor, key, value)
        return config, extractor

    def arguments(*a, **k):
        args = original_arguments(*a, **k)
        for key, value in variant.args.items():
            setattr(args, key, value)
        return args

    name = f"{PRESET}@bench"
    original_arguments = train_module.training_arguments
    PRESETS[name] = spec
    train_module.Augment = functools.partial(Augment, **variant.augment)
    train_module.training_arguments = arguments
    try:
        yield name
    finally:
        del PRESETS[name]
        train_module.Augment = Augment
        train_module.training_arguments = original_arguments


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


def write_fold(rows: list[dict], held_out: str, manifest: Path) -> None:
    """A manifest with the held-out speaker as test and every tenth take of the others as
    validation."""
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "label", "speaker", "split"])
        writer.writeheader()
        for r in rows:
            if r["speaker"] == held_out:
                split = "test"
            else:
                split = "validation" if int(r["take"]) % 10 == 0 else "train"
            writer.writerow({"path": r["path"], "label": r["label"], "speaker": r["speaker"],
                             "split": split})


def pipeline_accuracy(model_dir: Path, rows: list[dict]) -> float:
    """Accuracy of stock `pipeline("audio-classification")` on the clips (decoded at the
    model's rate, as the pipeline does not resample without torchaudio)."""
    classify = pipeline("audio-classification", model=str(model_dir), device="cpu")
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


def run_fold(
    variant: Variant, rows: list[dict], held_out: str, work: Path, epochs: float | None,
    lock: Path | None,
) -> dict:
    manifest = work / f"{held_out}.csv"
    write_fold(rows, held_out, manifest)
    settings = {"epochs": epochs} if epochs else {}
    with locked(lock), applied(variant) as preset:
        config = TrainConfig(
            source=str(manifest),
            group_by="speaker",
            model=preset,
            output=str(work / f"model-{held_out}"),
            **{**settings, **variant.train},
        )
        model_dir = train(config)
        test = [r for r in rows if r["speaker"] == held_out]
        accuracy = pipeline_accuracy(model_dir, test)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    epochs_run = max((e.get("epoch", 0) for e in metrics["epochs"]), default=0)
    return {
        "accuracy": accuracy,
        "trainer_accuracy": metrics["final"]["accuracy"],
        "epochs": epochs_run,
        "seconds": metrics["train"]["wall_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="baseline", help=f"of: {', '.join(VARIANTS)}")
    parser.add_argument("--folds", help="held-out speakers (default: all four)")
    parser.add_argument("--data", type=Path, default=FSDD)
    parser.add_argument("--epochs", type=float, help="override the recipe's epochs (screening)")
    parser.add_argument("--lock", type=Path, help="flock this file around each fold")
    parser.add_argument("--json", type=Path, help="also write every fold's result here")
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
    names = args.variants.split(",")
    variants = {name: variant_named(name) for name in names}
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="unseen_speakers_") as tmp:
        for name, variant in variants.items():
            results[name] = {}
            for held_out in folds:
                work = Path(tmp) / re.sub(r"\W", "_", name)
                work.mkdir(exist_ok=True)
                start = time.perf_counter()
                r = run_fold(variant, rows, held_out, work, args.epochs, args.lock)
                results[name][held_out] = r
                print(
                    f"[{name}] held out {held_out}: accuracy {r['accuracy']:.3f} "
                    f"({r['epochs']:.0f} epochs, {r['seconds']:.0f} s training, "
                    f"{time.perf_counter() - start:.0f} s in all)",
                    flush=True,
                )
                if args.json:
                    args.json.write_text(json.dumps(results, indent=2))
    epochs = f"{args.epochs:g} epochs" if args.epochs else "the recipe's epochs"
    print(f"\npreset {PRESET}, {epochs}; accuracy on the held-out speaker (stock pipeline)\n")
    print("| variant | " + " | ".join(folds) + " | mean | train s/fold |")
    print("|---|" + "---|" * (len(folds) + 2))
    for name, by_fold in results.items():
        accuracies = [by_fold[f]["accuracy"] for f in folds]
        seconds = np.mean([by_fold[f]["seconds"] for f in folds])
        cells = " | ".join(f"{a:.3f}" for a in accuracies)
        print(f"| {name} | {cells} | **{np.mean(accuracies):.3f}** | {seconds:.0f} |")


if __name__ == "__main__":
    main()
