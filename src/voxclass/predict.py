"""`voxclass predict`: files, folders and manifests in; a table, JSON or CSV out.

A bad file becomes an error row with its reason while the rest still runs. Decoding is
`audio.load_many`, scoring `Classifier.predict_waves`; this module only gathers inputs and
formats results.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .audio import AUDIO_EXTENSIONS, AudioError, AudioLimits, is_audio_path, load_many
from .classifier import Classifier, Prediction
from .data import MANIFEST_SUFFIXES, DataError, manifest_audio_path, read_manifest


def expand_inputs(inputs: list[str], allow_outside_paths: bool = False) -> list[str]:
    """Files as given, folders recursively (audio extensions only), manifests by `path` column
    (relative to the manifest's folder, and inside it unless `allow_outside_paths`). A missing
    input, a folder without audio and a malformed manifest are DataErrors."""
    paths: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = [str(p) for p in sorted(path.rglob("*")) if p.is_file() and is_audio_path(p)]
            if not found:
                raise DataError(
                    f"{item}: no audio files found under it (extensions accepted: "
                    f"{', '.join(sorted(AUDIO_EXTENSIONS))})"
                )
            paths += found
        elif path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
            paths += [
                str(manifest_audio_path(path, line, record, allow_outside_paths))
                for line, record in read_manifest(path)
            ]
        elif path.exists() or is_audio_path(path):
            paths.append(str(path))  # a missing audio file becomes an error row
        else:
            raise DataError(f"{item}: no such file or folder")
    return paths


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
