"""`voxclass demo`: the whole loop offline in minutes — synth, train, evaluate, predict.

Writes the data to OUTPUT/data and the model to OUTPUT/model. The test split is spoken by
voices never used in training, so its accuracy is an unseen-speaker figure; `test_new_wording`
is said by those voices in phrasings never used in training, an unseen-wording figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .classifier import Classifier
from .evaluate import EvalConfig, evaluate
from .synth import NEW_WORDING_SPLIT, SynthConfig, synthesize
from .train import TrainConfig, train


@dataclass
class DemoConfig:
    """What `voxclass demo` runs."""

    output: Path = Path("demo")
    """Folder for data/ and model/."""
    train_per_intent: int = 360
    """Synthetic training clips per intent. Each is a new voice/prosody/slot draw: for the
    same training time, more distinct clips beat augmented copies of fewer."""
    validation_per_intent: int = 10
    """Synthetic validation clips per intent (training voices; pick the best epoch)."""
    test_per_intent: int = 30
    """Synthetic test clips per intent (unseen voices)."""
    new_wording_per_intent: int = 30
    """Synthetic clips per intent in test_new_wording (held-out phrasings, unseen voices)."""
    epochs: float = 22
    """Training epochs over the clean clips (an encoder that trains adds fresh SpecAugment
    masks every step; the frozen one under the keywords head adds none)."""
    time_budget_minutes: float = 8.0
    """Wall-clock bound on training (the best epoch so far is kept)."""
    model: str = "speech-tiny"
    """What to fine-tune: the shipped encoder pretrained by `voxclass pretrain` (it carries far
    better to unseen wording than `tiny` from scratch), or any preset, folder or Hub id."""
    head: str = "keywords"
    """Classification head (`voxclass train --head`): keywords, word-sized detectors on the
    frozen encoder (they carry the intents to unseen wording far better than the encoder's
    fine-tuned mean), or mean."""
    examples: int = 4
    """Test clips to classify at the end, for show."""
    seed: int = 0
    """Seed of the data and the training run."""

    def __post_init__(self):
        self.output = Path(self.output)  # a string from the command line or YAML


def demo_data(config: DemoConfig) -> SynthConfig:
    """The demo's synthetic data set."""
    return SynthConfig(
        out=config.output / "data",
        train_per_label=config.train_per_intent,
        validation_per_label=config.validation_per_intent,
        test_per_label=config.test_per_intent,
        new_wording_per_label=config.new_wording_per_intent,
        seed=config.seed,
    )


def demo_training(config: DemoConfig, data: Path, output: Path) -> TrainConfig:
    """The demo's training run (also the voxclass side of benchmarks/recipe_vs_seed.py)."""
    return TrainConfig(
        source=str(data),
        model=config.model,
        head=config.head,
        output=str(output),
        seed=config.seed,
        epochs=config.epochs,
        augment_copies=1,
        time_budget_minutes=config.time_budget_minutes,
        overwrite=True,  # OUTPUT/model is the demo's own: a rerun replaces it
    )


def _clip_count(metadata: Path) -> int:
    with open(metadata) as f:
        return sum(1 for _ in f) - 1  # minus the header


def run_demo(config: DemoConfig, log=print) -> dict:
    """Run the loop; return timings and the test metrics."""
    start = time.perf_counter()
    synth_config = demo_data(config)
    data, model = synth_config.out, config.output / "model"
    metadata = data / "metadata.csv"
    if metadata.exists() and _clip_count(metadata) == synth_config.clips:
        log(f"reusing synthetic data in {data}")
    else:
        stats = synthesize(synth_config)
        log(f"synthesized {stats['clips']} clips ({stats['clips_per_second']:.0f} clips/s)")
    synth_seconds = time.perf_counter() - start
    log(f"training {config.model} (at most {config.time_budget_minutes:g} min of training)")
    train(demo_training(config, data, model))
    train_seconds = time.perf_counter() - start - synth_seconds
    log("evaluating on the test split (voices never heard in training)")
    report = evaluate(
        EvalConfig(source=str(data), model=str(model), out=str(config.output / "eval"))
    )
    log(f"evaluating on {NEW_WORDING_SPLIT} (phrasings never used in training, unseen voices)")
    new_wording_report = evaluate(
        EvalConfig(
            source=str(data),
            model=str(model),
            split=NEW_WORDING_SPLIT,
            out=str(config.output / "eval_new_wording"),
        )
    )
    examples = sorted((data / "test").glob("*/*_0000.wav"))[:: max(1, 14 // config.examples)]
    predictions = Classifier.load(model).predict_batch(examples, top_k=3)
    return {
        "data": data,
        "model": model,
        "report": report,
        "new_wording_report": new_wording_report,
        "predictions": predictions,
        "synth_seconds": synth_seconds,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - start,
    }
