"""The tutorial ("seed") recipe vs voxclass: same preset, same synthetic data, same
wall-clock budget. Prints held-out (unseen-voice) accuracy and training throughput of each.

The seed recipe, as in the Hugging Face audio-classification tutorial: every clip truncated to
1 s (train and test), padded to that maximum, lr 3e-5, batch 32, gradient accumulation 4,
warm-up 10 %, no augmentation, random batches, best model by accuracy on the test split.
The voxclass side is exactly `voxclass demo`'s training run (`demo.demo_training`), and the
data is the demo's data set; both get the demo's training budget unless told otherwise.

    python benchmarks/recipe_vs_seed.py [--budget-minutes 8] [--data DIR] [--model tiny]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from transformers import Trainer, TrainingArguments, set_seed

from voxclass.data import DataConfig, load_data
from voxclass.demo import DemoConfig, demo_data, demo_training
from voxclass.features import decode_split, featurize
from voxclass.model import build_model
from voxclass.synth import synthesize
from voxclass.train import TimeBudget, compute_metrics, train


def seed_recipe(data: Path, model_name: str, minutes: float, out: Path) -> dict:
    set_seed(0)
    dd = load_data(DataConfig(source=str(data)))
    labels = dd["train"].features["label"].names
    model, extractor = build_model(model_name, labels)
    rate = extractor.sampling_rate
    train_set = featurize(decode_split(dd["train"], rate), extractor, rate, max_seconds=1.0)
    test_set = featurize(decode_split(dd["test"], rate), extractor, rate, max_seconds=1.0)
    name = extractor.model_input_names[0]
    frames = max(len(x) for x in train_set["inputs"])

    def pad_to_max(examples):  # the seed pads every batch to the 1 s maximum
        batch = extractor.pad(
            {name: [e["inputs"] for e in examples]},
            padding="max_length",
            max_length=frames,
            return_tensors="pt",
        )
        return {**batch, "labels": torch.tensor([int(e["label"]) for e in examples])}

    args = TrainingArguments(
        output_dir=str(out),
        learning_rate=3e-5,
        per_device_train_batch_size=32,
        gradient_accumulation_steps=4,
        per_device_eval_batch_size=32,
        num_train_epochs=1000,  # far beyond the budget: the wall clock ends the run
        warmup_steps=0.1,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        save_total_limit=1,
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=pad_to_max,
        train_dataset=train_set,
        eval_dataset=test_set,
        compute_metrics=compute_metrics,
        callbacks=[TimeBudget(minutes)],
    )
    result = trainer.train()
    final = trainer.evaluate()
    clips = trainer.state.global_step * 32 * 4
    return {
        "accuracy": final["eval_accuracy"],
        "macro_f1": final["eval_macro_f1"],
        "seconds": result.metrics["train_runtime"],
        "clips": clips,
        "audio_seconds": clips * 1.0,
    }


def voxclass_defaults(data: Path, model_name: str, minutes: float, out: Path) -> dict:
    demo = DemoConfig(time_budget_minutes=minutes)
    config = demo_training(demo, data, out)
    config.model = model_name
    # the demo sizes its epochs to its budget: keep that ratio for another budget
    config.epochs = max(1, round(DemoConfig.epochs * minutes / DemoConfig.time_budget_minutes))
    model_dir = train(config)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    steps = max(e["step"] for e in metrics["epochs"])
    clips = steps * config.batch_size
    train_files = load_data(DataConfig(source=str(data)))["train"]["audio"]
    mean_seconds = np.mean(
        [min(sf.info(a["path"]).duration, metrics["max_seconds"]) for a in train_files]
    )
    return {
        "accuracy": metrics["final"]["accuracy"],
        "macro_f1": metrics["final"]["macro_f1"],
        "seconds": metrics["train"]["train_runtime"],
        "clips": clips,
        "audio_seconds": clips * mean_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=DemoConfig.time_budget_minutes)
    parser.add_argument("--data", type=Path, help="audiofolder (default: synthesize the demo set)")
    parser.add_argument("--model", default="tiny")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="recipe_vs_seed_"))
    data = args.data
    if data is None:
        data = work / "data"
        synthesize(demo_data(DemoConfig(output=work)))
    rows = {}
    for name, run in (("seed recipe", seed_recipe), ("voxclass", voxclass_defaults)):
        start = time.perf_counter()
        rows[name] = run(data, args.model, args.budget_minutes, work / name.replace(" ", "_"))
        rows[name]["wall"] = time.perf_counter() - start
    seed, ours = rows["seed recipe"], rows["voxclass"]
    print(
        f"\nsame preset ({args.model}), same data ({data}), {args.budget_minutes:g} min of "
        "training each; test = voices never heard in training\n"
    )
    print("| recipe | test accuracy | macro-F1 | train clips/s | train audio s/s | wall s |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        r["clips_per_s"] = r["clips"] / r["seconds"]
        r["audio_per_s"] = r["audio_seconds"] / r["seconds"]
        print(
            f"| {name} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {r['clips_per_s']:.1f} | "
            f"{r['audio_per_s']:.1f} | {r['wall']:.0f} |"
        )
    ratio = {
        k: ours[k] / max(seed[k], 1e-9)
        for k in ("accuracy", "macro_f1", "clips_per_s", "audio_per_s")
    }
    print(
        f"| **voxclass / seed** | **{ratio['accuracy']:.1f}x** | {ratio['macro_f1']:.1f}x | "
        f"{ratio['clips_per_s']:.2f}x | {ratio['audio_per_s']:.2f}x | |"
    )


if __name__ == "__main__":
    main()
