"""Data sources -> one `datasets.DatasetDict` shape.

Every source (a Hub dataset, an audiofolder, a CSV/JSONL manifest) becomes splits with:
  audio  `Audio(decode=False)`: {"bytes", "path"}; decoded later by `audio.load_audio`
         (datasets 5.x would need torchcodec + ffmpeg to decode)
  label  `ClassLabel` with names sorted, so label ids are the same on every machine;
         with `multi_label`, `List(ClassLabel)`: the ids of every label of the clip
  group  (only when --group-by / --group-pattern is given) e.g. the speaker
Where the source has no test split, one is made: stratified by label, or by group when asked
(a multi-label split is seeded random, as label sets cannot be stratified).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import statistics
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .audio import AUDIO_EXTENSIONS, AudioError, AudioLimits, decode, is_audio_path

if TYPE_CHECKING:  # datasets is imported where a dataset is made: `voxclass --help` and
    # predict's manifest reading do without it
    from datasets import Dataset, DatasetDict


def audio_struct() -> dict:
    """datasets' Audio feature encodes through torchcodec; the audio column is built as this
    plain struct and cast."""
    from datasets import Value

    return {"bytes": Value("binary"), "path": Value("string")}

# test_new_wording: the second test split of `voxclass synth` (phrasings never used in training)
SPLIT_NAMES = {"train", "test", "validation", "valid", "dev", "eval", "test_new_wording"}
MANIFEST_SUFFIXES = {".csv", ".jsonl", ".json"}


class DataError(ValueError):
    """A data source that cannot be used: names the source (file, line, label) and the fix."""


@dataclass
class DataConfig:
    """Where the data comes from and how it is split."""

    source: str
    """Hub dataset id, audiofolder directory, or CSV/JSONL manifest (`path,label`)."""
    hub_config: str | None = None
    """Hub dataset configuration, e.g. `en-US` for PolyAI/minds14."""
    hub_split: str | None = None
    """Hub split to load (default: all of them)."""
    label_column: str = "label"
    """Column holding the class (MInDS-14: `intent_class`). Audiofolders use the folder name."""
    audio_column: str = "audio"
    """Column holding audio in a Hub dataset."""
    test_size: float = 0.2
    """Fraction held out for test when the source has no test split."""
    seed: int = 42
    """Seed of the held-out split (evaluate: give training's); train also seeds its run with
    it, evaluate its --snr noise."""
    group_by: str | None = None
    """Manifest/metadata column naming a group (e.g. `speaker`) that never straddles splits."""
    group_pattern: str | None = None
    """Regex with a named group `(?P<group>...)` applied to the file name, e.g. FSDD's
    `^\\d+_(?P<group>[a-z]+)_`."""
    test_groups: list[str] = field(default_factory=list)
    """Hold out exactly these groups as the test split (instead of a random group split)."""
    multi_label: bool = False
    """Several labels per clip: a manifest's label cell such as `dog;siren` names them all
    (audiofolders cannot: one folder is one label)."""
    label_separator: str = ";"
    """Separates the labels of one cell with `multi_label`."""
    allow_outside_paths: bool = False
    """Let a manifest name audio outside its own folder (`../x.wav`, absolute paths); off by
    default, so a manifest from elsewhere cannot make voxclass read any file on the machine."""


@dataclass
class InspectConfig(DataConfig):
    """What `voxclass inspect` looks at; the data fields come from DataConfig."""

    max_seconds: float = AudioLimits.max_seconds
    """Clips longer than this are reported bad (training's limit by default)."""


# ---------------------------------------------------------------- reading each kind of source


def _audiofolder_rows(root: Path) -> list[dict]:
    """Rows of `ROOT/<label>/*` or `ROOT/<split>/<label>/*`, merged with ROOT/metadata.csv."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise DataError(f"{root}: no label folders; expected {root}/<label>/*.wav")
    has_splits = all(p.name.lower() in SPLIT_NAMES for p in subdirs)
    rows = []
    for top in subdirs:
        label_dirs = sorted(p for p in top.iterdir() if p.is_dir()) if has_splits else [top]
        for label_dir in label_dirs:
            for path in sorted(label_dir.rglob("*")):
                if path.is_file() and is_audio_path(path):
                    row = {"path": str(path), "label": label_dir.name}
                    if has_splits:
                        row["split"] = top.name.lower()
                    rows.append(row)
    if not rows:
        raise DataError(f"{root}: no audio files found under its label folders")
    metadata = root / "metadata.csv"
    if metadata.exists():
        with open(metadata, newline="") as f:
            extra = {str((root / r["file_name"]).resolve()): r for r in csv.DictReader(f)}
        for row in rows:
            for key, value in extra.get(str(Path(row["path"]).resolve()), {}).items():
                row.setdefault(key, value)
    return rows


def iter_manifest(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each row of a UTF-8 CSV or JSONL manifest, read as they are
    consumed (a 10-million-line manifest is never held whole); DataError naming the file and
    line for text that is not one (bad JSON, a row that is not an object, non-UTF-8 bytes) and
    for a manifest with no rows."""
    kind = "CSV" if path.suffix.lower() == ".csv" else "JSONL"
    where, rows = f"{path}", 0
    try:
        with open(path, newline="", encoding="utf-8") as f:
            if kind == "CSV":
                reader = csv.DictReader(f)
                for record in reader:
                    rows += 1
                    yield reader.line_num, record
            else:
                for number, line in enumerate(f, start=1):
                    where = f"{path}, line {number}"
                    if line.strip():
                        record = json.loads(line)
                        if not isinstance(record, dict):
                            raise DataError(
                                f"{where}: expected a JSON object like "
                                '{"path": "a.wav", "label": "dog"}, got ' + type(record).__name__
                            )
                        rows += 1
                        yield number, record
    except (json.JSONDecodeError, csv.Error) as err:
        raise DataError(f"{where}: not a valid {kind} manifest ({err})") from None
    except UnicodeDecodeError:
        raise DataError(f"{where}: not UTF-8 text; save the manifest as UTF-8") from None
    if not rows:
        raise DataError(f"{path}: the manifest has no rows")


def read_manifest(path: Path) -> list[tuple[int, dict]]:
    """Every row of `iter_manifest`, at once."""
    return list(iter_manifest(path))


def manifest_audio_path(
    manifest: Path, line: int, record: dict, allow_outside: bool = False
) -> Path:
    """The audio file a manifest row names, relative to the manifest's folder. A row without
    a `path` value, or (unless `allow_outside`) whose path leads out of the manifest's folder
    (`../x.wav`, `/etc/x`), is a DataError naming the line: a manifest from elsewhere must not
    make voxclass read any file it names. The check is on the path as written, so a data
    folder that is a symlink stays usable."""
    value = record.get("path")
    if not value:
        columns = ", ".join(map(str, record))
        raise DataError(
            f"{manifest}, line {line}: no 'path' value (columns found: {columns}); "
            "give each row the audio file's path"
        )
    folder = manifest.parent.absolute()
    audio_path = Path(os.path.normpath(folder / str(value)))
    if not allow_outside and not audio_path.is_relative_to(folder):
        raise DataError(
            f"{manifest}, line {line}: {value} is outside the manifest's folder {folder}; move "
            "the manifest up, or pass --allow-outside-paths if you trust it"
        )
    return audio_path.resolve()


def _manifest_rows(path: Path, config: DataConfig) -> list[dict]:
    """Rows of a CSV or JSONL manifest; `path` is relative to the manifest's folder. With
    `config.multi_label` a row's label is the list of labels in its cell (or JSON list)."""
    label_column = config.label_column
    rows = []
    for line, record in read_manifest(path):
        if record.get(label_column) in (None, ""):
            raise DataError(
                f"{path}, line {line}: needs a 'path' and a '{label_column}' value "
                f"(columns found: {', '.join(map(str, record))})"
            )
        audio_path = manifest_audio_path(path, line, record, config.allow_outside_paths)
        if not audio_path.is_file():
            raise DataError(f"{path}, line {line}: audio file not found: {audio_path}")
        row = {k: str(v) for k, v in record.items()}
        label = record[label_column]
        if config.multi_label:
            label = _label_set(label, config.label_separator, f"{path}, line {line}")
        row.update(path=str(audio_path), label=label if config.multi_label else str(label))
        rows.append(row)
    return rows


def _label_set(value: object, separator: str, where: str) -> list[str]:
    """The labels of one multi-label cell: a JSON list, or text split at `separator`; an empty
    label (`dog;;siren`, `[]`) is a DataError naming `where`."""
    items = value if isinstance(value, list) else str(value).split(separator)
    labels = [str(x).strip() for x in items]
    if not labels or "" in labels:
        raise DataError(
            f"{where}: empty label in {value!r}; give one or more labels separated by "
            f"{separator!r} (--label-separator), e.g. dog{separator}siren"
        )
    return sorted(set(labels))


# Where the Hub keeps the Parquet conversion the dataset viewer makes of every public dataset,
# including those that ship a loading script: CONFIG/SPLIT/0000.parquet, 0001.parquet, ...; a
# split too large to convert whole lives in CONFIG/partial-SPLIT/. Audio is embedded as bytes.
PARQUET_CONVERSION = "hf://datasets/{name}@refs%2Fconvert%2Fparquet"
# datasets >= 4 raises a RuntimeError starting with this for a dataset with a loading script.
SCRIPT_REFUSAL = "Dataset scripts are no longer supported"


def load_hub(config: DataConfig) -> DatasetDict:
    """Load a Hub dataset (e.g. PolyAI/minds14, en-US, label `intent_class`).

    A dataset that ships a loading script (refused by datasets >= 4) is read from the Hub's
    Parquet conversion instead, same config and split names, with one line on stderr saying so.
    Every failure is a one-line DataError saying which of: no network, unknown dataset, unknown
    config or split, gated or private dataset (log in), missing column."""
    from datasets import Dataset, DatasetDict, load_dataset
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # one clear error below instead of a page of retries
    try:
        try:
            loaded = load_dataset(config.source, config.hub_config, split=config.hub_split)
        except RuntimeError as err:
            if not str(err).startswith(SCRIPT_REFUSAL):
                raise
            loaded = _load_parquet_conversion(config)
    except DataError:
        raise
    except Exception as err:  # the Hub raises many kinds: connection, auth, not found, ...
        raise _hub_error(err, config) from None
    if isinstance(loaded, Dataset):
        loaded = DatasetDict({config.hub_split or "train": loaded})
    return DatasetDict({name: normalize_hub_split(ds, config) for name, ds in loaded.items()})


def _load_parquet_conversion(config: DataConfig) -> DatasetDict:
    """The splits of `config.hub_config` from the Parquet conversion of a script dataset."""
    import fsspec
    from datasets import load_dataset

    root = PARQUET_CONVERSION.format(name=config.source)
    fs, base = fsspec.core.url_to_fs(root)
    try:
        found = fs.glob(f"{base}/*/*/*.parquet")
    except FileNotFoundError:  # no refs/convert/parquet revision
        found = []
    shards: dict[str, dict[str, list[str]]] = {}  # config -> split -> shard URLs
    for path in sorted(found):
        hub_config, split, shard = path.rsplit("/", 3)[-3:]
        shards.setdefault(hub_config, {}).setdefault(split.removeprefix("partial-"), []).append(
            f"{root}/{hub_config}/{split}/{shard}"
        )
    if not shards:
        raise DataError(
            f"'{config.source}' ships a loading script, which datasets >= 4 no longer runs, and "
            "the Hub has no Parquet conversion of it (refs/convert/parquet); download the data "
            "and pass a local audiofolder or manifest"
        )
    hub_config = config.hub_config or (next(iter(shards)) if len(shards) == 1 else None)
    if hub_config not in shards:
        raise _config_error(config, ", ".join(shards))
    splits = shards[hub_config]
    if config.hub_split and config.hub_split not in splits:
        raise DataError(
            f"'{config.source}' ({hub_config}) has no split '{config.hub_split}'; "
            f"splits: {', '.join(splits)}"
        )
    wanted = {config.hub_split: splits[config.hub_split]} if config.hub_split else splits
    partial = sorted(k for k, urls in wanted.items() if "/partial-" in urls[0])
    print(
        f"note: '{config.source}' ships a loading script, which datasets >= 4 no longer runs; "
        f"reading the Hub's Parquet conversion of '{hub_config}' instead (refs/convert/parquet)"
        + (f"; only part of {', '.join(partial)} is converted there" if partial else ""),
        file=sys.stderr,
    )
    return load_dataset("parquet", data_files=wanted)


def _listed(message: str) -> str:
    """The names in the first `[...]` list of a datasets error message, comma-separated."""
    found = re.search(r"\[([^\]]*)\]", message)
    return ", ".join(re.findall(r"'([^']*)'", found.group(1))) if found else ""


def _config_error(config: DataConfig, configs: str) -> DataError:
    """Unknown (or missing, where the dataset has several) `--hub-config`, listing the known."""
    given = f"has no config '{config.hub_config}'" if config.hub_config else "needs --hub-config"
    known = f"; configs: {configs}" if configs else ""
    return DataError(f"'{config.source}' {given}{known} (pick one with --hub-config)")


def _hub_error(err: Exception, config: DataConfig) -> DataError:
    """The one-line DataError for a failed Hub load, by what actually went wrong."""
    import httpx
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    name, message = config.source, str(err)
    login = "log in with `hf auth login` (or set HF_TOKEN)"
    # datasets turns a GatedRepoError into DatasetNotFoundError and drops the cause: only its
    # message tells a gated dataset from a missing one.
    if isinstance(err, GatedRepoError) or "is a gated dataset" in message:
        return DataError(
            f"'{name}' is a gated dataset: accept its conditions at "
            f"https://huggingface.co/datasets/{name}, then {login}"
        )
    if isinstance(err, (DatasetNotFoundError, RepositoryNotFoundError)):
        return DataError(
            f"'{name}' is not a dataset on the Hugging Face Hub, or it is private; check the "
            f"name, or {login} with an account that can read it"
        )
    if isinstance(err, (ConnectionError, httpx.TransportError)):
        return DataError(
            f"cannot reach the Hugging Face Hub to load '{name}' ({type(err).__name__}); check "
            "your connection (and HF_HUB_OFFLINE), or pass a local audiofolder or manifest"
        )
    if isinstance(err, ValueError) and ("BuilderConfig" in message or "Config name" in message):
        return _config_error(config, _listed(message))
    if isinstance(err, ValueError) and "Unknown split" in message:
        return DataError(f"'{name}' has no split '{config.hub_split}'; splits: {_listed(message)}")
    first_line = message.splitlines()[0][:200] if message else ""
    return DataError(f"cannot load '{name}' from the Hub ({type(err).__name__}: {first_line})")


def normalize_hub_split(ds: Dataset, config: DataConfig) -> Dataset:
    """Bring a Hub split to our shape: undecoded `audio`, string labels (ids sorted later)."""
    from datasets import Audio, ClassLabel

    for column in (config.audio_column, config.label_column):
        if column not in ds.column_names:
            raise DataError(
                f"'{config.source}' has no column '{column}' "
                f"(columns: {', '.join(ds.column_names)}); set --label-column / --audio-column"
            )
    ds = ds.cast_column(config.audio_column, Audio(decode=False))
    feature = ds.features[config.label_column]
    names = feature.names if isinstance(feature, ClassLabel) else None
    audio = ds[config.audio_column]
    if config.multi_label:
        inner = getattr(feature, "feature", None)  # List(ClassLabel) on the Hub
        inner_names = inner.names if isinstance(inner, ClassLabel) else None
        labels = [
            _label_set(
                [inner_names[i] for i in v] if inner_names else v,
                config.label_separator,
                f"'{config.source}' row {row}",
            )
            for row, v in enumerate(ds[config.label_column])
        ]
    else:
        labels = [names[v] if names else str(v) for v in ds[config.label_column]]
    extra = {}
    if config.group_by:
        if config.group_by not in ds.column_names:
            raise DataError(f"'{config.source}' has no column '{config.group_by}' for --group-by")
        extra["group"] = [str(v) for v in ds[config.group_by]]
    return _dataset({"audio": audio, "label": labels, **extra})


# ---------------------------------------------------------------- one shape for every source


def _group_of(row: dict, config: DataConfig) -> str | None:
    if config.group_by:
        if config.group_by not in row:
            raise DataError(
                f"{row['path']}: no '{config.group_by}' value for --group-by "
                "(add the column to the manifest or the folder's metadata.csv)"
            )
        return str(row[config.group_by])
    if config.group_pattern:
        match = re.search(config.group_pattern, Path(row["path"]).name)
        if not match:
            raise DataError(
                f"{row['path']}: file name does not match --group-pattern {config.group_pattern!r}"
            )
        return match.groupdict().get("group") or match.group(1 if match.groups() else 0)
    return None


def _rows_to_dataset(rows: list[dict], config: DataConfig) -> Dataset:
    columns = {
        "audio": [{"path": r["path"], "bytes": None} for r in rows],
        "label": [r["label"] for r in rows],
    }
    if config.group_by or config.group_pattern:
        columns["group"] = [_group_of(r, config) for r in rows]
    return _dataset(columns)


def _dataset(columns: dict[str, list]) -> Dataset:
    """Columns (audio dicts, string labels or label lists, optional string groups) -> Dataset,
    Audio undecoded."""
    from datasets import Audio, Dataset, Features, List, Value

    features = Features({k: audio_struct() if k == "audio" else Value("string") for k in columns})
    if columns["label"] and isinstance(columns["label"][0], list):  # multi-label
        features["label"] = List(Value("string"))
    ds = Dataset.from_dict(columns, features=features)
    return ds.cast_column("audio", Audio(decode=False))


def is_multi_label(ds: Dataset) -> bool:
    """Whether the split holds several labels per clip (`List(ClassLabel)`)."""
    from datasets import List

    return isinstance(ds.features["label"], List)


def label_names(ds: Dataset) -> list[str]:
    """The sorted label names, whether one label per clip or several."""
    from datasets import List

    feature = ds.features["label"]
    return (feature.feature if isinstance(feature, List) else feature).names


def _label_values(ds: Dataset) -> list[str]:
    """Every label occurrence of a split (string or id), label lists flattened."""
    column = ds["label"]
    return [x for labels in column for x in labels] if is_multi_label(ds) else list(column)


def _with_sorted_labels(dd: DatasetDict, names: list[str] | None = None) -> DatasetDict:
    from datasets import ClassLabel, DatasetDict, List

    names = names or sorted({label for split in dd.values() for label in _label_values(split)})
    label = ClassLabel(names=names)
    return DatasetDict(
        {
            k: v.cast_column("label", List(label) if is_multi_label(v) else label)
            for k, v in dd.items()
        }
    )


def read_source(config: DataConfig) -> DatasetDict:
    """Read any source into splits with string labels (before label ids and test split)."""
    from datasets import DatasetDict

    path = Path(config.source)
    if path.is_dir():
        if config.multi_label:
            raise DataError(
                f"{path}: an audiofolder gives one label per clip (its folder), so it cannot "
                "be multi-label; list the clips and their labels (`dog;siren`) in a CSV/JSONL "
                "manifest, or drop --multi-label"
            )
        rows = _audiofolder_rows(path)
    elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        rows = _manifest_rows(path, config)
    elif path.exists():
        raise DataError(f"{path}: not a folder or a .csv/.jsonl manifest")
    elif re.fullmatch(r"[\w.-]+(/[\w.-]+)?", config.source) and not config.source.startswith("."):
        return load_hub(config)
    else:
        raise DataError(f"{config.source}: no such file or folder")
    by_split: dict[str, list[dict]] = {}
    for row in rows:
        by_split.setdefault(_canonical_split(row.get("split") or "train"), []).append(row)
    return DatasetDict({k: _rows_to_dataset(v, config) for k, v in sorted(by_split.items())})


def _canonical_split(name: str) -> str:
    name = name.lower()
    return {"valid": "validation", "dev": "validation", "eval": "validation"}.get(name, name)


def split_train_test(ds: Dataset, config: DataConfig) -> DatasetDict:
    """Hold out a test split: stratified by label, and by group when the data has groups.

    Label sets (multi-label) cannot be stratified: their split is seeded random, by group when
    the data has groups."""
    from datasets import DatasetDict

    multi = is_multi_label(ds)
    if "group" not in ds.column_names and multi:
        return ds.train_test_split(test_size=config.test_size, seed=config.seed)
    if "group" not in ds.column_names:
        counts = Counter(ds["label"])
        if min(counts.values()) < 2:
            rare = [ds.features["label"].int2str(k) for k, n in counts.items() if n < 2]
            raise DataError(f"labels with a single clip cannot be split: {', '.join(rare)}")
        # A stratified split needs every label on both sides: hold out at least one clip per
        # label, even where the fraction asks for fewer (a small folder).
        held_out = max(math.ceil(config.test_size * len(ds)), len(counts))
        if len(ds) - held_out < len(counts):
            raise DataError(
                f"{config.source}: {len(ds)} clips are too few to hold out a test split with "
                f"each of the {len(counts)} labels on both sides; add clips or give a test split"
            )
        return ds.train_test_split(test_size=held_out, seed=config.seed, stratify_by_column="label")
    groups = np.array(ds["group"])
    if config.test_groups:
        unknown = sorted(set(config.test_groups) - set(groups))
        if unknown:
            raise DataError(
                f"--test-groups {', '.join(unknown)} not found; groups: "
                f"{', '.join(sorted(set(groups)))}"
            )
        test_mask = np.isin(groups, config.test_groups)
    else:
        from sklearn.model_selection import StratifiedGroupKFold

        n_groups = len(set(groups))
        if n_groups < 2:
            raise DataError("only one group in the data: a group split needs at least two")
        n_splits = max(2, min(round(1 / config.test_size), n_groups))
        folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=config.seed)
        # One constant "class" for label sets: StratifiedGroupKFold is then a seeded group split.
        strata = np.zeros(len(groups), int) if multi else ds["label"]
        _, test_index = next(folds.split(np.zeros(len(groups)), strata, groups))
        test_mask = np.zeros(len(groups), bool)
        test_mask[test_index] = True
    return DatasetDict(
        {
            "train": ds.select(np.flatnonzero(~test_mask)),
            "test": ds.select(np.flatnonzero(test_mask)),
        }
    )


def load_data(config: DataConfig, label_names: list[str] | None = None) -> DatasetDict:
    """Read `config.source` into a DatasetDict with `train` and `test` (and any other splits).

    `label_names` fixes the label ids (e.g. those of a trained model); a label outside it is a
    DataError naming the label.
    """
    dd = read_source(config)
    if label_names is not None:
        unknown = sorted({x for s in dd.values() for x in _label_values(s)} - set(label_names))
        if unknown:
            raise DataError(
                f"labels not known to the model: {', '.join(unknown)} "
                f"(model labels: {', '.join(label_names)})"
            )
    dd = _with_sorted_labels(dd, label_names)
    if "test" not in dd:
        if "train" not in dd:
            raise DataError(f"{config.source}: no 'train' or 'test' split")
        held_out = split_train_test(dd.pop("train"), config)
        dd["train"], dd["test"] = held_out["train"], held_out["test"]
    elif "group" in dd["test"].column_names and "train" in dd:
        overlap = set(dd["train"]["group"]) & set(dd["test"]["group"])
        if overlap:
            raise DataError(f"groups in both train and test: {', '.join(sorted(overlap))}")
    return dd


# ---------------------------------------------------------------- `voxclass inspect`


@dataclass
class SplitSummary:
    clips: int
    class_counts: dict[str, int]
    durations: tuple[float, float, float] | None  # min, median, max seconds
    sample_rates: dict[int, int]
    channels: dict[int, int]
    groups: int | None


def summarize(
    dd: DatasetDict, limits: AudioLimits = AudioLimits()
) -> tuple[dict, list[AudioError]]:
    """Decode every clip once; return per-split summaries and *every* bad file found."""
    summaries, bad = {}, []
    for name, ds in dd.items():
        durations, rates, channels = [], Counter(), Counter()
        for example in ds:
            try:
                wave, rate = decode(example["audio"], limits)
            except AudioError as err:
                bad.append(err)
                continue
            durations.append(wave.shape[0] / rate)
            rates[rate] += 1
            channels[wave.shape[1]] += 1
        names = label_names(ds)
        counts = Counter(names[i] for i in _label_values(ds))
        summaries[name] = SplitSummary(
            clips=len(ds),
            class_counts={k: counts.get(k, 0) for k in names},
            durations=(min(durations), statistics.median(durations), max(durations))
            if durations
            else None,
            sample_rates=dict(rates),
            channels=dict(channels),
            groups=len(set(ds["group"])) if "group" in ds.column_names else None,
        )
    return summaries, bad


# ---------------------------------------------------------------- inputs to predict on


def iter_inputs(inputs: list[str], allow_outside_paths: bool = False) -> Iterator[str]:
    """Files as given, folders recursively (audio extensions only, in `sorted(rglob)` order),
    manifests by `path` column (relative to the manifest's folder, and inside it unless
    `allow_outside_paths`), streamed: folders are walked and manifests read as the paths are
    consumed, so a 10-million-line manifest is never held whole. A missing input is a DataError
    before the first path; a folder without audio or a malformed manifest is a DataError when
    reached."""
    sources = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            sources.append(_audio_under(path))
        elif path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
            sources.append(_manifest_paths(path, allow_outside_paths))
        elif path.exists() or is_audio_path(path):
            sources.append(iter([str(path)]))  # a missing audio file becomes an error row
        else:
            raise DataError(f"{item}: no such file or folder")
    return (p for source in sources for p in source)


def _audio_under(folder: Path) -> Iterator[str]:
    found = 0
    for path in _walk(folder):
        found += 1
        yield path
    if not found:
        raise DataError(
            f"{folder}: no audio files found under it (extensions accepted: "
            f"{', '.join(sorted(AUDIO_EXTENSIONS))})"
        )


def _walk(folder: Path) -> Iterator[str]:
    """Audio files under `folder`, in `sorted(folder.rglob("*"))` order, one folder at a time."""
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir():
            yield from _walk(Path(entry.path))
        elif entry.is_file() and is_audio_path(Path(entry.name)):
            yield entry.path


def _manifest_paths(manifest: Path, allow_outside_paths: bool) -> Iterator[str]:
    for line, record in iter_manifest(manifest):
        yield str(manifest_audio_path(manifest, line, record, allow_outside_paths))
