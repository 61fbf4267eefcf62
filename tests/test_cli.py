"""The command line: user errors are one line and exit code 2; `synth` and `inspect` end to end."""

import dataclasses
import json
import subprocess
import sys

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


def test_bare_help_imports_no_heavy_library():
    """`voxclass --help` lists the commands without importing any command's module."""
    probe = (
        "import sys\nfrom voxclass import cli\ntry:\n    cli.main(['--help'])\n"
        "except SystemExit:\n    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', "
        "'datasets', 'numpy', 'rich'}))"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "train" in run.stdout and "predict" in run.stdout
    assert run.stdout.strip().splitlines()[-1] == "[]"


def test_train_help_lists_every_option_with_its_docstring(monkeypatch, capsys):
    from transformers import TrainingArguments

    from voxclass.config import field_docs
    from voxclass.train import TrainConfig, trainer_fields

    code, out, _ = run_cli(monkeypatch, capsys, "train", "--help")
    assert code == 0
    text = " ".join(out.split())
    docs = {**field_docs(TrainingArguments), **field_docs(TrainConfig)}
    options = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "training_args"]
    for name in options + [f.name for f in trainer_fields()]:
        option = "--data" if name == "source" else "--" + name.replace("_", "-")
        assert f"{option} " in text or f"{option}," in text, option
        if docs.get(name):  # the first words of its help (the wrapping may split hyphens)
            assert " ".join(docs[name].split()[:3]) in text, (name, docs[name])
    assert "--epochs, --num-train-epochs FLOAT" in text  # a TrainingArguments name is an alias
    assert "[voxclass: cosine]" in text  # voxclass's own choice, shown beside transformers'
    assert "transformers.TrainingArguments options" in text


def test_train_bf16_without_a_gpu_is_one_line_error(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    data = write_tone_folder(tmp_path / "t", per_class=2)
    args = ["train", "--data", data, "--model", "tiny", "--output", tmp_path / "m"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--bf16", "true")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: --bf16 true: mixed precision needs a GPU")
    code, _, err = run_cli(monkeypatch, capsys, *args, "--eval-strategy", "sometimes")
    assert code == 2 and err.count("\n") == 1, err
    assert "TrainingArguments refused the options" in err and "sometimes" in err
    code, _, err = run_cli(monkeypatch, capsys, *args, "--report-to", "carrier-pigeon")
    assert code == 2 and "carrier-pigeon is not supported" in err
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.work").exists()


def test_every_command_reads_a_yaml_config_and_the_command_line_wins(
    trained_tone_model, tmp_path, monkeypatch, capsys
):
    clips = write_tone_folder(tmp_path / "t", per_class=1, splits=True)
    predict_yaml = tmp_path / "p.yaml"
    predict_yaml.write_text(
        f"model: {trained_tone_model}\ninputs: [{clips / 'test'}]\ntop_k: 1\nformat: json\n"
    )
    args = ["predict", "--config", predict_yaml, "--top-k", "2"]
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 3 and all(len(r["labels"]) == 2 for r in rows)  # json from the YAML

    eval_yaml = tmp_path / "e.yaml"
    eval_yaml.write_text(f"model: {trained_tone_model}\nsource: {clips}\nout: {tmp_path / 'x'}\n")
    code, _, err = run_cli(
        monkeypatch, capsys, "evaluate", "--config", eval_yaml, "--out", tmp_path / "eval"
    )
    assert code == 0, err
    assert (tmp_path / "eval" / "report.json").is_file() and not (tmp_path / "x").exists()

    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_sise: 3\n")
    for command in ("synth", "inspect", "train", "evaluate", "predict", "export", "serve", "demo"):
        code, _, err = run_cli(monkeypatch, capsys, command, "--config", bad)
        assert code == 2 and err.count("\n") == 1, (command, err)
        assert err.startswith("error: unknown option(s) batch_sise"), (command, err)
    code, _, err = run_cli(monkeypatch, capsys, "predict", "--config", eval_yaml)
    assert code == 2 and "unknown option(s) source" in err
    code, _, err = run_cli(monkeypatch, capsys, "evaluate", "--data", clips)
    assert code == 2 and "MODEL is required (on the command line or as `model:`" in err
