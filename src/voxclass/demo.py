"""`voxclass demo`: the whole loop offline in minutes — synth, train `tiny`, evaluate, predict.

Writes the data to OUTPUT/data and the model to OUTPUT/model. The test split is spoken by
voices never used in training, so its accuracy is an unseen-speaker figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

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
    time_budget_minutes: float = 6.0
    """Wall-clock bound on training (the best epoch so far is kept)."""
    seed: int = 0
    """Seed of the data and the training run."""


def run_demo(config: DemoConfig, log=print) -> dict:
    """Run the loop; return timings and the test metrics."""
    start = time.perf_counter()
    data, model = config.output / "data", config.output / "model"
    if (data / "metadata.csv").exists():
        log(f"reusing synthetic data in {data}")
    else:
        stats = synthesize(SynthConfig(out=data, train_per_intent=config.train_per_intent,
                                       test_per_intent=config.test_per_intent, seed=config.seed))
        log(f"synthesized {stats['clips']} clips ({stats['clips_per_second']:.0f} clips/s)")
    synth_seconds = time.perf_counter() - start
    train(TrainConfig(source=str(data), model="tiny", output=str(model), seed=config.seed,
                      time_budget_minutes=config.time_budget_minutes))
    return {"data": data, "model": model, "synth_seconds": synth_seconds,
            "total_seconds": time.perf_counter() - start}
