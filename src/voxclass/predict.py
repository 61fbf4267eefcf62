"""`voxclass predict`: files, folders and manifests in; a table, JSON or CSV out.

A bad file becomes an error row with its reason while the rest still runs. Scoring is
`Classifier.predict_batch`; this module only gathers inputs and formats results.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

from .audio import AudioError, is_audio_path
from .classifier import Classifier, Prediction
from .data import MANIFEST_SUFFIXES, DataError


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files as given, folders recursively (audio extensions only), manifests by `path` column
    (relative to the manifest's folder). A missing input is a DataError."""
    return list(iter_inputs(inputs))


def iter_inputs(inputs: list[str]) -> Iterator[str]:
    """`expand_inputs` as a stream, in the same order: folders are walked and manifests read
    as the paths are consumed, so a 10-million-line manifest is never held whole. The inputs
    themselves are checked before the first path is produced (a missing one is a DataError)."""
    kinds = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            kinds.append((_walk, path))
        elif path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
            kinds.append((_manifest_paths, path))
        elif path.exists() or is_audio_path(path):
            kinds.append((_single, path))  # a missing audio file becomes an error row
        else:
            raise DataError(f"{item}: no such file or folder")
    return (p for read, path in kinds for p in read(path))


def _single(path: Path) -> Iterator[str]:
    yield str(path)


def _walk(folder: Path) -> Iterator[str]:
    """Audio files under `folder`, in `sorted(folder.rglob("*"))` order, one folder at a time."""
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir():
            yield from _walk(Path(entry.path))
        elif entry.is_file() and is_audio_path(Path(entry.name)):
            yield entry.path


def _manifest_paths(path: Path) -> Iterator[str]:
    with open(path, newline="") as f:
        if path.suffix.lower() == ".csv":
            records = csv.DictReader(f)
        else:
            records = (json.loads(line) for line in f if line.strip())
        first = next(records, None)
        if first is None or "path" not in first:
            raise DataError(f"{path}: a manifest needs a 'path' column")
        yield str(path.parent / first["path"])
        for record in records:
            yield str(path.parent / record["path"])


def run(
    clf: Classifier,
    paths: list[str],
    top_k: int = 5,
    batch_size: int = 16,
    window: float | None = None,
    hop: float | None = None,
) -> list[Prediction | AudioError]:
    """One result per path, in order: a Prediction, or the AudioError that stopped it."""
    results: list[Prediction | AudioError] = []
    waves, where = [], []
    for path in paths:
        try:
            waves.append(clf.load_wave(path))
            where.append(len(results))
            results.append(None)  # type: ignore[arg-type]  # filled below
        except AudioError as err:
            results.append(err)
    predictions = clf.predict_batch(
        waves,
        sampling_rate=clf.sampling_rate,
        top_k=top_k,
        batch_size=batch_size,
        window=window,
        hop=hop,
    )
    for index, prediction in zip(where, predictions, strict=True):
        prediction.source = paths[index]
        results[index] = prediction
    return results


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
