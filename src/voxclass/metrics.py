"""Metrics, and the multi-label rule, shared by training (its per-epoch evaluation) and
`voxclass evaluate`, so the figure that picks the best epoch is the one reported afterwards.

Macro averages run over the labels present in the truth: a label absent from the data has no
F1 to measure. A multi-label model predicts every label whose sigmoid exceeds `THRESHOLD`;
accuracy is then exact match of the label set, per-class figures are per label, and there is
no confusion matrix (a clip may have several true and several predicted labels)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

THRESHOLD = 0.5
"""A multi-label model predicts each label whose score (sigmoid) is above this."""


def labels_above_threshold(labels: list[str], scores: list[float]) -> list[str]:
    """The multi-label prediction: the labels scoring above THRESHOLD, sorted."""
    return sorted(x for x, s in zip(labels, scores, strict=True) if s > THRESHOLD)


def trainer_metrics(eval_pred) -> dict[str, float]:
    """Accuracy and macro-F1 from the Trainer's logits and label ids (a multi-hot matrix for a
    multi-label model), by the rules of `compute_report` / `compute_multi_label_report`."""
    logits, labels = eval_pred
    if labels.ndim == 2:
        predicted = (1 / (1 + np.exp(-logits)) > THRESHOLD).astype(int)
        present = labels.any(axis=0)
        _, _, f1, _ = precision_recall_fscore_support(
            labels[:, present], predicted[:, present], zero_division=0
        )
        return {
            "accuracy": float((predicted == labels).all(axis=1).mean()),
            "macro_f1": float(f1.mean()) if present.any() else 0.0,
        }
    predicted = logits.argmax(-1)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(
            f1_score(labels, predicted, labels=np.unique(labels), average="macro", zero_division=0)
        ),
    }


def score(truth: list, predicted: list, labels: list[str]) -> dict:
    """The report of `compute_report`, or of `compute_multi_label_report` for label lists."""
    if truth and isinstance(truth[0], list):
        return compute_multi_label_report(truth, predicted, labels)
    return compute_report(truth, predicted, labels)


def present_labels(truth: list, labels: list[str]) -> list[str]:
    """The model's labels that occur in `truth` (labels or label lists), in model order:
    macro averages run over these, since a label absent from the data has no F1 to measure."""
    seen = {x for t in truth for x in (t if isinstance(t, list) else [t])}
    return [label for label in labels if label in seen]


def _per_class(labels: list[str], precision, recall, f1, support) -> dict:
    return {
        label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
    }


def compute_report(truth: list[str], predicted: list[str], labels: list[str]) -> dict:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support over the labels present in
    `truth` (`absent_labels` lists the model's others), and the confusion matrix over all of
    the model's labels (a clip may be predicted as an absent one)."""
    present = present_labels(truth, labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=present, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(
            f1_score(truth, predicted, labels=present, average="macro", zero_division=0)
        ),
        "clips": len(truth),
        "per_class": _per_class(present, precision, recall, f1, support),
        "absent_labels": [label for label in labels if label not in present],
        "labels": labels,
        "confusion": confusion_matrix(truth, predicted, labels=labels).tolist(),
    }


def compute_multi_label_report(
    truth: list[list[str]], predicted: list[list[str]], labels: list[str]
) -> dict:
    """Exact-match accuracy (the whole label set right), and macro-F1 and per-label
    precision/recall/F1/support (support: clips that truly have the label) over the labels
    present in `truth` (`absent_labels` lists the model's others)."""
    index = {label: i for i, label in enumerate(labels)}
    present = present_labels(truth, labels)
    columns = [index[x] for x in present]

    def multi_hot(sets: list[list[str]]) -> np.ndarray:
        hot = np.zeros((len(sets), len(labels)), int)
        for row, names in enumerate(sets):
            hot[row, [index[x] for x in names]] = 1
        return hot

    true, pred = multi_hot(truth), multi_hot(predicted)
    precision, recall, f1, support = precision_recall_fscore_support(
        true[:, columns], pred[:, columns], zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(true, pred)),
        "macro_f1": float(f1.mean()) if columns else 0.0,
        "clips": len(truth),
        "per_class": _per_class(present, precision, recall, f1, support),
        "absent_labels": [label for label in labels if label not in present],
        "labels": labels,
        "multi_label": {"threshold": THRESHOLD},
    }
