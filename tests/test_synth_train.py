"""`voxclass train --synth-phrases`: real clips plus clips synthesized from text (train only)."""

import json
import shutil

import pytest

from voxclass import train as train_module
from voxclass.data import DataError
from voxclass.train import TrainConfig, train


def _fsdd_subset(fsdd, root):
    """Two real clips per digit for train, one for validation, one for test (other speakers)."""
    picks = {"train": ["george_0", "jackson_0"], "validation": ["nicolas_0"], "test": ["theo_0"]}
    for split, names in picks.items():
        for digit in range(10):
            folder = root / split / str(digit)
            folder.mkdir(parents=True)
            for name in names:
                shutil.copy(fsdd / str(digit) / f"{digit}_{name}.wav", folder)
    return root


@pytest.mark.slow
def test_synthetic_clips_join_training_only_and_are_counted(fsdd, tmp_path, monkeypatch):
    data = _fsdd_subset(fsdd, tmp_path / "data")
    seen = {}
    real_decode = train_module.decode_data

    def spy(dd, config, rate):
        seen.update({name: [a["path"] for a in split["audio"]] for name, split in dd.items()})
        return real_decode(dd, config, rate)

    monkeypatch.setattr(train_module, "decode_data", spy)
    config = TrainConfig(
        source=str(data),
        model="tiny",
        output=str(tmp_path / "model"),
        synth_phrases="digits",
        synth_per_label=2,
        max_steps=2,
        batch_size=8,
        augment_copies=1,
    )
    out = train(config)

    def synthetic(paths):
        return [p for p in paths if not p.startswith(str(data))]

    assert len(seen["train"]) == 40 and len(synthetic(seen["train"])) == 20
    assert all("/synth/train/" in p for p in synthetic(seen["train"]))
    assert len(seen["validation"]) == 10 and not synthetic(seen["validation"])
    assert len(seen["test"]) == 10 and not synthetic(seen["test"])
    clips = json.loads((out / "metrics.json").read_text())["train"]
    assert (clips["real_train_clips"], clips["synthetic_train_clips"]) == (20, 20)
    assert clips["train_clips"] == 40 and clips["test_clips"] == 10
    assert "40 train (20 real, 20 synthetic), 10 test" in (out / "README.md").read_text()
    assert not (tmp_path / "model.work").exists()  # the synthetic clips went with the work dir


def test_phrase_labels_must_be_the_data_labels(fsdd, tmp_path):
    data = _fsdd_subset(fsdd, tmp_path / "data")
    phrases = tmp_path / "p.yaml"
    labels = "".join(f"  '{d}': [word]\n" for d in range(9)) + "  ten: [ten]\n"  # no 9, a ten
    phrases.write_text(f"labels:\n{labels}")
    config = TrainConfig(
        source=str(data), model="tiny", output=str(tmp_path / "m"), synth_phrases=str(phrases)
    )
    with pytest.raises(DataError, match="without phrasings: 9; not in the data: ten"):
        train(config)
    assert not (tmp_path / "m.work").exists() and not (tmp_path / "m").exists()
