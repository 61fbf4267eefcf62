import numpy as np

from voxclass.metrics import compute_multi_label_report, compute_report, trainer_metrics


def test_report_numbers_match_a_known_answer():
    truth = ["a", "a", "b", "b", "c", "c"]
    predicted = ["a", "b", "b", "b", "c", "a"]
    report = compute_report(truth, predicted, ["a", "b", "c"])
    assert report["accuracy"] == 4 / 6
    # a: P 1/2 R 1/2; b: P 2/3 R 1; c: P 1 R 1/2
    f1 = [0.5, 0.8, 2 / 3]
    assert np.isclose(report["macro_f1"], np.mean(f1))
    assert report["per_class"]["b"] == {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    assert report["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_multi_label_report_numbers_match_a_known_answer():
    truth = [["a", "b"], ["a"], ["b", "c"], ["c"]]
    predicted = [["a", "b"], ["a", "c"], ["b"], ["c"]]
    report = compute_multi_label_report(truth, predicted, ["a", "b", "c"])
    assert report["accuracy"] == 2 / 4  # exact match of the whole set
    # a: P 1 R 1; b: P 1 R 1; c: P 1/2 R 1/2
    assert np.isclose(report["macro_f1"], np.mean([1.0, 1.0, 0.5]))
    assert report["per_class"]["c"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert "confusion" not in report and report["multi_label"] == {"threshold": 0.5}


def test_training_metrics_are_the_reports_figures():
    """The figure that picks the best epoch is the one `voxclass evaluate` reports: same macro
    average (over the labels present), same multi-label threshold."""
    labels = ["a", "b", "c", "d"]  # "d" never occurs: it must not pull macro-F1 down
    truth = np.array([0, 0, 1, 1, 2, 2])
    logits = np.array(
        [[3, 0, 0, 0], [0, 3, 0, 0], [0, 3, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0], [0, 0, 0, 3.0]]
    )
    report = compute_report(
        [labels[i] for i in truth], [labels[i] for i in logits.argmax(1)], labels
    )
    figures = trainer_metrics((logits, truth))
    assert figures == {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}

    multi_truth = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0]])
    multi_logits = np.where(
        np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0]]), 2.0, -2.0
    )
    sets = [[labels[i] for i in np.flatnonzero(row)] for row in multi_truth]
    chosen = [[labels[i] for i in np.flatnonzero(row > 0)] for row in multi_logits]
    report = compute_multi_label_report(sets, chosen, labels)
    figures = trainer_metrics((multi_logits, multi_truth))
    assert figures == {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}
