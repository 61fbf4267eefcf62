"""Hostile and broken input through the real command line (issue 13).

`CATALOGUE` is the table the README's "Hostile and broken input" section counts: one row per
input, the command it goes to and what must happen. Every row is checked for its exit code and
for no traceback; an `error` row for ONE `error:` line naming the culprit; a `rows` row (predict)
for an error row naming the bad file while every other file is classified (exit 1); an `ok` row
for the right result (the inputs that used to crash or give a wrong answer).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import TONES, burst, run_cli

RATE = 8000




def _wav_with_rate(path: Path, rate: int) -> None:
    """A real 100-sample WAV whose header then claims `rate` Hz."""
    sf.write(path, np.zeros(100, np.float32), RATE)
    data = bytearray(path.read_bytes())
    data[24:28] = struct.pack("<I", rate)
    data[28:32] = struct.pack("<I", rate * 2)  # byte rate of 16-bit mono
    path.write_bytes(bytes(data))


def _labelled(folder: Path, samples: int = 0, labels: tuple[str, ...] = tuple(TONES)) -> None:
    """`folder/<label>/*.wav`: two bursts per tone class, cut to `samples` when given."""
    for label in labels:
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            wave = burst(TONES[label], 1.0, RATE, seed=i)
            sf.write(folder / label / f"{i}.wav", wave[:samples] if samples else wave, RATE)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, trained_tone_model) -> dict[str, str]:
    """A workspace of hostile inputs, built once; `{m}` is the trained tone model."""
    d = tmp_path_factory.mktemp("hostile")
    (d / "short").mkdir()
    for samples in (1, 40, 400):  # <= 50 ms at 8 kHz
        sf.write(d / "short" / f"{samples}.wav", burst(2500, 0.05, RATE)[:samples], RATE)
    for name, rate in (("fast", 2_000_000_000), ("slow", 1)):
        (d / name).mkdir()
        _wav_with_rate(d / name / f"{name}.wav", rate)
        for label, freq in TONES.items():
            sf.write(d / name / f"{label}.wav", burst(freq, 1.0, RATE), RATE)
    (d / "empty" / "sub").mkdir(parents=True)
    (d / "empty" / "notes.txt").write_text("not audio")
    sf.write(d / "good.wav", burst(TONES["low"], 1.0, RATE), RATE)
    (d / "bad.jsonl").write_text('{"path": "good.wav"}\n{oops\n')
    (d / "list.jsonl").write_text('["good.wav"]\n')
    (d / "nopath.csv").write_text("file,label\ngood.wav,low\n")
    (d / "latin.csv").write_bytes("path\ncaf\xe9.wav\n".encode("latin-1"))
    (d / "inner").mkdir()
    (d / "inner" / "outside.csv").write_text("path\n../good.wav\n")
    (d / "inner" / "etc.csv").write_text("path\n../../../../../../etc/passwd\n")
    (d / "afile").write_text("mine")
    (d / "runs" / "tiny").mkdir(parents=True)
    for name in ("broken_onnx", "no_labels"):
        (d / name).mkdir()
        for file in ("config.json", "preprocessor_config.json"):
            (d / name / file).write_bytes((trained_tone_model / file).read_bytes())
    (d / "broken_onnx" / "model.onnx").write_bytes(b"\x08\x07" + os.urandom(500))
    (d / "no_labels" / "model.safetensors").write_bytes(
        (trained_tone_model / "model.safetensors").read_bytes()
    )
    config = json.loads((d / "no_labels" / "config.json").read_text())
    del config["id2label"], config["label2id"]
    (d / "no_labels" / "config.json").write_text(json.dumps(config))
    _labelled(d / "short_data" / "train", 300)
    _labelled(d / "short_data" / "test", 300)
    _labelled(d / "two_labels" / "test", labels=("low", "mid"))
    _labelled(d / "bad_data")
    _wav_with_rate(d / "bad_data" / "low" / "fast.wav", 2_000_000_000)
    return {"m": str(trained_tone_model), "d": str(d)}


def _records(out: str) -> list[dict]:
    return json.loads(out)


def _all_classified(out: str, ws: dict) -> None:
    records = _records(out)
    assert records and all("error" not in r and len(r["labels"]) == 3 for r in records)


def _top1_ok_rest_named(out: str, ws: dict) -> None:
    good = [r for r in _records(out) if "error" not in r]
    assert {Path(r["source"]).stem: r["labels"][0] for r in good} == {x: x for x in TONES}


def _two_label_report(out: str, ws: dict) -> None:
    report = json.loads((Path(ws["d"]) / "eval2" / "report.json").read_text())
    # Both present labels are recognised: macro-F1 over them is 1.0 (over all three: 0.67).
    assert report["accuracy"] == 1.0 and report["macro_f1"] == 1.0
    assert report["absent_labels"] == ["high"] and "high" in out


def _trained(out: str, ws: dict) -> None:
    assert (Path(ws["d"]) / "short_model" / "config.json").is_file()


@dataclass(frozen=True)
class Case:
    input: str
    """What is hostile about it (the README table's first column)."""
    args: tuple[str, ...]
    """Command line; `{m}` the trained model, `{d}` the workspace."""
    expect: str
    """`error` (exit 2, one line), `rows` (exit 1, error row), `inspect` (exit 1, the file
    listed as bad) or `ok` (exit 0)."""
    culprit: str = ""
    """Named in the error line (error) or in the failing row's source (rows)."""
    check: object = None
    """For `ok` and `rows`: a further check of (stdout, workspace)."""


P = ("predict", "{m}")
J = ("--format", "json")
CATALOGUE = [
    Case("clips of 1, 40, 400 samples", (*P, "{d}/short", *J), "ok", check=_all_classified),
    Case("short clips in evaluate", ("evaluate", "{m}", "--data", "{d}/short_data",
                                      "--out", "{d}/eval_short"), "ok"),
    Case("short clips in train", ("train", "--data", "{d}/short_data", "--model", "tiny",
                                  "--output", "{d}/short_model", "--max-steps", "2",
                                  "--batch-size", "2"), "ok", check=_trained),
    Case("WAV header claiming 2 GHz, in a folder", (*P, "{d}/fast", *J), "rows", "fast.wav",
         _top1_ok_rest_named),
    Case("WAV header claiming 1 Hz, in a folder", (*P, "{d}/slow", *J), "rows", "slow.wav",
         _top1_ok_rest_named),
    Case("inspect: a 2 GHz header", ("inspect", "{d}/bad_data"), "inspect", "fast.wav"),
    Case("folder without audio", (*P, "{d}/empty"), "error", "no audio files found"),
    Case("--top-k 0", (*P, "{d}/good.wav", "--top-k", "0"), "error", "--top-k 0"),
    Case("--top-k -1", (*P, "{d}/good.wav", "--top-k", "-1"), "error", "--top-k -1"),
    Case("--top-k above the label count", (*P, "{d}/good.wav", "--top-k", "99", *J), "ok",
         check=_all_classified),
    Case("--batch-size 0", (*P, "{d}/good.wav", "--batch-size", "0"), "error", "--batch-size"),
    Case("evaluate --batch-size 0", ("evaluate", "{m}", "--data", "{d}/short_data",
                                     "--batch-size", "0", "--out", "{d}/e0"), "error",
         "--batch-size"),
    Case("--window -1", (*P, "{d}/good.wav", "--window", "-1"), "error", "--window"),
    Case("--window nan", (*P, "{d}/good.wav", "--window", "nan"), "error", "--window"),
    Case("--hop 1e-9", (*P, "{d}/good.wav", "--hop", "1e-9"), "error", "--hop"),
    Case("--top-k not a number", (*P, "{d}/good.wav", "--top-k", "x"), "error", "--top-k"),
    Case("evaluate without --data", ("evaluate", "{m}"), "error", "--data"),
    Case("train without --data", ("train", "--model", "tiny"), "error", "--data"),
    Case("predict without inputs", ("predict", "{m}"), "error", "INPUTS is required"),
    Case("data with 2 of the model's 3 labels", ("evaluate", "{m}", "--data", "{d}/two_labels",
                                                 "--out", "{d}/eval2"), "ok",
         check=_two_label_report),
    Case("truncated model.onnx", ("predict", "{d}/broken_onnx", "{d}/good.wav"), "error",
         "model.onnx"),
    Case("config.json without id2label", ("predict", "{d}/no_labels", "{d}/good.wav"), "error",
         "id2label"),
    Case("manifest: bad JSON line", (*P, "{d}/bad.jsonl"), "error", "bad.jsonl, line 2"),
    Case("manifest: a line that is not an object", (*P, "{d}/list.jsonl"), "error",
         "list.jsonl, line 1"),
    Case("manifest: no path column", (*P, "{d}/nopath.csv"), "error", "nopath.csv, line 2"),
    Case("manifest: not UTF-8", (*P, "{d}/latin.csv"), "error", "latin.csv"),
    Case("manifest path ../ outside its folder", (*P, "{d}/inner/outside.csv"), "error",
         "--allow-outside-paths"),
    Case("manifest path ../../etc/passwd", (*P, "{d}/inner/etc.csv"), "error", "etc.csv, line 2"),
    Case("outside path allowed by the option", (*P, "{d}/inner/outside.csv",
                                                "--allow-outside-paths", *J), "ok",
         check=_all_classified),
    Case("model path ./runs/tinyy", ("predict", "{d}/runs/tinyy", "{d}/good.wav"), "error",
         "no such model directory"),
    Case("bare model name tinyy", ("predict", "tinyy", "{d}/good.wav"), "error",
         "tinyy: no such model directory"),
    Case("a preset is not a trained model", ("predict", "tiny", "{d}/good.wav"), "error",
         "preset"),
    Case("--out in a missing folder", (*P, "{d}/good.wav", "--out", "{d}/nowhere/p.json"),
         "error", "nowhere"),
    Case("--out naming a folder", (*P, "{d}/good.wav", "--out", "{d}/short"), "error",
         "is a folder"),
    Case("evaluate --out naming a file", ("evaluate", "{m}", "--data", "{d}/short_data",
                                          "--out", "{d}/afile"), "error", "afile"),
    Case("export --out an existing file", ("export", "{m}", "--out", "{d}/afile"), "error",
         "afile"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CATALOGUE, ids=[c.input for c in CATALOGUE])
def test_catalogue(case: Case, ws, monkeypatch, capsys):
    if case.input == "model path ./runs/tinyy":
        monkeypatch.chdir(ws["d"])  # `runs/` exists here: a typo, not a Hub id
        args = ("predict", "runs/tinyy", "good.wav")
    else:
        args = tuple(a.format(**ws) for a in case.args)
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert "Traceback" not in out + err
    if case.expect == "error":
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert lines[0].startswith("error: ") and case.culprit in lines[0], err
        return
    if case.expect == "inspect":  # reported bad, like training and prediction refuse it
        assert code == 1 and case.culprit in err and "sample rate" in err, err
        return
    expected_code = {"ok": 0, "rows": 1}[case.expect]
    assert code == expected_code, err
    if case.expect == "rows":
        failed = [r for r in _records(out) if "error" in r]
        assert len(failed) == 1 and failed[0]["source"].endswith(case.culprit)
        assert "<array>" not in out + err
    if case.check:
        case.check(out, ws)


def test_catalogue_covers_every_class():
    """The README table's classes each have rows here."""
    inputs = " ".join(c.input for c in CATALOGUE)
    for word in ("samples", "GHz", "1 Hz", "--top-k", "--hop", "manifest", "model.onnx",
                 "id2label", "outside", "tinyy", "--out", "labels"):
        assert word in inputs, word


def test_outputs_honour_the_umask(tmp_path):
    from voxclass.config import honour_umask

    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    out.chmod(0o700)  # as tempfile.mkdtemp makes it
    (out / "model.safetensors").write_bytes(b"x")
    (out / "model.safetensors").chmod(0o600)  # as safetensors writes it
    previous = os.umask(0o022)
    try:
        honour_umask(out)
    finally:
        os.umask(previous)
    paths = (out, out / "sub", out / "model.safetensors")
    modes = {p.name: p.stat().st_mode & 0o777 for p in paths}
    assert modes == {"out": 0o755, "sub": 0o755, "model.safetensors": 0o644}
