"""worker.py: the model in a child process scores like the model here, a bad wave fails alone,
a dead child fails only its batch and is replaced, and a model it cannot load is one line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import TONES, burst

from voxclass import Classifier
from voxclass.config import ConfigError
from voxclass.serve import create_app
from voxclass.worker import ModelProcess, ModelProcessError, score_pieces


@pytest.fixture(scope="module")
def clf(trained_tone_model) -> Classifier:
    return Classifier.load(trained_tone_model)


@pytest.fixture(scope="module")
def worker(trained_tone_model):
    process = ModelProcess(trained_tone_model)
    yield process
    process.close()


RATE = 8000  # the tone model's rate (tiny preset)


def waves() -> list[np.ndarray]:
    return [burst(freq, 1.0, RATE, seed=i) for i, freq in enumerate(TONES.values())]


def test_the_child_scores_like_the_classifier_here(worker, clf):
    assert clf.sampling_rate == RATE
    rows = worker.score(waves())
    expected = clf.probabilities(waves(), batch_size=len(waves()))
    assert worker.process is not None and worker.process.pid is not None
    np.testing.assert_allclose(np.stack(rows), expected, atol=1e-5)
    assert [int(np.argmax(row)) for row in rows] == [clf.labels.index(t) for t in TONES]


def test_a_wave_that_fails_fails_alone(worker, clf):
    broken = np.zeros((RATE, 2), np.float32)  # two channels: waves reach the model as mono
    rows = worker.score([waves()[0], broken])
    assert isinstance(rows[0], np.ndarray) and isinstance(rows[1], RuntimeError)
    assert str(rows[1]).split(":")[0].endswith("Error")  # the child's error type, then why
    here = score_pieces(clf, [waves()[0], broken])
    assert isinstance(here[1], Exception)
    np.testing.assert_allclose(rows[0], here[0], atol=1e-5)


def test_a_dead_child_fails_its_batch_and_a_new_one_scores_the_next(trained_tone_model):
    process = ModelProcess(trained_tone_model)
    try:
        first = process.process
        assert first is not None
        first.kill()
        first.join(10)
        lost = process.score(waves())
        assert all(isinstance(row, ModelProcessError) for row in lost)
        assert "died" in str(lost[0]) and process.process is None
        again = process.score(waves())
        assert all(isinstance(row, np.ndarray) for row in again)
        assert process.process is not None and process.process.pid != first.pid
    finally:
        process.close()
    assert process.process is None and not first.is_alive()


def test_a_model_the_child_cannot_load_is_one_line(tmp_path):
    missing = tmp_path / "no-model"
    with pytest.raises(ModelProcessError) as err:
        ModelProcess(missing)
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    assert "Traceback" not in str(err.value)


def test_the_servers_classifier_has_the_settings_and_no_weights(worker, clf):
    """The server's Classifier reads the model's settings from the child and runs its
    forwards there: same labels, rate and answers, and no torch model in this process."""
    remote = worker.classifier
    assert (remote.labels, remote.sampling_rate, remote.max_seconds, remote.backend) == (
        clf.labels,
        clf.sampling_rate,
        clf.max_seconds,
        clf.backend,
    )
    assert remote.model is None and clf.model is not None
    np.testing.assert_allclose(
        remote.probabilities(waves(), batch_size=2), clf.probabilities(waves()), atol=1e-5
    )
    assert remote.predict(waves()[2], RATE).labels == clf.predict(waves()[2], RATE).labels


def test_serve_refuses_a_model_process_for_a_loaded_classifier(clf):
    with pytest.raises(ConfigError, match="model directory"):
        create_app(clf, model_process=True)


def test_a_script_without_the_main_guard_is_told_why(trained_tone_model, tmp_path):
    """Spawn imports the starting script again; without the guard the child fails at once,
    and the error says what to add instead of only an exit code."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        f"from voxclass.worker import ModelProcess\nModelProcess({str(trained_tone_model)!r})\n"
    )
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "if __name__ == '__main__':" in run.stderr.splitlines()[-1], run.stderr[-2000:]
