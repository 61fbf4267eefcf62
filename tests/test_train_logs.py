"""What `voxclass train` prints when its output is a log file or CI, not a terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import write_tone_folder

SRC = Path(__file__).resolve().parents[1] / "src"


def test_train_without_a_terminal_logs_one_line_per_epoch_and_no_warnings(tmp_path):
    data = write_tone_folder(tmp_path / "data", per_class=4, splits=True)
    env = {
        **os.environ,
        "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "HF_HUB_OFFLINE": "1",  # a preset needs no Hub; nothing may try it
    }
    env.pop("PYTHONWARNINGS", None)  # the user's default: FutureWarnings are shown
    run = subprocess.run(
        [sys.executable, "-m", "voxclass", "train", "--data", str(data), "--model", "tiny"]
        + ["--output", str(tmp_path / "model"), "--epochs", "3", "--batch-size", "4"]
        + ["--augment-copies", "1", "--early-stopping", "0"],
        capture_output=True,  # stdout and stderr are pipes: isatty() is False
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    err = run.stderr
    assert "\r" not in err and "it/s" not in err and "s/it" not in err, err[-2000:]
    assert not [line for line in err.splitlines() if "Warning" in line], err
    epochs = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("test loss" in line and "macro-F1" in line for line in epochs), epochs
    assert sum(line.startswith("best model on test: ") for line in err.splitlines()) == 1
    assert "{'" not in err + run.stdout  # no raw Trainer log dicts
    assert "model written to" in run.stdout
