import subprocess
import sys

import pytest
import yaml

from voxclass.config import ConfigError, build_config, parse_overrides, save_config
from voxclass.train import TrainConfig


def test_yaml_then_command_line(tmp_path):
    (tmp_path / "c.yaml").write_text("source: data\nepochs: 3\nbatch_size: 4\naugment: true\n")
    config = build_config(
        TrainConfig,
        tmp_path / "c.yaml",
        parse_overrides(
            ["--epochs", "5", "--augment", "false", "--test-groups", "a,b", "--resume"]
        ),
    )
    assert (config.epochs, config.batch_size, config.augment) == (5, 4, False)
    assert config.test_groups == ["a", "b"] and config.resume is True
    assert config.learning_rate is None  # untouched fields keep their defaults


def test_effective_config_round_trips_through_yaml(tmp_path):
    config = build_config(TrainConfig, None, {"source": "d", "epochs": "2", "max_seconds": "none"})
    save_config(config, tmp_path / "voxclass_config.yaml")
    saved = yaml.safe_load((tmp_path / "voxclass_config.yaml").read_text())
    assert saved["epochs"] == 2.0 and saved["max_seconds"] is None
    assert build_config(TrainConfig, tmp_path / "voxclass_config.yaml", {}) == config


def test_unknown_options_and_bad_values_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown option.*epoch; known: .*epochs"):
        build_config(TrainConfig, None, {"source": "x", "epoch": 3})
    with pytest.raises(ConfigError, match="--batch-size: 'many' is not a valid int"):
        build_config(TrainConfig, None, {"source": "x", "batch_size": "many"})
    run = subprocess.run(
        [sys.executable, "-m", "voxclass", "train", "--data", "x", "--epoch", "3"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert run.stderr.startswith("error: unknown option(s) epoch") and run.stderr.count("\n") == 1
