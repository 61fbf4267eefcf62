import dataclasses
import subprocess
import sys
import types
import typing

import pytest
import yaml

from voxclass.config import (
    ConfigError,
    build_config,
    parse_overrides,
    publish_folder,
    save_config,
    staging_folder,
)
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


def not_the_default(field: dataclasses.Field, hint) -> object:
    """A value of the field's declared type that differs from its default."""
    default = field.default_factory() if callable(field.default_factory) else field.default
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # `X | None`: an X
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    kind = typing.get_origin(hint) or hint
    value = {bool: not default, int: 7, float: 0.25, str: "x7", list: ["a", "b"], dict: {"x": 7}}[
        kind
    ]
    return value if value != default else {int: 8, float: 0.5, str: "y8"}[kind]


def test_every_field_round_trips_through_the_saved_yaml(tmp_path):
    """Every TrainConfig field, set to a value that is not its default, comes back from the
    saved file as it was, as plain YAML (no Python tags), in declaration order."""
    hints = typing.get_type_hints(TrainConfig)
    fields = dataclasses.fields(TrainConfig)
    config = TrainConfig(**{f.name: not_the_default(f, hints[f.name]) for f in fields})
    save_config(config, tmp_path / "voxclass_config.yaml")
    text = (tmp_path / "voxclass_config.yaml").read_text()
    assert "!!" not in text
    assert list(yaml.safe_load(text)) == [f.name for f in fields]
    loaded = build_config(TrainConfig, tmp_path / "voxclass_config.yaml", {})
    assert loaded == config
    # None (an unset default) survives too, and a number given as text is read as its type.
    config = build_config(TrainConfig, None, {"source": "d", "epochs": "2", "max_seconds": "none"})
    save_config(config, tmp_path / "again.yaml")
    assert build_config(TrainConfig, tmp_path / "again.yaml", {}) == config


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


def test_publish_folder_replaces_an_output_whole_and_puts_it_back_when_the_swap_fails(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("earlier")
    new = staging_folder(out)
    (new / "new.txt").write_text("new")
    publish_folder(new, out)
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folder left

    missing = tmp_path / ".out.voxclass-new-gone"  # the rename of the new one fails
    with pytest.raises(FileNotFoundError):
        publish_folder(missing, out)
    assert (out / "new.txt").read_text() == "new"  # the earlier output is back in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_training_arguments_fields_pass_through_over_voxclass_defaults(tmp_path):
    from transformers import TrainingArguments

    from voxclass.train import training_arguments

    (tmp_path / "c.yaml").write_text(
        "source: d\nlr_scheduler_type: linear\ntraining_args:\n  logging_steps: 5\n"
    )
    config = build_config(
        TrainConfig,
        tmp_path / "c.yaml",
        {"bf16": "false", "report_to": "none", "epochs": "3"},
        passthrough=("training_args", TrainingArguments),
    )
    assert config.epochs == 3
    assert config.training_args == {
        "lr_scheduler_type": "linear",
        "logging_steps": 5,
        "bf16": False,
        "report_to": "none",
    }
    args = training_arguments(config, from_scratch=True)
    assert args.lr_scheduler_type == "linear" and args.logging_steps == 5  # overridden
    assert args.eval_strategy == "epoch" and args.metric_for_best_model == "macro_f1"  # kept
    assert args.num_train_epochs == 3
    with pytest.raises(ConfigError, match="output_dir is set by voxclass: use --output"):
        training_arguments(dataclasses.replace(config, training_args={"output_dir": "x"}), True)
    with pytest.raises(ConfigError, match="training_args: 'bf17' is not a field"):
        build_config(
            TrainConfig,
            None,
            {"source": "d", "training_args": {"bf17": True}},
            passthrough=("training_args", TrainingArguments),
        )
    # `None | str | list[str]`: a comma list is a list
    values = {"source": "d", "report_to": "tensorboard,wandb"}
    trainer = ("training_args", TrainingArguments)
    config = build_config(TrainConfig, None, values, passthrough=trainer)
    assert config.training_args == {"report_to": ["tensorboard", "wandb"]}
