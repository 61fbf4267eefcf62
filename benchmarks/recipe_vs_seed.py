"""Where the demo's accuracy comes from: the tutorial ("seed") recipe, then voxclass's changes
added one at a time, all on the same preset, data and training budget. Prints unseen-voice test
accuracy, its gain over the row above, and training throughput for each row.

Rows (each keeps every change above it):

- seed recipe: the Hugging Face audio-classification tutorial. Every clip truncated to 1 s
  (train and test) and padded to that maximum, learning rate 3e-5 (a fine-tuning rate), batch
  32 x gradient accumulation 4, linear schedule with 10 % warm-up, random batches, no
  augmentation, best epoch by accuracy on the test split.
- + voxclass learning rate: voxclass's learning rate for a preset trained from scratch.
- + voxclass batch size: voxclass's batch and accumulation (more optimizer steps per epoch).
- + max-duration crop: clips kept up to the data-derived max duration (95th percentile of the
  training lengths); training takes a random window of longer clips, testing their start.
- + per-batch padding: each batch padded to its own longest clip, batches grouped by length.
- voxclass (the demo's run): `voxclass demo`'s training run itself (`demo.demo_training`,
  through `voxclass.train`), which adds what remains: cosine schedule, weight decay, early
  stopping, best epoch by macro-F1 on the validation split (so the test figure is not chosen on
  the test clips).

There is no augmentation row: the demo trains on clean clips only (`augment_copies=1`), and
SpecAugment masks come from the preset's config, so every row has them. Every row plans the
demo's epochs (the schedule's warm-up and decay run over them) and stops at the demo's time
budget if not done; seed, epochs, budget and data set all come from `DemoConfig` and
`demo_training`, so the last row is exactly what `voxclass demo --model tiny --head mean`
trains. The model is `tiny` from scratch under the stock head, not the demo's default (word
detectors on the pretrained `speech-tiny`): the ladder compares training recipes, and the
tutorial's has no encoder of its own to start from.

    python benchmarks/recipe_vs_seed.py [--data DIR] [--budget-minutes M] [--quick]

A full run takes up to the demo's budget per row. `--quick` (what the test suite runs) uses 4
training clips per intent and 2 epochs: seconds per row, figures meaningless.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
from transformers import TrainingArguments, set_seed

from voxclass.data import DataConfig, label_names, load_data
from voxclass.demo import DemoConfig, demo_data, demo_training
from voxclass.features import (
    Augment,
    PadCollator,
    decode_split,
    featurize,
    max_seconds_for,
    min_input_length,
)
from voxclass.metrics import trainer_metrics
from voxclass.model import build_model
from voxclass.synth import synthesize
from voxclass.train import (
    TimeBudget,
    TrainConfig,
    VoxTrainer,
    train,
    training_arguments,
)

QUICK = {"train_per_intent": 4, "validation_per_intent": 1, "test_per_intent": 2, "epochs": 2}


@dataclass(frozen=True)
class Recipe:
    """The knobs in which the seed recipe and voxclass differ (seed values as defaults)."""

    learning_rate: float = 3e-5
    batch_size: int = 32
    grad_accum: int = 4
    max_seconds: float | None = 1.0
    """Clips cut to their first this many seconds; None: voxclass's data-derived max duration,
    with a random window of longer clips in training."""
    per_batch_padding: bool = False
    """Each batch padded to its longest clip over length-grouped batches, instead of every
    batch to the longest clip of the data."""


def ladder(voxclass: TrainingArguments) -> list[tuple[str, Recipe]]:
    """The seed recipe, then one voxclass change more per row (values from voxclass's own
    training arguments, not restated here)."""
    changes = [
        ("+ voxclass learning rate", {"learning_rate": voxclass.learning_rate}),
        (
            "+ voxclass batch size",
            {
                "batch_size": voxclass.per_device_train_batch_size,
                "grad_accum": voxclass.gradient_accumulation_steps,
            },
        ),
        ("+ max-duration crop", {"max_seconds": None}),
        ("+ per-batch padding", {"per_batch_padding": True}),
    ]
    rows = [("seed recipe", Recipe())]
    for name, change in changes:
        rows.append((name, replace(rows[-1][1], **change)))
    return rows


def mean_clip_seconds(data: str, limit: float) -> float:
    """Mean audio seconds a training clip contributes once cut to `limit` seconds."""
    files = load_data(DataConfig(source=data))["train"]["audio"]
    return float(np.mean([min(sf.info(a["path"]).duration, limit) for a in files]))


def run_recipe(recipe: Recipe, run: TrainConfig, out: Path) -> dict:
    """Train with `recipe` on the demo's data, epochs and budget; score on the test split."""
    set_seed(run.seed)
    dd = load_data(DataConfig(source=run.source))
    model, extractor = build_model(run.model, label_names(dd["train"]))
    rate = extractor.sampling_rate
    train_waves, test_waves = decode_split(dd["train"], rate), decode_split(dd["test"], rate)
    seconds = recipe.max_seconds or max_seconds_for(np.asarray(train_waves["length"]), rate)
    # With an Augment and one copy, featurize keeps the clean clip and crops it at random.
    random_window = Augment() if recipe.max_seconds is None else None
    train_set = featurize(train_waves, extractor, rate, seconds, random_window, seed=run.seed)
    test_set = featurize(test_waves, extractor, rate, seconds)
    shortest = min_input_length(model)
    if recipe.per_batch_padding:
        collate = PadCollator(extractor, shortest)
    else:  # every batch padded to the longest clip of the data
        collate = PadCollator(extractor, max(shortest, *(len(x) for x in train_set["inputs"])))
    args = TrainingArguments(
        output_dir=str(out),
        num_train_epochs=run.epochs,
        learning_rate=recipe.learning_rate,
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        per_device_eval_batch_size=32,
        warmup_steps=0.1,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        save_total_limit=1,
        train_sampling_strategy="group_by_length" if recipe.per_batch_padding else "random",
        length_column_name="length",
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
        seed=run.seed,
    )
    trainer = VoxTrainer(
        model=model,
        args=args,
        data_collator=collate,
        train_dataset=train_set,
        eval_dataset=test_set,
        compute_metrics=trainer_metrics,
        callbacks=[TimeBudget(run.time_budget_minutes)],
    )
    result = trainer.train()
    final = trainer.evaluate()
    return {
        "accuracy": final["eval_accuracy"],
        "macro_f1": final["eval_macro_f1"],
        "seconds": result.metrics["train_runtime"],
        "epochs": trainer.state.epoch,
        "clips": trainer.state.epoch * len(train_set),
        "clip_seconds": mean_clip_seconds(run.source, seconds),
    }


