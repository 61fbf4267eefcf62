"""Hub datasets, without the Hub: every branch of `data.load_hub` runs through the real
`datasets.load_dataset`, with only the Hub's answers faked (HfApi.hf_hub_download), the
endpoint pointed at a closed local port so that nothing can reach the network, and the Hub's
Parquet conversion replaced by a local folder of the same layout."""

from __future__ import annotations

import io

import datasets.config
import httpx
import huggingface_hub.constants
import numpy as np
import pytest
import soundfile as sf
from conftest import tone
from datasets import Audio, ClassLabel, Dataset, Features, Value
from huggingface_hub import HfApi
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

from voxclass import data
from voxclass.audio import decode
from voxclass.data import SCRIPT_REFUSAL, DataConfig, DataError, load_data, load_hub

CLOSED = "http://127.0.0.1:9"  # the discard port: a request fails at once, offline or not
INTENTS = ["freeze", "abroad", "balance"]  # Hub order, not sorted
FREQ = {"freeze": 300.0, "abroad": 900.0, "balance": 2000.0}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Whatever these tests do, no request leaves the machine."""
    monkeypatch.setenv("HF_ENDPOINT", CLOSED)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", CLOSED)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", CLOSED)


def hub_answers(monkeypatch, tmp_path, error: Exception | None = None):
    """The Hub as datasets sees it: every file download returns a README from the given
    commit, or raises `error` (gated, missing); `minds14.py` exists, so the dataset ships a
    loading script."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    readme = tmp_path / "hub" / "abc123" / "README.md"
    readme.parent.mkdir(parents=True)
    readme.write_text("---\nlicense: cc-by-4.0\n---\n")

    def hf_hub_download(self, repo_id, filename, **kwargs):
        if error is not None:
            raise error
        return str(readme)

    monkeypatch.setattr(HfApi, "hf_hub_download", hf_hub_download)


def http_error(cls, status: int):
    request = httpx.Request("GET", f"{CLOSED}/api/datasets/PolyAI/minds14")
    return cls(f"{status} Client Error", response=httpx.Response(status, request=request))


def write_conversion(root, layout: dict[str, dict[str, int]]):
    """A Parquet conversion: ROOT/CONFIG/SPLIT/NNNN.parquet, MInDS-14 columns, audio as
    embedded WAV bytes; `layout` gives the clips of each shard. Returns {path: (label, wave)}."""
    features = Features(
        {
            "path": Value("string"),
            "audio": {"bytes": Value("binary"), "path": Value("string")},
            "english_transcription": Value("string"),
            "intent_class": ClassLabel(names=INTENTS),
        }
    )
    written, n = {}, 0
    for split_dir, shards in layout.items():
        for shard in range(shards):
            rows = {"path": [], "audio": [], "english_transcription": [], "intent_class": []}
            for i in range(3):
                label = INTENTS[i]
                wave = tone(FREQ[label], 0.3 + 0.1 * i, 8000, seed=n)
                path = f"{split_dir}/clip{n}.wav"
                wav = io.BytesIO()
                sf.write(wav, wave, 8000, format="WAV", subtype="PCM_16")
                rows["path"].append(path)
                rows["audio"].append({"bytes": wav.getvalue(), "path": path})
                rows["english_transcription"].append(f"request {n}")
                rows["intent_class"].append(i)
                written[path] = (label, sf.read(io.BytesIO(wav.getvalue()), dtype="float32")[0])
                n += 1
            (root / split_dir).mkdir(parents=True, exist_ok=True)
            # an Audio column as the Hub stores it; built as a struct, as datasets' Audio
            # encoder needs torchcodec
            ds = Dataset.from_dict(rows, features=features)
            ds = ds.cast_column("audio", Audio(decode=False))
            ds.to_parquet(str(root / split_dir / f"{shard:04d}.parquet"))
    return written


@pytest.fixture
def conversion(tmp_path, monkeypatch):
    """The Hub's Parquet conversion of PolyAI/minds14, as a local folder in its layout."""
    root = tmp_path / "conversion"
    monkeypatch.setattr(data, "PARQUET_CONVERSION", str(root / "{name}"))
    minds = root / "PolyAI" / "minds14"
    written = write_conversion(minds, {"en-US/train": 2, "en-US/test": 1, "fr-FR/train": 1})
    return minds, written


MINDS = dict(source="PolyAI/minds14", hub_config="en-US", label_column="intent_class")


def test_a_script_dataset_loads_from_the_parquet_conversion(
    conversion, tmp_path, monkeypatch, capsys
):
    minds, written = conversion
    hub_answers(monkeypatch, tmp_path)
    dd = load_data(DataConfig(**MINDS))
    # one line says what was done (datasets' own progress bars, off in the CLI, aside)
    notes = [x for x in capsys.readouterr().err.splitlines() if x.startswith("note:")]
    assert len(notes) == 1 and "ships a loading script" in notes[0]
    assert "Parquet conversion of 'en-US'" in notes[0]
    # en-US only (not fr-FR), both shards of train, the conversion's own test split
    assert len(dd["train"]) == 6 and len(dd["test"]) == 3
    names = dd["train"].features["label"].names
    assert names == sorted(INTENTS)
    seen = set()
    for split in ("train", "test"):
        for example in dd[split]:
            path = example["audio"]["path"]
            label, original = written[path]
            assert names[example["label"]] == label
            wave, rate = decode(example["audio"])  # the decoder every file goes through
            assert rate == 8000 and np.allclose(wave[:, 0], original, atol=1e-4)
            seen.add(path)
    assert seen == {p for p in written if p.startswith("en-US/")}


