"""The command line: user errors are one line and exit code 2; `synth` and `inspect` end to end."""

import json

import soundfile as sf
from conftest import run_cli, tone, write_tone_folder, write_tone_mix_manifest


def test_data_error_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "inspect", tmp_path / "nothing_here")
    assert code == 2 and err.strip().count("\n") == 0
    assert err.startswith("error: ") and "nothing_here: no such file or folder" in err


def test_manifest_error_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    root = write_tone_folder(tmp_path / "t", per_class=3)
    (root / "manifest.csv").write_text("path,label\nlow/low_0.wav,low\nlow/low_1.wav\n")
    code, _, err = run_cli(monkeypatch, capsys, "inspect", root / "manifest.csv")
    assert code == 2 and err.strip().count("\n") == 0
    assert "manifest.csv, line 3" in err


def test_inspect_lists_every_bad_file_and_exits_1(tmp_path, monkeypatch, capsys):
    root = write_tone_folder(tmp_path / "t", per_class=4)
    (root / "low" / "text.wav").write_text("this is text, not audio")
    (root / "mid" / "empty.wav").write_bytes(b"")
    sf.write(root / "high" / "long.wav", tone(500, 3.0, 8000), 8000)
    code, out, err = run_cli(monkeypatch, capsys, "inspect", root, "--max-seconds", "2")
    assert code == 1
    for name, reason in (("text.wav", "not audio"), ("empty.wav", "empty"), ("long.wav", "limit")):
        line = next(x for x in err.splitlines() if name in x)
        assert reason in line
    assert "3 bad file(s)" in err
    assert "8000 Hz" in out and "1ch" in out and "low" in out


def test_inspect_group_options(fsdd, monkeypatch, capsys):
    pattern = r"^\d+_(?P<group>[a-z]+)_"
    code, out, _ = run_cli(
        monkeypatch, capsys, "inspect", fsdd, "--group-pattern", pattern, "--test-groups", "george"
    )
    assert code == 0
    header = next(x for x in out.splitlines() if "train" in x and "test" in x).split()
    groups = next(x for x in out.splitlines() if x.strip("│ ").startswith("groups")).split()
    counts = dict(
        zip(
            [w for w in header if w in ("train", "test")],
            [w for w in groups if w.isdigit()],
            strict=True,
        )
    )
    assert counts == {"train": "3", "test": "1"}  # george alone is held out


def test_synth_then_inspect(tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "s"
    counts = ["--train-per-label", "1", "--validation-per-label", "1", "--test-per-label", "1"]
    code, out, _ = run_cli(monkeypatch, capsys, "synth", out_dir, *counts)
    assert code == 0 and "wrote 42 clips" in out and "clips/s" in out
    code, out, err = run_cli(monkeypatch, capsys, "inspect", out_dir)
    assert code == 0, err
    assert "pay_bill" in out and "8000 Hz×14" in out and "validation" in out


def test_evaluate_with_snr_and_noise_list(trained_tone_model, tmp_path, monkeypatch, capsys):
    data = write_tone_folder(tmp_path / "t", per_class=3, splits=True)
    out = tmp_path / "eval"
    args = ["evaluate", trained_tone_model, "--data", data, "--out", out]
    code, stdout, err = run_cli(
        monkeypatch, capsys, *args, "--snr", "12,-5", "--noise", "white,pink"
    )
    assert code == 0, err
    assert "accuracy under noise" in stdout and "-5" in stdout
    noise = json.loads((out / "report.json").read_text())["noise"]
    assert {k: [p["snr_db"] for p in v] for k, v in noise["curves"].items()} == {
        "white": [12.0, -5.0],
        "pink": [12.0, -5.0],
    }
    assert (out / "snr.png").stat().st_size > 0


def test_evaluate_bad_snr_or_noise_is_one_line_and_exit_2(
    trained_tone_model, tmp_path, monkeypatch, capsys
):
    data = write_tone_folder(tmp_path / "t", per_class=1, splits=True)
    args = ["evaluate", trained_tone_model, "--data", data, "--out", tmp_path / "eval"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--snr", "30,ten,0")
    assert code == 2 and err.strip().count("\n") == 0
    assert "--snr '30,ten,0': 'ten' is not a number of dB" in err
    code, _, err = run_cli(monkeypatch, capsys, *args, "--snr", "0", "--noise", "whte")
    assert code == 2 and err.strip().count("\n") == 0
    assert "whte: not white, pink or babble, and no such noise file or folder" in err


def test_train_with_augment_noise(tmp_path, monkeypatch, capsys):
    data = write_tone_folder(tmp_path / "t", per_class=2, splits=True)
    (tmp_path / "noises").mkdir()
    sf.write(tmp_path / "noises" / "hum.wav", tone(50.0, 0.5, 16000), 16000)
    args = ["train", "--data", data, "--model", "tiny", "--max-steps", "2", "--batch-size", "4"]
    out = tmp_path / "model"
    code, _, err = run_cli(
        monkeypatch, capsys, *args, "--output", out, "--augment-noise", tmp_path / "noises"
    )
    assert code == 0, err
    assert f"augment_noise: {tmp_path / 'noises'}" in (out / "voxclass_config.yaml").read_text()
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        *args,
        "--output",
        tmp_path / "m2",
        "--augment-noise",
        tmp_path / "nowhere",
    )
    assert code == 2 and "nowhere: no such noise file or folder" in err


def test_multi_label_inspect_train_and_evaluate(tmp_path, monkeypatch, capsys):
    manifest = write_tone_mix_manifest(tmp_path / "data", per_set=2)
    code, out, err = run_cli(monkeypatch, capsys, "inspect", manifest, "--multi-label")
    assert code == 0, err
    low = next(x for x in out.splitlines() if x.strip("│ ").startswith("low"))
    assert sum(int(w) for w in low.replace("│", " ").split()[1:]) == 6  # clips with a low tone

    model = tmp_path / "model"
    args = ["train", "--data", manifest, "--model", "tiny", "--output", model, "--max-steps", "2"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--multi-label", "true")
    assert code == 0, err
    assert json.loads((model / "config.json").read_text())["problem_type"] == (
        "multi_label_classification"
    )
    code, _, err = run_cli(
        monkeypatch, capsys, *args, "--multi-label", "--class-weights", "--overwrite", "true"
    )
    assert code == 2 and "drop --class-weights" in err

    eval_out = tmp_path / "eval"
    code, out, err = run_cli(
        monkeypatch, capsys, "evaluate", model, "--data", manifest, "--out", eval_out
    )
    assert code == 0, err
    assert "macro-F1" in out and (eval_out / "report.json").is_file()
