import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import tone, write_tone_folder
from datasets import ClassLabel, Dataset, Features, List, Value

from voxclass.data import (
    DataConfig,
    DataError,
    is_multi_label,
    label_names,
    load_data,
    normalize_hub_split,
    summarize,
)


def _pairs(dd):
    names = dd["train"].features["label"].names
    return sorted(
        (a["path"], names[y])
        for split in dd.values()
        for a, y in zip(split["audio"], split["label"], strict=True)
    )


def test_three_source_kinds_yield_the_same_examples(tone_folder, tmp_path):
    rows = [(str(p.relative_to(tone_folder)), p.parent.name) for p in tone_folder.rglob("*.wav")]
    with open(tone_folder / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    with open(tone_folder / "manifest.jsonl", "w") as f:
        for path, label in rows:
            f.write(json.dumps({"path": path, "label": label}) + "\n")

    folder = load_data(DataConfig(source=str(tone_folder)))
    from_csv = load_data(DataConfig(source=str(tone_folder / "manifest.csv")))
    from_jsonl = load_data(DataConfig(source=str(tone_folder / "manifest.jsonl")))
    resolved = sorted((str((tone_folder / p).resolve()), y) for p, y in rows)
    assert [(str(Path(p).resolve()), y) for p, y in _pairs(folder)] == resolved
    assert _pairs(from_csv) == _pairs(from_jsonl) == resolved
    assert folder["train"].features["label"].names == ["high", "low", "mid"]  # sorted


def test_split_is_stratified_and_deterministic(tmp_path):
    root = write_tone_folder(tmp_path / "t", per_class=10)
    dd = load_data(DataConfig(source=str(root), test_size=0.2, seed=3))
    assert set(Counter(dd["test"]["label"]).values()) == {2}  # 20 % of 10 per class
    again = load_data(DataConfig(source=str(root), test_size=0.2, seed=3))
    assert _pairs(dd) == _pairs(again) and dd["test"]["audio"] == again["test"]["audio"]


def test_a_small_folder_still_holds_out_every_label(tmp_path):
    # 20 % of 9 clips is 2, fewer than the 3 labels: datasets' stratified split would raise.
    dd = load_data(DataConfig(source=str(write_tone_folder(tmp_path / "t", per_class=3))))
    assert Counter(dd["test"]["label"]) == {0: 1, 1: 1, 2: 1}
    assert Counter(dd["train"]["label"]) == {0: 2, 1: 2, 2: 2}
    with pytest.raises(DataError, match="too few to hold out a test split"):
        load_data(DataConfig(source=str(tmp_path / "t"), test_size=0.9))


def test_split_folders_are_used_as_given(tmp_path):
    root = write_tone_folder(tmp_path / "t", per_class=3, splits=True)
    dd = load_data(DataConfig(source=str(root)))
    assert set(dd) == {"train", "test"} and len(dd["train"]) == len(dd["test"]) == 9


def test_group_split_never_shares_a_speaker(fsdd):
    config = DataConfig(source=str(fsdd), group_pattern=r"^\d+_(?P<group>[a-z]+)_", test_size=0.25)
    dd = load_data(config)
    assert not set(dd["train"]["group"]) & set(dd["test"]["group"])
    assert len(set(dd["test"]["group"])) == 1  # one of four speakers held out
    held = load_data(DataConfig(**{**config.__dict__, "test_groups": ["george"]}))
    assert set(held["test"]["group"]) == {"george"} and len(held["test"]) == 500


def test_manifest_errors_name_the_line(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\nmissing.wav,a\n")
    with pytest.raises(DataError, match=r"m.csv, line 2: audio file not found"):
        load_data(DataConfig(source=str(tmp_path / "m.csv")))
    sf.write(tmp_path / "a.wav", tone(300, 0.5, 8000), 8000)
    (tmp_path / "n.csv").write_text("path,label\na.wav,\n")
    with pytest.raises(DataError, match=r"line 2: needs a 'path' and a 'label'"):
        load_data(DataConfig(source=str(tmp_path / "n.csv")))


def test_unknown_labels_for_a_model_are_named(tone_folder):
    with pytest.raises(DataError, match="labels not known to the model: mid"):
        load_data(DataConfig(source=str(tone_folder)), label_names=["high", "low"])


def test_hub_failure_is_clear_offline(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # both libraries read the variables once, at import: set their constants too, or the
    # test spends ~20 s on connection retries instead of failing fast
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        DataError, match="cannot reach the Hugging Face Hub to load 'PolyAI/minds14'"
    ):
        load_data(
            DataConfig(source="PolyAI/minds14", hub_config="en-US", label_column="intent_class")
        )


def test_minds14_shaped_hub_split_gets_sorted_labels(tmp_path):
    names = ["freeze", "abroad", "balance"]  # hub order is not sorted
    clips = []
    for i in range(3):
        sf.write(tmp_path / f"{i}.wav", tone(300 + 200 * i, 0.5, 8000), 8000)
        clips.append({"bytes": (tmp_path / f"{i}.wav").read_bytes(), "path": f"{i}.wav"})
    features = Features(
        {
            "audio": {"bytes": Value("binary"), "path": Value("string")},
            "intent_class": ClassLabel(names=names),
        }
    )
    hub = Dataset.from_dict({"audio": clips, "intent_class": [0, 1, 2]}, features=features)
    split = normalize_hub_split(
        hub, DataConfig(source="PolyAI/minds14", label_column="intent_class")
    )
    assert split["label"] == ["freeze", "abroad", "balance"]
    assert split["audio"][0]["bytes"] == clips[0]["bytes"]


def test_summary_lists_every_bad_file(tmp_path):
    root = write_tone_folder(tmp_path / "t", per_class=3)
    (root / "low" / "text.wav").write_text("not audio")
    (root / "mid" / "empty.wav").write_bytes(b"")
    summaries, bad = summarize(load_data(DataConfig(source=str(root), test_size=0.3)))
    assert sorted(e.name.split("/")[-1] for e in bad) == ["empty.wav", "text.wav"]
    total = sum(s.clips for s in summaries.values())
    assert total == 11
    durations = [s.durations for s in summaries.values()]
    assert all(0.5 <= d[0] <= d[1] <= d[2] <= 1.5 for d in durations)
    assert np.all([list(s.sample_rates) == [8000] for s in summaries.values()])


def _multi_manifest(root: Path, cells: list[str], name: str = "m.csv") -> Path:
    """A CSV manifest of 0.5 s tones, one row per label cell."""
    with open(root / name, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for i, cell in enumerate(cells):
            sf.write(root / f"{i}.wav", tone(300 + 100 * i, 0.5, 8000), 8000)
            writer.writerow([f"{i}.wav", cell])
    return root / name


def test_multi_label_manifest_gives_label_sets_with_sorted_names(tmp_path):
    cells = ["dog;siren", "siren", "dog", "cat; dog", "siren;dog", "cat"] * 2
    dd = load_data(DataConfig(source=str(_multi_manifest(tmp_path, cells)), multi_label=True))
    assert is_multi_label(dd["train"]) and label_names(dd["test"]) == ["cat", "dog", "siren"]
    names = label_names(dd["train"])
    sets = sorted(tuple(names[i] for i in ids) for split in dd.values() for ids in split["label"])
    expected = sorted(tuple(sorted(c.replace(" ", "").split(";"))) for c in cells)
    assert sets == expected
    assert len(dd["test"]) == 3  # seeded random 20 % split: label sets cannot be stratified
    again = load_data(DataConfig(source=str(tmp_path / "m.csv"), multi_label=True))
    assert dd["test"]["audio"] == again["test"]["audio"]
    summaries, _ = summarize(dd)
    assert sum(s.class_counts["dog"] for s in summaries.values()) == 8


def test_multi_label_empty_label_and_audiofolder_are_errors(tmp_path, tone_folder):
    manifest = _multi_manifest(tmp_path, ["dog;siren", "dog;;siren"])
    with pytest.raises(DataError, match=r"m.csv, line 3: empty label in 'dog;;siren'"):
        load_data(DataConfig(source=str(manifest), multi_label=True))
    (tmp_path / "m.jsonl").write_text('{"path": "0.wav", "label": []}\n')
    with pytest.raises(DataError, match=r"m.jsonl, line 1: empty label"):
        load_data(DataConfig(source=str(tmp_path / "m.jsonl"), multi_label=True))
    with pytest.raises(DataError, match="audiofolder gives one label per clip"):
        load_data(DataConfig(source=str(tone_folder), multi_label=True))


def test_multi_label_group_split_keeps_groups_apart(tmp_path):
    cells = ["a;b", "a", "b", "b;a"] * 3
    manifest = _multi_manifest(tmp_path, cells)
    rows = list(csv.DictReader(manifest.open()))
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "label", "speaker"])
        writer.writeheader()
        writer.writerows({**r, "speaker": f"s{i % 4}"} for i, r in enumerate(rows))
    config = DataConfig(source=str(manifest), multi_label=True, group_by="speaker", test_size=0.25)
    dd = load_data(config)
    assert not set(dd["train"]["group"]) & set(dd["test"]["group"])
    assert len(set(dd["test"]["group"])) == 1


def test_multi_label_hub_split_reads_label_lists_and_separated_text(tmp_path):
    sf.write(tmp_path / "0.wav", tone(300, 0.5, 8000), 8000)
    clip = {"bytes": (tmp_path / "0.wav").read_bytes(), "path": "0.wav"}
    audio = {"bytes": Value("binary"), "path": Value("string")}
    config = DataConfig(source="org/sounds", multi_label=True)
    listed = Dataset.from_dict(
        {"audio": [clip, clip], "label": [[2, 0], [1]]},
        features=Features({"audio": audio, "label": List(ClassLabel(names=["z", "b", "a"]))}),
    )
    assert normalize_hub_split(listed, config)["label"] == [["a", "z"], ["b"]]
    text = Dataset.from_dict(
        {"audio": [clip], "label": ["siren;dog"]},
        features=Features({"audio": audio, "label": Value("string")}),
    )
    assert normalize_hub_split(text, config)["label"] == [["dog", "siren"]]


def test_manifest_paths_outside_its_folder_need_the_option(tmp_path):
    sf.write(tmp_path / "a.wav", tone(300, 0.5, 8000), 8000)
    (tmp_path / "inner").mkdir()
    for name, path in (("up.csv", "../a.wav"), ("abs.csv", str(tmp_path / "a.wav"))):
        manifest = tmp_path / "inner" / name
        manifest.write_text(f"path,label\n{path},x\n{path},x\n{path},y\n{path},y\n")
        with pytest.raises(DataError, match=rf"{name}, line 2: .* is outside the manifest's"):
            load_data(DataConfig(source=str(manifest)))
        dd = load_data(DataConfig(source=str(manifest), allow_outside_paths=True))
        assert {a["path"] for s in dd.values() for a in s["audio"]} == {
            str((tmp_path / "a.wav").resolve())
        }


def test_malformed_manifests_name_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"path": "a.wav", "label": "x"}\n\n{oops\n')
    (tmp_path / "latin.csv").write_bytes("path,label\ncaf\xe9.wav,x\n".encode("latin-1"))
    (tmp_path / "list.jsonl").write_text('["a.wav", "x"]\n')
    for name, message in (
        ("bad.jsonl", "bad.jsonl, line 3: not a valid JSONL manifest"),
        ("latin.csv", "latin.csv: not UTF-8 text"),
        ("list.jsonl", "list.jsonl, line 1: expected a JSON object"),
    ):
        with pytest.raises(DataError, match=message):
            load_data(DataConfig(source=str(tmp_path / name)))
