"""`voxclass evaluate`: where does the model fail? Metrics, per-class report, confusion picture,
the list of every misclassified clip and, with `--snr`, how accuracy falls as noise rises.
Scoring goes through `Classifier`, like predict; noise is mixed by `noise.py`; the figures
are computed by `metrics.py`, with the same rules as training's."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .audio import load_many
from .classifier import Classifier, Prediction
from .config import ConfigError, write_atomic
from .data import DataConfig, DataError, label_names, load_data
from .metrics import THRESHOLD, labels_above_threshold, score
from .noise import Noise, mix_at_snr, power


def parse_snr(text: str) -> list[float]:
    """`"30,20,10,0,-5"` -> [30.0, 20.0, 10.0, 0.0, -5.0]; ConfigError naming a bad item."""
    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            value = float("nan")
        if not np.isfinite(value):
            raise ConfigError(
                f"--snr {text!r}: {item.strip()!r} is not a number of dB; "
                "give a comma list like 30,20,10,0,-5"
            )
        values.append(value)
    return values


@dataclass
class EvalConfig(DataConfig):
    """What `voxclass evaluate` scores; the data fields come from DataConfig."""

    model: str = "model"
    """Trained model directory (or exported ONNX directory)."""
    split: str = "test"
    """Split of the data to score."""
    out: str = "eval"
    """Folder for report.json, report.md, errors.csv, confusion.png (and snr.png with `snr`)."""
    batch_size: int = 16
    """Clips per forward pass."""
    snr: list[float] | None = field(default=None, metadata={"parse": parse_snr})
    """SNRs (dB) at which each noise is mixed into every clip (power-based over the clip, see
    `noise.mix_at_snr`) and the clips scored again; None: clean evaluation only. The noise is
    drawn from `seed`, so the same seed gives the same noisy clips."""
    noise: list[str] = field(default_factory=lambda: ["white"])
    """Noises for `snr`, one line each on snr.png: white, pink, babble (other clips of the same
    split), or a noise recording / folder of recordings."""


def load_clips(clf: Classifier, ds, progress: Callable | None = None) -> list[np.ndarray]:
    """Every clip of the split decoded once at the model's rate; all bad files named at once."""
    waves, errors = load_many(ds["audio"], clf.sampling_rate, progress=progress)
    if errors:
        bad = [str(err) for err in errors.values()]
        raise DataError(f"{len(bad)} bad audio file(s):\n  " + "\n  ".join(bad))
    return list(waves.values())


def predict_labels(
    clf: Classifier, waves: list[np.ndarray], batch_size: int
) -> tuple[list, list[Prediction]]:
    """What the model predicts for every decoded clip (long clips in windows), and the
    predictions behind it: the top-1 label, or for a multi-label model the sorted list of labels
    scoring above THRESHOLD (with the scores of every label)."""
    top_k = len(clf.labels) if clf.multi_label else 1
    names = [f"<clip {i}>" for i in range(len(waves))]
    predictions = clf.predict_waves(waves, names, top_k=top_k, batch_size=batch_size)
    if not clf.multi_label:
        return [p.labels[0] for p in predictions], predictions
    return [labels_above_threshold(p.labels, p.scores) for p in predictions], predictions


