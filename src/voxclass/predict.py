"""`voxclass predict`: files, folders and manifests in; a table, JSON or CSV out.

A bad file becomes an error row with its reason while the rest still runs. Decoding is
`audio.load_many`, scoring `Classifier.predict_waves`; this module only gathers inputs and
formats results.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .audio import AudioError, AudioLimits, load_many
from .classifier import Classifier, Prediction
from .data import iter_inputs

ENGINES = ("plain", "shards", "ray")


@dataclass
class PredictConfig:
    """What `voxclass predict` classifies, and how."""

    model: str
    """Trained (or exported) model directory."""
    inputs: list[str]
    """Audio files, folders, or CSV/JSONL manifests."""
    top_k: int = 5
    """Labels per clip (above the label count: every label)."""
    batch_size: int = 16
    """Clips per forward pass."""
    format: str = "table"
    """table, json or csv."""
    out: Path | None = None
    """Write the results to this file instead of the terminal (with --engine shards or ray: a
    folder of Parquet shards)."""
    window: float | None = None
    """Window seconds for long audio (default: the model's max duration)."""
    hop: float | None = None
    """Hop seconds between windows (default: window / 2)."""
    allow_outside_paths: bool = False
    """Let a manifest name audio outside its own folder (`../x.wav`, absolute paths)."""
    engine: str | None = None
    """plain (one file or the terminal); shards or ray (resumable Parquet shards in --out DIR).
    Default: shards under torchrun, else plain."""
    address: str | None = None
    """Ray cluster: auto or ray://HOST:PORT (default: a local one)."""
    workers: int = 1
    """Ray actors, each with its own copy of the model."""
    chunk_size: int = 500
    """Inputs per shard: the unit of resuming."""


def default_engine() -> str:
    """`shards` under torchrun (WORLD_SIZE > 1: each rank writes its part), else `plain`."""
    return "shards" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "plain"


def expand_inputs(inputs: list[str], allow_outside_paths: bool = False) -> list[str]:
    """Every path of `iter_inputs`, at once."""
    return list(iter_inputs(inputs, allow_outside_paths))


def run(
    clf: Classifier,
    paths: list[str],
    top_k: int = 5,
    batch_size: int = 16,
    window: float | None = None,
    hop: float | None = None,
    limits: AudioLimits = AudioLimits(),
) -> list[Prediction | AudioError]:
    """One result per path, in order: a Prediction, or the AudioError that stopped it. Each
    file is decoded once (`load_many`); the settings are checked before any is."""
    clf.check_settings(top_k, batch_size, window, hop)
    waves, errors = load_many(paths, clf.sampling_rate, limits)
    predictions = clf.predict_waves(
        list(waves.values()), [paths[i] for i in waves], top_k, batch_size, window, hop
    )
    results: dict[int, Prediction | AudioError] = {
        **errors,
        **dict(zip(waves, predictions, strict=True)),
    }
    return [results[i] for i in range(len(paths))]


def to_records(results: list[Prediction | AudioError]) -> list[dict]:
    return [
        {"source": r.name, "error": r.reason} if isinstance(r, AudioError) else r.to_dict()
        for r in results
    ]


def to_csv(results: list[Prediction | AudioError]) -> str:
    """One row per clip (and per window of a long clip): source, start, end, rank, label, score,
    error."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["source", "start", "end", "rank", "label", "score", "error"])
    for r in results:
        if isinstance(r, AudioError):
            writer.writerow([r.name, "", "", "", "", "", r.reason])
            continue
        spans = [(0.0, r.duration, r.labels, r.scores)]
        spans += [(w.start, w.end, w.labels, w.scores) for w in r.windows or []]
        for start, end, labels, scores in spans:
            for rank, (label, score) in enumerate(zip(labels, scores, strict=True), start=1):
                writer.writerow(
                    [r.source, f"{start:.2f}", f"{end:.2f}", rank, label, f"{score:.6f}", ""]
                )
    return buffer.getvalue()


def to_table(results: list[Prediction | AudioError]) -> str:
    """Plain-text table: one line per clip, one indented line per window of a long clip."""
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None)
    for column in ("source", "seconds", "top labels (score)"):
        table.add_column(column)
    for r in results:
        if isinstance(r, AudioError):
            table.add_row(r.name, "-", f"error: {r.reason}")
            continue
        top = ", ".join(f"{x} ({s:.2f})" for x, s in zip(r.labels, r.scores, strict=True))
        table.add_row(r.source, f"{r.duration:.1f}", top)
        for w in r.windows or []:
            table.add_row(
                f"  {w.start:.1f}-{w.end:.1f} s", "", f"{w.labels[0]} ({w.scores[0]:.2f})"
            )
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(table)
    return console.file.getvalue()


def render(results: list[Prediction | AudioError], output_format: str) -> str:
    """Results as `table`, `json` or `csv` text."""
    if output_format == "json":
        return json.dumps(to_records(results), indent=2)
    if output_format == "csv":
        return to_csv(results)
    return to_table(results)
