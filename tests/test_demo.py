import json
import os
import re
import subprocess
import sys

import pytest

from voxclass.demo import DemoConfig, run_demo


@pytest.mark.slow
def test_demo_runs_the_whole_loop_and_reuses_its_data(tmp_path):
    config = DemoConfig(
        output=tmp_path / "demo",
        train_per_intent=2,
        validation_per_intent=1,
        test_per_intent=1,
        new_wording_per_intent=1,
        epochs=1,
        examples=2,
    )
    logged: list[str] = []
    result = run_demo(config, log=logged.append)
    assert any(line.startswith("synthesized 70 clips") for line in logged)
    assert (tmp_path / "demo/model/config.json").is_file()
    report = json.loads((tmp_path / "demo/eval/report.json").read_text())
    assert report["clips"] == 14  # the unseen-voice test split, one clip per intent
    assert result["report"]["accuracy"] == report["accuracy"]
    new_wording = json.loads((tmp_path / "demo/eval_new_wording/report.json").read_text())
    assert new_wording["clips"] == 14  # held-out phrasings, one clip per intent
    assert result["new_wording_report"]["accuracy"] == new_wording["accuracy"]
    metrics = json.loads((tmp_path / "demo/model/metrics.json").read_text())
    assert metrics["selected_on"] == "validation"
    # word detectors on the shipped pretrained encoder are what the demo trains
    settings = (tmp_path / "demo/model/voxclass_config.yaml").read_text()
    assert "model: speech-tiny" in settings and "head: keywords" in settings
    assert (tmp_path / "demo/model/keyword_head.py").is_file()
    assert metrics["train"]["train_clips"] == 28  # test_new_wording is not trained on
    assert len(result["predictions"]) == 2
    assert all(p.labels[0] in report["labels"] for p in result["predictions"])

    logged.clear()
    run_demo(config, log=logged.append)  # same data set: not synthesized again
    assert any(line.startswith("reusing synthetic data") for line in logged)
    logged.clear()
    run_demo(DemoConfig(**{**vars(config), "test_per_intent": 2}), log=logged.append)
    assert any(line.startswith("synthesized 84 clips") for line in logged)  # another data set


@pytest.mark.slow
def test_demo_command_takes_demo_config_defaults_and_prints_the_report(tmp_path):
    out = tmp_path / "demo"
    options = {
        "train-per-intent": 2,
        "validation-per-intent": 1,
        "test-per-intent": 1,
        "new-wording-per-intent": 1,
    }
    args = [f"--{k}={v}" for k, v in {**options, "epochs": 1, "examples": 2}.items()]
    run = subprocess.run(
        [sys.executable, "-m", "voxclass", "demo", "--output", str(out), *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "COLUMNS": "500"},  # rich wraps lines at 80 columns without a tty
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # the training cap the CLI used is DemoConfig's default (one source of truth)
    assert f"at most {DemoConfig.time_budget_minutes:g} min of training" in run.stderr
    report = json.loads((out / "eval" / "report.json").read_text())
    printed = re.search(r"accuracy ([\d.]+), macro-F1 ([\d.]+) on (\d+) clips", run.stdout)
    assert printed, run.stdout
    assert printed.groups() == (
        f"{report['accuracy']:.3f}",
        f"{report['macro_f1']:.3f}",
        str(report["clips"]),
    )
    assert report["clips"] == 14 and f"report: {out / 'eval' / 'report.md'}" in run.stdout
