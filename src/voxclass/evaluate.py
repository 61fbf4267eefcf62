"""`voxclass evaluate`: where does the model fail? Metrics, per-class report, confusion picture,
and the list of every misclassified clip. Scoring goes through `Classifier`, like predict."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from .audio import AudioError
from .classifier import Classifier
from .config import write_atomic
from .data import DataConfig, DataError, load_data


@dataclass
class EvalConfig(DataConfig):
    """What `voxclass evaluate` scores; the data fields come from DataConfig."""

    model: str = "model"
    """Trained model directory (or exported ONNX directory)."""
    split: str = "test"
    """Split of the data to score."""
    out: str = "eval"
    """Folder for report.json, report.md, errors.csv and confusion.png."""
    batch_size: int = 16
    """Clips per forward pass."""


def score_split(clf: Classifier, ds, batch_size: int, progress: Callable | None = None):
    """Top-1 predictions of every clip (long clips in windows); all bad files named at once."""
    waves, bad = [], []
    for example in ds:
        try:
            waves.append(clf.load_wave(example["audio"]))
        except AudioError as err:
            bad.append(str(err))
        if progress:
            progress()
    if bad:
        raise DataError(f"{len(bad)} bad audio file(s):\n  " + "\n  ".join(bad))
    return clf.predict_batch(waves, sampling_rate=clf.sampling_rate, top_k=1, batch_size=batch_size)


def compute_report(truth: list[str], predicted: list[str], labels: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(
            f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)
        ),
        "clips": len(truth),
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
        },
        "labels": labels,
        "confusion": confusion_matrix(truth, predicted, labels=labels).tolist(),
    }


def confusion_png(matrix: np.ndarray, labels: list[str]) -> bytes:
    """Confusion matrix normalised per true class, counts in the cells, readable at 14+ classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(6.0, 0.55 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1.5, size), dpi=110)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title("Confusion matrix (row-normalised; numbers are clip counts)")
    for i in range(len(labels)):
        for j in range(len(labels)):
            if counts[i, j]:
                ax.text(
                    j,
                    i,
                    str(counts[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black",
                )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def report_markdown(report: dict, model: str, source: str) -> str:
    rows = "\n".join(
        f"| {label} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
        for label, m in report["per_class"].items()
    )
    return f"""# Evaluation of `{model}` on `{source}`

- accuracy: **{report["accuracy"]:.4f}**
- macro-F1: **{report["macro_f1"]:.4f}**
- clips: {report["clips"]} ({report["errors"]} misclassified, see `errors.csv`)

| label | precision | recall | F1 | support |
|---|---|---|---|---|
{rows}

![confusion matrix](confusion.png)
"""


def evaluate(config: EvalConfig, progress: Callable | None = None) -> dict:
    """Score a split and write report.json, report.md, errors.csv and confusion.png."""
    clf = Classifier.load(config.model)
    dd = load_data(config, label_names=clf.labels)
    if config.split not in dd:
        raise DataError(f"no split '{config.split}' in {config.source} (splits: {', '.join(dd)})")
    ds = dd[config.split]
    names = ds.features["label"].names
    truth = [names[i] for i in ds["label"]]
    predictions = score_split(clf, ds, config.batch_size, progress)
    predicted = [p.labels[0] for p in predictions]
    report = compute_report(truth, predicted, clf.labels)
    paths = [a["path"] for a in ds["audio"]]
    errors = [
        (path, t, p.labels[0], p.scores[0])
        for path, t, p in zip(paths, truth, predictions, strict=True)
        if t != p.labels[0]
    ]
    report["errors"] = len(errors)

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["path", "true_label", "predicted_label", "score"])
    writer.writerows((path, t, p, f"{s:.6f}") for path, t, p, s in errors)
    write_atomic(out / "errors.csv", table.getvalue().encode())
    write_atomic(out / "confusion.png", confusion_png(np.array(report["confusion"]), clf.labels))
    write_atomic(out / "report.md", report_markdown(report, config.model, config.source).encode())
    write_atomic(out / "report.json", json.dumps(report, indent=2).encode())
    return report