def noise_curves(
    clf: Classifier,
    waves: list[np.ndarray],
    truth: list,
    noises: list[Noise],
    config: EvalConfig,
) -> dict[str, list[dict]]:
    """Accuracy and macro-F1 with each noise mixed into every clip at each of `config.snr`."""
    curves = {}
    for noise in noises:
        drawn = noise.for_clips(waves, config.seed)
        curves[noise.name] = []
        for snr in config.snr or []:
            mixed = [mix_at_snr(w, n, snr) for w, n in zip(waves, drawn, strict=True)]
            predicted, _ = predict_labels(clf, mixed, config.batch_size)
            metrics = score(truth, predicted, clf.labels)
            curves[noise.name].append(
                {"snr_db": snr, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
            )
    return curves


def _pyplot():
    """matplotlib's pyplot on the Agg backend: files only, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    _pyplot().close(fig)
    return buffer.getvalue()


def confusion_png(matrix: np.ndarray, labels: list[str]) -> bytes:
    """Confusion matrix normalised per true class, counts in the cells, readable at 14+ classes."""
    plt = _pyplot()
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
    return _png(fig)


def snr_png(noise: dict) -> bytes:
    """Accuracy against SNR, one line per noise type, SNR falling from left to right (from the
    clean end), and the clean accuracy as a dashed line for reference."""
    fig, ax = _pyplot().subplots(figsize=(7, 4.5), dpi=110)
    ax.axhline(noise["clean"]["accuracy"], color="gray", linestyle="--", label="clean")
    for name, points in noise["curves"].items():
        ax.plot([p["snr_db"] for p in points], [p["accuracy"] for p in points], "o-", label=name)
    ax.invert_xaxis()
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("SNR (dB)")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy under noise")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _png(fig)


def noise_markdown(noise: dict) -> str:
    """Accuracy / macro-F1 per SNR (rows) and noise type (columns), clean first."""
    names = list(noise["curves"])
    snrs = [point["snr_db"] for point in noise["curves"][names[0]]]

    def row(title: str, cells: list[dict]) -> str:
        return (
            f"| {title} | "
            + " | ".join(f"{c['accuracy']:.3f} / {c['macro_f1']:.3f}" for c in cells)
            + " |"
        )

    rows = [row("clean", [noise["clean"]] * len(names))] + [
        row(f"{snr:g} dB", [noise["curves"][n][i] for n in names]) for i, snr in enumerate(snrs)
    ]
    silent = noise["silent_clips"]
    note = f"{silent} silent clip(s) were scored without noise (no level to set it against).\n"
    return f"""
## Under noise (accuracy / macro-F1)

| SNR | {" | ".join(names)} |
|---|{"---|" * len(names)}
{chr(10).join(rows)}

{note if silent else ""}![accuracy vs SNR](snr.png)
"""


def absent_note(report: dict) -> str:
    """One line naming the model's labels the data does not hold (left out of macro-F1)."""
    absent = report.get("absent_labels") or []
    if not absent:
        return ""
    return (
        f"- {len(absent)} of the model's {len(report['labels'])} labels do not occur in the "
        f"data and are left out of macro-F1 and the table: {', '.join(absent)}"
    )


def report_markdown(report: dict, model: str, source: str) -> str:
    multi = "multi_label" in report
    rows = "\n".join(
        f"| {label} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
        for label, m in report["per_class"].items()
    )
    return f"""# Evaluation of `{model}` on `{source}`

- {"exact-match accuracy" if multi else "accuracy"}: **{report["accuracy"]:.4f}**
- macro-F1: **{report["macro_f1"]:.4f}**
- clips: {report["clips"]} ({report["errors"]} misclassified, see `errors.csv`)
{f"- multi-label: a label is predicted when its score is above {THRESHOLD}" if multi else ""}
{absent_note(report)}

| label | precision | recall | F1 | support |
|---|---|---|---|---|
{rows}

{"" if multi else "![confusion matrix](confusion.png)"}
""" + (noise_markdown(report["noise"]) if "noise" in report else "")


def _scores_cell(prediction: Prediction, separator: str) -> str:
    """Every label's score, best first (`dog=0.910000;siren=0.400000`): near misses show."""
    pairs = zip(prediction.labels, prediction.scores, strict=True)
    return separator.join(f"{label}={value:.6f}" for label, value in pairs)


def evaluate(config: EvalConfig, progress: Callable | None = None) -> dict:
    """Score a split and write report.json, report.md, errors.csv and confusion.png; with
    `config.snr`, also score it under each noise at each SNR (report.json `noise`, snr.png).

    A multi-label model reads the data as label sets whatever `config.multi_label` says, and
    gets no confusion.png (see the module docstring)."""
    if config.snr and not config.noise:
        raise ConfigError("--noise is empty: give white, pink, babble, or a noise file or folder")
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder; give a folder for the report")
    clf = Classifier.load(config.model)
    clf.check_settings(1, config.batch_size, None, None)
    noises = []
    if config.snr:  # noise recordings load before the data is decoded: a bad one fails fast
        noises = [Noise.load(name, clf.sampling_rate) for name in dict.fromkeys(config.noise)]
    # The model decides how the data's labels are read: as label sets for a multi-label model.
    dd = load_data(replace(config, multi_label=clf.multi_label), label_names=clf.labels)
    if config.split not in dd:
        raise DataError(f"no split '{config.split}' in {config.source} (splits: {', '.join(dd)})")
    ds = dd[config.split]
    names = label_names(ds)
    if clf.multi_label:
        truth = [sorted(names[i] for i in ids) for ids in ds["label"]]
    else:
        truth = [names[i] for i in ds["label"]]
    waves = load_clips(clf, ds, progress)
    predicted, predictions = predict_labels(clf, waves, config.batch_size)
    report = score(truth, predicted, clf.labels)
    paths = [a["path"] for a in ds["audio"]]
    if clf.multi_label:
        header = ["path", "true_labels", "predicted_labels", "scores"]
        sep = config.label_separator
        errors = [
            (path, sep.join(t), sep.join(y), _scores_cell(p, sep))
            for path, t, y, p in zip(paths, truth, predicted, predictions, strict=True)
            if t != y
        ]
    else:
        header = ["path", "true_label", "predicted_label", "score"]
        errors = [
            (path, t, p.labels[0], f"{p.scores[0]:.6f}")
            for path, t, p in zip(paths, truth, predictions, strict=True)
            if t != p.labels[0]
        ]
    report["errors"] = len(errors)
    if config.snr:
        report["noise"] = {
            "clean": {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]},
            "seed": config.seed,
            "silent_clips": sum(power(w) == 0 for w in waves),
            "curves": noise_curves(clf, waves, truth, noises, config),
        }

    out.mkdir(parents=True, exist_ok=True)
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(header)
    writer.writerows(errors)
    write_atomic(out / "errors.csv", table.getvalue().encode())
    if "confusion" in report:
        write_atomic(
            out / "confusion.png", confusion_png(np.array(report["confusion"]), clf.labels)
        )
    if "noise" in report:
        write_atomic(out / "snr.png", snr_png(report["noise"]))
    write_atomic(out / "report.md", report_markdown(report, config.model, config.source).encode())
    write_atomic(out / "report.json", json.dumps(report, indent=2).encode())
    return report
