import csv
import io
import json
import subprocess
import sys

import numpy as np
import soundfile as sf
from conftest import TONES, burst


def _voxclass(*args):
    return subprocess.run([sys.executable, "-m", "voxclass", *args], capture_output=True, text=True)


def _inputs(tmp_path):
    folder = tmp_path / "clips"
    (folder / "nested").mkdir(parents=True)
    for label, freq in TONES.items():
        sf.write(folder / "nested" / f"{label}.flac", burst(freq, 1.0, 16000), 16000)
    (folder / "notes.txt").write_text("ignored: not an audio extension")
    (folder / "broken.wav").write_text("not audio")
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,label\nclips/nested/low.flac,low\n")
    return folder, manifest


def test_predict_formats_error_rows_and_exit_code(trained_tone_model, tmp_path):
    folder, manifest = _inputs(tmp_path)
    run = _voxclass(
        "predict",
        str(trained_tone_model),
        str(folder),
        str(manifest),
        "--format",
        "json",
        "--top-k",
        "2",
    )
    assert run.returncode == 1, run.stderr  # one input failed, the rest ran
    records = json.loads(run.stdout)
    assert len(records) == 5  # 3 flac + broken.wav from the folder, 1 from the manifest
    errors = [r for r in records if "error" in r]
    assert len(errors) == 1 and errors[0]["source"].endswith("broken.wav")
    assert "not audio" in errors[0]["error"]
    by_name = {r["source"].rsplit("/", 1)[-1]: r for r in records if "error" not in r}
    assert {n: r["labels"][0] for n, r in by_name.items()} == {
        "high.flac": "high",
        "low.flac": "low",
        "mid.flac": "mid",
    }
    assert all(len(r["labels"]) == 2 for r in by_name.values())

    out = tmp_path / "out.csv"
    run = _voxclass(
        "predict",
        str(trained_tone_model),
        str(folder / "nested"),
        "--format",
        "csv",
        "--out",
        str(out),
        "--top-k",
        "1",
    )
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert sorted(r["label"] for r in rows) == ["high", "low", "mid"]

    run = _voxclass("predict", str(trained_tone_model), str(folder / "nested"))
    assert run.returncode == 0 and "low.flac" in run.stdout and "low (" in run.stdout


def test_long_file_gets_a_window_timeline(trained_tone_model, tmp_path):
    wave = np.concatenate([burst(TONES["low"], 2.0, 8000), burst(TONES["high"], 2.0, 8000)])
    sf.write(tmp_path / "call.wav", wave, 8000)
    run = _voxclass(
        "predict",
        str(trained_tone_model),
        str(tmp_path / "call.wav"),
        "--format",
        "json",
        "--window",
        "2",
        "--hop",
        "1",
    )
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)[0]
    assert record["duration"] == 4.0 and len(record["windows"]) == 3
    assert [w["start"] for w in record["windows"]] == [0.0, 1.0, 2.0]
    assert record["windows"][0]["labels"][0] == "low"
    assert record["windows"][-1]["labels"][0] == "high"


def test_missing_input_and_model_are_one_line_errors(trained_tone_model, tmp_path):
    run = _voxclass("predict", str(trained_tone_model), str(tmp_path / "nothing"))
    assert run.returncode == 2 and run.stderr.strip().startswith("error:")
    assert "no such file or folder" in run.stderr and "Traceback" not in run.stderr
    sf.write(tmp_path / "a.wav", burst(300.0, 0.5, 8000), 8000)
    run = _voxclass("predict", str(tmp_path), str(tmp_path))
    assert run.returncode == 2 and "not a model directory" in run.stderr