def run_voxclass(run: TrainConfig) -> dict:
    """The demo's own training run, through `voxclass.train`."""
    metrics = json.loads((train(run) / "metrics.json").read_text())
    epochs = max(e["epoch"] for e in metrics["epochs"])
    return {
        "accuracy": metrics["final"]["accuracy"],
        "macro_f1": metrics["final"]["macro_f1"],
        "seconds": metrics["train"]["train_runtime"],
        "epochs": epochs,
        "clips": epochs * metrics["train"]["train_clips"],
        "clip_seconds": mean_clip_seconds(run.source, metrics["max_seconds"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="audiofolder (default: synthesize the demo set)")
    parser.add_argument("--budget-minutes", type=float, help="default: the demo's budget")
    parser.add_argument("--quick", action="store_true", help="tiny data, 2 epochs (seconds)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="recipe_vs_seed_"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # models, data: all temporary
    demo = DemoConfig(output=work, model="tiny", head="mean", **(QUICK if args.quick else {}))
    if args.budget_minutes:
        demo = replace(demo, time_budget_minutes=args.budget_minutes)
    data = args.data
    if data is None:
        data = demo_data(demo).out
        synthesize(demo_data(demo))
    run = demo_training(demo, data, work / "voxclass")
    rows = {}
    for name, recipe in ladder(training_arguments(run, from_scratch=True)):
        start = time.perf_counter()
        rows[name] = run_recipe(recipe, run, work / name.strip("+ ").replace(" ", "_"))
        rows[name]["wall"] = time.perf_counter() - start
    start = time.perf_counter()
    rows["voxclass (the demo's run)"] = run_voxclass(run)
    rows["voxclass (the demo's run)"]["wall"] = time.perf_counter() - start

    print(
        f"\nsame preset ({run.model}), same data ({data}), {run.epochs:g} planned epochs and at "
        f"most {run.time_budget_minutes:g} min of training per row; test = voices never heard "
        "in training\n"
    )
    print(
        "| recipe | test accuracy | gain | macro-F1 | epochs | train clips/s | train audio s/s "
        "| wall s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    previous = None
    for name, r in rows.items():
        r["clips_per_s"] = r["clips"] / r["seconds"]
        r["audio_per_s"] = r["clips"] * r["clip_seconds"] / r["seconds"]
        gain = "" if previous is None else f"{r['accuracy'] - previous:+.3f}"
        previous = r["accuracy"]
        print(
            f"| {name} | {r['accuracy']:.3f} | {gain} | {r['macro_f1']:.3f} | {r['epochs']:.1f} "
            f"| {r['clips_per_s']:.1f} | {r['audio_per_s']:.1f} | {r['wall']:.0f} |"
        )
    seed, ours = rows["seed recipe"], rows["voxclass (the demo's run)"]
    ratio = {
        k: ours[k] / max(seed[k], 1e-9)
        for k in ("accuracy", "macro_f1", "clips_per_s", "audio_per_s")
    }
    print(
        f"| **voxclass / seed** | **{ratio['accuracy']:.1f}x** | | {ratio['macro_f1']:.1f}x | | "
        f"{ratio['clips_per_s']:.2f}x | {ratio['audio_per_s']:.2f}x | |"
    )


if __name__ == "__main__":
    main()
