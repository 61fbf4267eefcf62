"""Shared factories: real audio files written in temp dirs, and tiny trained models."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# ../shared/data/fsdd beside the checkout (or beside a folder of git worktrees)
FSDD = next(
    (p / "shared/data/fsdd" for p in Path(__file__).resolve().parents if (p / "shared").is_dir()),
    Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd",
)
TONES = {"low": 300.0, "mid": 1000.0, "high": 2500.0}


def tone(freq: float, seconds: float, rate: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    """A sine with a little noise, float32 in [-1, 1]; (frames,) or (frames, channels)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.size)
    wave = wave.astype(np.float32)
    return np.repeat(wave[:, None], channels, axis=1) if channels > 1 else wave


def burst(freq: float, seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """A tone between two stretches of near-silence. Log-mel extractors that normalise each
    mel bin over time (SeamlessM4T) flatten a steady tone; an onset and offset survive."""
    edge = np.zeros(int(0.25 * seconds * rate), np.float32)
    body = tone(freq, seconds / 2, rate, seed)
    noise = np.random.default_rng(seed + 1).standard_normal(2 * edge.size) * 0.02
    return np.concatenate([edge + noise[: edge.size], body, edge + noise[edge.size :]]).astype(
        np.float32
    )


def write_tone_folder(root: Path, per_class: int = 6, rate: int = 8000, splits: bool = False):
    """An audiofolder of three tone-burst classes (low/mid/high) with varied lengths."""
    rng = np.random.default_rng(0)
    for split in ("train", "test") if splits else (None,):
        for label, freq in TONES.items():
            folder = root / split / label if split else root / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                seconds = float(rng.uniform(0.5, 1.5))
                sf.write(folder / f"{label}_{i}.wav", burst(freq, seconds, rate, seed=i), rate)
    return root


TONE_SETS = [("low",), ("mid",), ("high",), ("high", "low"), ("low", "mid"), ("high", "mid")]


def write_tone_mix_manifest(root: Path, per_set: int = 4, rate: int = 8000) -> Path:
    """A multi-label CSV manifest: bursts of one tone or of two tones mixed, labelled with
    every tone they contain (`high;low`)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = ["path,label"]
    for labels in TONE_SETS:
        for i in range(per_set):
            seconds = 0.5 + 0.25 * (i % 4)
            wave = sum(burst(TONES[x], seconds, rate, seed=i) for x in labels) / len(labels)
            name = f"{'+'.join(labels)}_{i}.wav"
            sf.write(root / name, wave.astype(np.float32), rate)
            rows.append(f"{name},{';'.join(labels)}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def default_sigint() -> None:
    """`preexec_fn` for a child that a test interrupts with SIGINT: a shell starts background
    jobs with SIGINT ignored, the child would inherit that, and Python then never raises
    KeyboardInterrupt in it (the test would see the job finish instead)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    """A TCP port nothing listens on, for a test server on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tone_folder(tmp_path: Path) -> Path:
    return write_tone_folder(tmp_path / "tones")


@pytest.fixture(scope="session")
def fsdd() -> Path:
    assert FSDD.is_dir(), f"real recordings expected at {FSDD} (see shared/data/README.md)"
    return FSDD


@pytest.fixture(scope="session")
def trained_tone_model(tmp_path_factory) -> Path:
    """The `tiny` preset trained through `voxclass.train` on three tone classes until it
    separates them with margin (true-class probability > 0.9 on fresh bursts; with 10 clips per
    class one burst sat at 0.58): a real model with known behaviour, in under a minute."""
    from voxclass.train import TrainConfig, train

    root = tmp_path_factory.mktemp("tone_model")
    data = write_tone_folder(root / "data", per_class=20, splits=True)
    config = TrainConfig(
        source=str(data),
        model="tiny",
        output=str(root / "model"),
        epochs=30,
        batch_size=4,
        learning_rate=1e-3,
        augment_copies=2,
        early_stopping=0,
    )
    out = train(config)
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert final["accuracy"] == 1.0, f"tone model did not learn the tones: {final}"
    return out


def write_local_wav2vec2(path: Path) -> Path:
    """A tiny raw-waveform wav2vec2 classifier saved like a pretrained Hub checkpoint
    (stands in for facebook/wav2vec2-base: group-norm, extractor without attention mask).
    Its two convolutions leave 1,600 frames a second (wav2vec2's seven: 50), so its attention
    over a 9 s clip is 14,400 frames square (a test exporting it on those clips peaked at 24
    GB): give its exports short clips, not the default validation clips of up to 9 s."""
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForSequenceClassification,
    )

    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_feat_extract_layers=2,
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
    )
    Wav2Vec2ForSequenceClassification(config).save_pretrained(path)
    Wav2Vec2FeatureExtractor(return_attention_mask=False).save_pretrained(path)
    return path


@pytest.fixture
def no_network(monkeypatch) -> list:
    """The Hub client in offline mode, and every outgoing connection or name lookup refused
    and recorded: a test asserts the returned list stays empty, so it fails if the code would
    reach the network, on a connected machine too. (Setting HF_HUB_OFFLINE in the environment
    alone does nothing here: huggingface_hub reads it once, at import.)"""
    import socket

    import huggingface_hub.constants

    attempts: list = []

    def refuse(target, *args, **kwargs):
        attempts.append(target)
        raise OSError(f"test: network access to {target} refused")

    monkeypatch.setattr(socket.socket, "connect", lambda sock, address: refuse(address))
    monkeypatch.setattr(socket.socket, "connect_ex", lambda sock, address: refuse(address))
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return attempts


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the console-script entry point in-process; return (exit code, stdout, stderr)."""
    from voxclass import cli

    monkeypatch.setattr(sys, "argv", ["voxclass", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


def stock_pipeline_top(model_dir: Path, clip: Path, rate: int, top_k: int = 3) -> dict:
    """Stock `pipeline("audio-classification", trust_remote_code=True)` on `clip` (resampled to
    `rate`) in a fresh interpreter: {"voxclass": whether voxclass got imported, "top": its top_k
    answers}."""
    script = f"""
import json, sys
import soundfile as sf, soxr
from transformers import pipeline
classify = pipeline("audio-classification", model={str(model_dir)!r}, trust_remote_code=True)
wave, rate = sf.read({str(clip)!r}, dtype="float32")
top = classify({{"raw": soxr.resample(wave, rate, {rate}), "sampling_rate": {rate}}}, top_k={top_k})
print(json.dumps({{"voxclass": "voxclass" in sys.modules, "top": top}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])
