"""`voxclass demo`: the whole loop offline in minutes — synth, train `tiny`, evaluate, predict.

Writes the data to OUTPUT/data and the model to OUTPUT/model. The test split is spoken by
voices never used in training, so its accuracy is an unseen-speaker figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .classifier import Classifier
from .evaluate import EvalConfig, evaluate
from .synth import SynthConfig, synthesize
from .train import TrainConfig, train


@dataclass
class DemoConfig:
    """What `voxclass demo` runs."""

    output: Path = Path("demo")
    """Folder for data/ and model/."""
    train_per_intent: int = 120
    """Synthetic training clips per intent."""
    test_per_intent: int = 30
    """Synthetic test clips per intent (unseen voices)."""
    epochs: float = 10
    """Training epochs (each over the clean clips and their augmented copies)."""
    time_budget_minutes: float = 7.0
    """Wall-clock bound on training (the best epoch so far is kept)."""
    examples: int = 4
    """Test clips to classify at the end, for show."""
    seed: int = 0
    """Seed of the data and the training run."""


def run_demo(config: DemoConfig, log=print) -> dict:
    """Run the loop; return timings and the test metrics."""
    start = time.perf_counter()
    data, model = config.output / "data", config.output / "model"
    if (data / "metadata.csv").exists():
        log(f"reusing synthetic data in {data}")
    else:
        stats = synthesize(
            SynthConfig(
                out=data,
                train_per_intent=config.train_per_intent,
                test_per_intent=config.test_per_intent,
                seed=config.seed,
            )
        )
        log(f"synthesized {stats['clips']} clips ({stats['clips_per_second']:.0f} clips/s)")
    synth_seconds = time.perf_counter() - start
    log(f"training the tiny preset (at most {config.time_budget_minutes:g} min of training)")
    train(
        TrainConfig(
            source=str(data),
            model="tiny",
            output=str(model),
            seed=config.seed,
            epochs=config.epochs,
            time_budget_minutes=config.time_budget_minutes,
        )
    )
    train_seconds = time.perf_counter() - start - synth_seconds
    log("evaluating on the test split (voices never heard in training)")
    report = evaluate(
        EvalConfig(source=str(data), model=str(model), out=str(config.output / "eval"))
    )
    examples = sorted((data / "test").glob("*/*_0000.wav"))[:: max(1, 14 // config.examples)]
    predictions = Classifier.load(model).predict_batch(examples, top_k=3)
    return {
        "data": data,
        "model": model,
        "report": report,
        "predictions": predictions,
        "synth_seconds": synth_seconds,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - start,
    }
