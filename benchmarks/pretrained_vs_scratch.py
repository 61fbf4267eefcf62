"""Does pretraining help? The same data and budget, from scratch vs from a pretrained encoder.

Three tasks, each trained twice through voxclass's own `train()` with the same epochs, one run
from the `--scratch` preset (random weights, its learning rate 1e-3) and one from the
`--pretrained` encoder (`speech-tiny`, or any `voxclass pretrain` output; its fine-tuning
learning rate), scored by stock `transformers.pipeline("audio-classification")`:

- FSDD leave-one-speaker-out: train on three real speakers, test on all 500 clips of the fourth
  (`unseen_speakers.py`'s folds);
- the demo's unseen wording: synthetic banking requests, trained on half of each intent's
  phrasings, tested on unseen voices saying trained phrasings and saying the other half;
- few-shot: 10 real FSDD clips per digit (any speaker) to train on, 3 more per digit to pick
  the best epoch, every other FSDD clip to test.

    python benchmarks/pretrained_vs_scratch.py [--scratch tiny-fine-128] [--pretrained speech-tiny]
        [--tasks loso,wording,fewshot] [--folds theo,...] [--epochs 10]
        [--lock /tmp/voxclass-cpu.lock] [--quick]

`--quick` is a seconds-long smoke run (one fold and three takes per digit and speaker, tiny
synthetic and few-shot sets, one epoch, and a seconds-long `voxclass pretrain` as the pretrained
encoder): it checks the benchmark runs, not whether pretraining helps.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from unseen_speakers import (  # noqa: E402 - the benchmark beside this one
    FSDD,
    Variant,
    clips,
    fold_splits,
    locked,
    new_wording,
    train_and_test,
)

TASKS = ("loso", "wording", "fewshot")


def few_shot(rows: list[dict], per_class: int, seed: int = 0) -> dict:
    """`per_class` training clips per digit drawn from every speaker, 3 more per digit for
    validation, the rest as test."""
    rng = random.Random(seed)
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for digit in sorted({r["label"] for r in rows}):
        chosen = [r for r in rows if r["label"] == digit]
        rng.shuffle(chosen)
        splits["train"] += chosen[:per_class]
        splits["validation"] += chosen[per_class : per_class + 3]
        splits["test"] += chosen[per_class + 3 :]
    return {"splits": splits, "tests": {f"few-shot, {per_class} clips/class": splits["test"]}}


def quick_encoder(folder: Path, lock: Path | None) -> str:
    """A seconds-long `voxclass pretrain` output to fine-tune in --quick mode."""
    from voxclass.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(
        out=folder, hours=0.01, batch_size=4, max_words=3, validation_clips=4, workers=0
    )
    with locked(lock):
        pretrain(config, log=lambda line: None)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scratch",
        default="tiny-fine-128",
        help="preset trained from scratch (default: the shape of speech-tiny)",
    )
    parser.add_argument("--pretrained", default="speech-tiny", help="speech-tiny or a folder")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"of: {', '.join(TASKS)}")
    parser.add_argument("--folds", help="held-out FSDD speakers (default: all four)")
    parser.add_argument("--data", type=Path, default=FSDD)
    parser.add_argument("--epochs", type=float, default=10.0, help="the same for both")
    parser.add_argument("--shots", type=int, default=10, help="few-shot clips per class")
    parser.add_argument("--lock", type=Path, help="flock this file around each training run")
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    if set(tasks) - set(TASKS):
        raise SystemExit(f"--tasks {args.tasks}: tasks are {', '.join(TASKS)}")
    rows = clips(args.data, takes=3 if args.quick else None)
    speakers = sorted({r["speaker"] for r in rows})
    folds = args.folds.split(",") if args.folds else speakers
    if args.quick:
        folds, args.epochs, args.shots = folds[-1:], 1.0, 2
    if set(folds) - set(speakers):
        raise SystemExit(f"--folds {args.folds}: speakers are {', '.join(speakers)}")

    results: dict[str, dict[str, float]] = {}  # test -> {start: accuracy}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="pretrained_vs_scratch_") as tmp:
        pretrained = (
            quick_encoder(Path(tmp) / "encoder", args.lock) if args.quick else args.pretrained
        )
        runs = []  # (splits, tests)
        if "loso" in tasks:
            for held_out in folds:
                held = fold_splits(rows, held_out)
                runs.append((held, {f"FSDD unseen speaker {held_out}": held["test"]}))
        if "wording" in tasks:
            with locked(args.lock):
                made = new_wording(rows, Path(tmp) / "wording", args.quick)
            tests = {f"demo {name}": clips_ for name, clips_ in made["tests"].items()}
            runs.append((made["splits"], tests))
        if "fewshot" in tasks:
            made = few_shot(rows, args.shots)
            runs.append((made["splits"], made["tests"]))
        for i, (splits, tests) in enumerate(runs):
            for start, model in (("scratch", args.scratch), ("pretrained", pretrained)):
                work = Path(tmp) / re.sub(r"\W", "_", f"{i}-{start}")
                work.mkdir()
                r = train_and_test(model, Variant(), splits, tests, work, args.epochs, args.lock)
                for test, accuracy in r["accuracy"].items():
                    results.setdefault(test, {})[start] = accuracy
                    print(f"[{test}] {start} ({model}): {accuracy:.3f} ({r['seconds']:.0f} s)")
                seconds[start] = seconds.get(start, 0.0) + r["seconds"]

    loso = [t for t in results if t.startswith("FSDD unseen speaker")]
    if loso:
        results["FSDD leave-one-speaker-out, mean"] = {
            start: float(np.mean([results[t][start] for t in loso]))
            for start in ("scratch", "pretrained")
        }
    print(
        f"\nstock pipeline accuracy, {args.epochs:g} epochs each: from scratch ({args.scratch}) "
        f"vs fine-tuned from {args.pretrained if not args.quick else 'a seconds-long pretrain'}\n"
    )
    print("| test | scratch | pretrained | gain |")
    print("|---|---|---|---|")
    for test, by_start in results.items():
        scratch, pretrained_accuracy = by_start["scratch"], by_start["pretrained"]
        gain = pretrained_accuracy - scratch
        print(f"| {test} | {scratch:.3f} | {pretrained_accuracy:.3f} | {gain:+.3f} |")
    print(
        f"| training seconds, all runs | {seconds['scratch']:.0f} | "
        f"{seconds['pretrained']:.0f} | |"
    )


if __name__ == "__main__":
    main()