def test_the_real_datasets_still_refuses_scripts_with_the_message_we_catch(tmp_path):
    script_dataset = tmp_path / "minds14"
    script_dataset.mkdir()
    (script_dataset / "minds14.py").write_text("# a loading script\n")
    with pytest.raises(RuntimeError, match=f"^{SCRIPT_REFUSAL}"):
        datasets.load_dataset(str(script_dataset))


def test_a_conversion_split_and_a_partial_split_keep_their_names(tmp_path, monkeypatch, capsys):
    root = tmp_path / "conversion"
    monkeypatch.setattr(data, "PARQUET_CONVERSION", str(root / "{name}"))
    write_conversion(root / "google" / "speech_commands", {"v0.02/partial-train": 1})
    hub_answers(monkeypatch, tmp_path)
    config = DataConfig(
        source="google/speech_commands", hub_split="train", label_column="intent_class"
    )
    dd = load_hub(config)  # the only config is taken without --hub-config
    assert list(dd) == ["train"] and len(dd["train"]) == 3
    assert "only part of train is converted" in capsys.readouterr().err


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"hub_config": "de-DE"},
            "'PolyAI/minds14' has no config 'de-DE'; configs: en-US, fr-FR",
        ),
        ({"hub_config": None}, "'PolyAI/minds14' needs --hub-config; configs: en-US, fr-FR"),
        ({"hub_split": "dev"}, r"has no split 'dev'; splits: test, train"),
        (
            {"label_column": "intent"},
            r"has no column 'intent' \(columns: path, audio, english_transcription, "
            r"intent_class\); set --label-column",
        ),
    ],
)
def test_conversion_errors_name_what_exists(conversion, tmp_path, monkeypatch, config, message):
    hub_answers(monkeypatch, tmp_path)
    with pytest.raises(DataError, match=message):
        load_data(DataConfig(**{**MINDS, **config}))


def test_a_script_dataset_without_a_conversion_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "PARQUET_CONVERSION", str(tmp_path / "none" / "{name}"))
    hub_answers(monkeypatch, tmp_path)
    with pytest.raises(DataError, match="no Parquet conversion of it .*local audiofolder"):
        load_data(DataConfig(**MINDS))


@pytest.mark.parametrize(
    "error, message",
    [
        (
            http_error(GatedRepoError, 401),
            r"'PolyAI/minds14' is a gated dataset: accept its conditions at "
            r"https://huggingface.co/datasets/PolyAI/minds14, then log in with `hf auth login` "
            r"\(or set HF_TOKEN\)",
        ),
        (
            http_error(RepositoryNotFoundError, 404),
            "'PolyAI/minds14' is not a dataset on the Hugging Face Hub, or it is private; "
            "check the name, or log in",
        ),
    ],
    ids=["gated", "missing-or-private"],
)
def test_gated_and_missing_datasets_are_told_apart(tmp_path, monkeypatch, error, message):
    hub_answers(monkeypatch, tmp_path, error=error)
    with pytest.raises(DataError, match=message) as raised:
        load_data(DataConfig(**MINDS))
    assert "cannot reach" not in str(raised.value)


def test_no_network_says_so(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="cannot reach the Hugging Face Hub to load 'PolyAI/mi"):
        load_data(DataConfig(**MINDS))


@pytest.fixture
def configured_dataset(tmp_path):
    """A dataset repository with two configs declared in its card, read by the real datasets
    (the Hub's config and split errors come from the same builder code)."""
    root = tmp_path / "repo"
    for name in ("en-US", "fr-FR"):
        (root / name).mkdir(parents=True)
        (root / name / "train.csv").write_text("audio,label\nx.wav,a\n")
    (root / "README.md").write_text(
        "---\nconfigs:\n"
        + "".join(
            f"- config_name: {n}\n  data_files:\n  - split: train\n    path: {n}/train.csv\n"
            for n in ("en-US", "fr-FR")
        )
        + "---\n"
    )
    return str(root)


@pytest.mark.parametrize(
    "hub_config, hub_split, message",
    [
        ("de-DE", None, "has no config 'de-DE'; configs: en-US, fr-FR"),
        (None, None, "needs --hub-config; configs: en-US, fr-FR"),
        ("en-US", "dev", "has no split 'dev'; splits: train"),
    ],
)
def test_unknown_config_or_split_lists_the_known(
    configured_dataset, hub_config, hub_split, message
):
    config = DataConfig(source=configured_dataset, hub_config=hub_config, hub_split=hub_split)
    with pytest.raises(DataError, match=message):
        load_hub(config)
