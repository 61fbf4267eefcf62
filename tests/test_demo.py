import json

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
    assert metrics["train"]["train_clips"] == 28  # test_new_wording is not trained on
    assert len(result["predictions"]) == 2
    assert all(p.labels[0] in report["labels"] for p in result["predictions"])

    logged.clear()
    run_demo(config, log=logged.append)  # same data set: not synthesized again
    assert any(line.startswith("reusing synthetic data") for line in logged)
    logged.clear()
    run_demo(DemoConfig(**{**vars(config), "test_per_intent": 2}), log=logged.append)
    assert any(line.startswith("synthesized 84 clips") for line in logged)  # another data set
