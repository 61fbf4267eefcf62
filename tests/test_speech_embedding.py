"""The PyTorch port of openWakeWord's two graphs equals onnxruntime on the real graphs (fetched
from the pinned wheel on PyPI), and its front end is per clip where the graph is per batch.

Tolerance: max abs difference below a fraction of the reference's value range: 1e-4 for log-mel
(80 dB range: 8e-3 dB) and 1e-5 for embeddings (range ~70-110: ~1e-3). Measured on 134 FSDD
takes: 2e-4 dB and 3e-5. The log-mel bound is looser because bands ~75 dB below the clip's peak
come from DFT sums that nearly cancel: there float32 puts the graph itself 1.6e-4 dB and the port
3.6e-4 dB from a float64 computation. A real error (window, hop, floor) is off by whole dB.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import run_cli, stock_pipeline_top, write_tone_folder

from voxclass.audio import load_audio
from voxclass.speech_embedding import INT16_SCALE, WINDOW_FRAMES, WINDOW_STEP, scale_log_mel
from voxclass.speech_embedding_onnx import fetch_onnx, from_onnx

MEL_RELATIVE = 1e-4
EMBEDDING_RELATIVE = 1e-5


@pytest.fixture(scope="module")
def graphs() -> tuple[bytes, bytes]:
    return fetch_onnx()


@pytest.fixture(scope="module")
def port(graphs):
    return from_onnx(*graphs).eval()


@pytest.fixture(scope="module")
def sessions(graphs):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return tuple(
        ort.InferenceSession(g, options, providers=["CPUExecutionProvider"]) for g in graphs
    )


@pytest.fixture(scope="module")
def clips(fsdd) -> list[np.ndarray]:
    """Four real recordings (different speakers and digits; 8 kHz resampled to 16 kHz, about
    0.3-0.8 s) and 1.5 s of white noise, float32 in [-1, 1]."""
    paths = sorted(fsdd.glob("*/*.wav"))[::700]
    waves = [load_audio(p, 16000) for p in paths]
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, 24000).astype(np.float32)
    return [*waves, noise]


def onnx_log_mel(sessions, wave: np.ndarray) -> np.ndarray:
    """[batch, samples] in [-1, 1] -> melspectrogram.onnx output as [batch, frames, 32] dB."""
    x = (wave * INT16_SCALE).astype(np.float32)
    return sessions[0].run(None, {"input": x})[0][:, 0]


def onnx_embed(sessions, windows: np.ndarray) -> np.ndarray:
    """[n, 76, 32] -> embedding_model.onnx output as [n, 96]."""
    return sessions[1].run(None, {"input_1": windows[..., None]})[0].reshape(len(windows), -1)


def openwakeword_windows(spec: np.ndarray) -> np.ndarray:
    """openWakeWord's `_get_embeddings`: full 76-frame windows every 8 frames of [frames, 32]."""
    starts = range(0, spec.shape[0] - WINDOW_FRAMES + 1, WINDOW_STEP)
    return np.stack([spec[i : i + WINDOW_FRAMES] for i in starts]).astype(np.float32)


def assert_close(got: np.ndarray, want: np.ndarray, relative: float) -> None:
    assert got.shape == want.shape
    limit = relative * float(want.max() - want.min())
    worst = float(np.abs(got - want).max())
    assert worst < limit, f"max abs difference {worst:.3g} above {limit:.3g}"


def pad_to_second(wave: np.ndarray) -> np.ndarray:
    """FSDD takes are shorter than the 12512 samples one window needs: pad with silence to 1 s."""
    return np.pad(wave, (0, max(0, 16000 - len(wave))))


def test_log_mel_equals_the_onnx_front_end(port, sessions, clips):
    for wave in clips:
        want = onnx_log_mel(sessions, wave[None])
        with torch.no_grad():
            got = port.log_mel(torch.from_numpy(wave[None] * INT16_SCALE)).numpy()
        assert_close(got, want, MEL_RELATIVE)


def test_embed_equals_the_onnx_encoder(port, sessions, clips):
    for wave in clips:
        spec = scale_log_mel(torch.from_numpy(onnx_log_mel(sessions, pad_to_second(wave)[None])))
        windows = openwakeword_windows(spec[0].numpy())
        with torch.no_grad():
            got = port.embed(torch.from_numpy(windows))[:, 0].numpy()
        assert_close(got, onnx_embed(sessions, windows), EMBEDDING_RELATIVE)


def test_forward_equals_openwakeword_pipeline(port, sessions, clips):
    """Audio in [-1, 1] -> one embedding per window, as openWakeWord computes clip by clip."""
    batch = np.stack([pad_to_second(w)[:16000] for w in clips[:-1]] + [clips[-1][:16000]])
    with torch.no_grad():
        got = port(torch.from_numpy(batch)).numpy()
    assert got.shape == (len(batch), 3, 96)  # 97 frames: windows at 0, 8, 16
    for wave, embeddings in zip(batch, got, strict=True):
        spec = scale_log_mel(torch.from_numpy(onnx_log_mel(sessions, wave[None])))[0].numpy()
        assert_close(
            embeddings, onnx_embed(sessions, openwakeword_windows(spec)), EMBEDDING_RELATIVE
        )


def test_front_end_floor_is_per_clip_where_the_graph_is_per_batch(port, sessions, clips):
    """A quiet clip's features are the same alone and beside a louder clip in the port; in the
    ONNX graph the louder clip's maximum raises the quiet clip's 80 dB floor."""
    quiet = pad_to_second(clips[0])[:16000] * 0.01  # -40 dB, silence padded: floor in use
    loud = clips[-1][:16000]
    pair = np.stack([quiet, loud])
    with torch.no_grad():
        alone = port.log_mel(torch.from_numpy(quiet[None] * INT16_SCALE)).numpy()
        batched = port.log_mel(torch.from_numpy(pair * INT16_SCALE)).numpy()
        embedded_alone = port(torch.from_numpy(quiet[None])).numpy()
        embedded_batched = port(torch.from_numpy(pair)).numpy()
    assert_close(batched[:1], alone, MEL_RELATIVE)
    assert_close(embedded_batched[:1], embedded_alone, EMBEDDING_RELATIVE)
    # batch of one: the port is the graph
    onnx_alone = onnx_log_mel(sessions, quiet[None])
    assert_close(alone, onnx_alone, MEL_RELATIVE)
    # the graph: one maximum for the whole batch, so the quiet clip's floor moves up
    onnx_batched = onnx_log_mel(sessions, pair)
    assert onnx_alone.max() - onnx_alone.min() == pytest.approx(80.0, abs=1e-3)
    assert onnx_batched.max() - onnx_batched[0].min() == pytest.approx(80.0, abs=1e-3)
    assert onnx_batched[0].min() - onnx_alone.min() > 10.0
    assert_close(batched[1:], onnx_log_mel(sessions, pair[1:]), MEL_RELATIVE)


def test_encoder_trains_and_front_end_is_frozen(port, clips):
    """Gradients reach every encoder weight from a loss on the embeddings; the front end is
    buffers only, so an optimiser over `parameters()` never moves it."""
    assert not list(port.front_end.parameters())
    port.zero_grad()
    port(torch.from_numpy(pad_to_second(clips[0])[None])).square().mean().backward()
    grads = [p.grad for p in port.encoder.parameters()]
    assert len(grads) == 39 and all(g is not None and g.abs().sum() > 0 for g in grads)
    port.zero_grad()


def test_from_onnx_refuses_a_graph_it_does_not_mirror(graphs):
    """The conversion checks the graph, not only the weight shapes: a changed LeakyRelu slope
    is an error, not a silently different model."""
    model = onnx.load(io.BytesIO(graphs[1]))
    node = next(n for n in model.graph.node if n.op_type == "LeakyRelu")
    next(a for a in node.attribute if a.name == "alpha").f = 0.1
    with pytest.raises(ValueError, match="LeakyRelu alphas"):
        from_onnx(graphs[0], model.SerializeToString())


def test_fetch_onnx_checks_the_wheel_hash(tmp_path):
    (tmp_path / "openwakeword-0.5.1-py3-none-any.whl").write_bytes(b"not the wheel")
    with pytest.raises(OSError, match="sha256"):
        fetch_onnx(tmp_path)


@pytest.fixture(scope="module")
def classifier():
    """`speech-embedding` as `voxclass train` builds it: the wheel's weights, a new head."""
    from voxclass.model import build_model

    model, extractor = build_model("speech-embedding", ["a", "b", "c"])
    return model.eval(), extractor


def test_the_preset_carries_the_wheels_weights_and_trains_only_its_head(classifier, port):
    from voxclass.model import HEAD_LEARNING_RATE, fine_tuning_rate
    from voxclass.train import freeze_pretrained_encoder

    model, extractor = classifier
    wheel = port.state_dict()
    for name, value in model.speech_embedding.state_dict().items():
        assert torch.equal(value, wheel[name]), name
    assert extractor.sampling_rate == 16000 and not extractor.do_normalize
    assert fine_tuning_rate(model.config) == HEAD_LEARNING_RATE
    assert freeze_pretrained_encoder(model, from_scratch=False, enabled=True)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"norm", "classifier"}
    for parameter in model.parameters():
        parameter.requires_grad = True


def test_pooled_features_are_the_mean_and_maximum_of_the_padded_clips_windows(
    classifier, sessions, clips
):
    """The model's pooled vector for a clip is openWakeWord's own windows (ONNX graphs) over
    the clip with `context_seconds` of silence on each side: their mean, then their maximum."""
    model, _ = classifier
    context = round(model.config.context_seconds * 16000)
    for wave in clips[:2]:
        padded = np.pad(wave, (context, context))
        spec = scale_log_mel(torch.from_numpy(onnx_log_mel(sessions, padded[None])))[0].numpy()
        steps = onnx_embed(sessions, openwakeword_windows(spec))
        want = np.concatenate([steps.mean(axis=0), steps.max(axis=0)])
        with torch.no_grad():
            got = model.pooled(torch.from_numpy(wave[None])).numpy()[0]
        assert_close(got, want, EMBEDDING_RELATIVE)


def test_a_clip_scores_the_same_alone_and_in_a_padded_batch(classifier, clips):
    """Batch padding (zeros after a clip, masked out) changes no clip's logits."""
    model, extractor = classifier
    waves = [clips[0], clips[-1], clips[1][: len(clips[1]) // 3]]
    with torch.no_grad():
        batch = extractor(waves, sampling_rate=16000, padding=True, return_tensors="pt")
        together = model(**batch).logits
        for i, wave in enumerate(waves):
            alone = model(**extractor(wave, sampling_rate=16000, return_tensors="pt")).logits
            torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_the_context_fills_a_window_even_for_the_shortest_clip(classifier):
    from voxclass.speech_embedding import MIN_CONTEXT_SECONDS, SpeechEmbeddingConfig

    model, extractor = classifier
    with torch.no_grad():
        blip = extractor(np.full(80, 0.1, np.float32), sampling_rate=16000, return_tensors="pt")
        assert torch.isfinite(model(**blip).logits).all()
    with pytest.raises(ValueError, match="context_seconds"):
        SpeechEmbeddingConfig(context_seconds=MIN_CONTEXT_SECONDS - 0.01)


def test_an_unreachable_registry_is_a_one_line_error(tmp_path, monkeypatch):
    import subprocess

    import voxclass.speech_embedding_onnx as wheel
    from voxclass.model import ModelError, build_model

    refused = "ERROR: No matching distribution found for openwakeword==0.5.1"
    monkeypatch.setattr(wheel, "CACHE", tmp_path / "empty")
    monkeypatch.setattr(
        wheel.subprocess, "run", lambda cmd, **k: subprocess.CompletedProcess(cmd, 1, "", refused)
    )
    with pytest.raises(ModelError) as caught:
        build_model("speech-embedding", ["a", "b"])
    message = str(caught.value)
    assert "\n" not in message and refused in message
    assert "pip download --no-deps openwakeword==0.5.1" in message


def test_trained_folder_runs_in_stock_pipeline_without_voxclass_and_exports(
    tmp_path, monkeypatch, capsys
):
    """`voxclass train --model speech-embedding` writes a folder that stock transformers loads
    from the code saved in it (no voxclass import), with the same scores as voxclass's own
    model; `voxclass export` makes an ONNX model that agrees with it."""
    from voxclass import extractors
    from voxclass.classifier import Classifier

    data = write_tone_folder(tmp_path / "tones", per_class=4, splits=True)
    code, _, err = run_cli(
        monkeypatch, capsys, "train", "--data", data, "--model", "speech-embedding",
        "--output", tmp_path / "m", "--epochs", "1", "--batch-size", "4",
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "m" / "speech_embedding.py").is_file()
    clip = next((data / "test").glob("*/*.wav"))
    stock = stock_pipeline_top(tmp_path / "m", clip, 16000)
    own = Classifier.load(tmp_path / "m").predict(clip, top_k=3)
    assert [p["label"] for p in stock["top"]] == own.labels
    np.testing.assert_allclose([p["score"] for p in stock["top"]], own.scores, atol=1e-4)
    code, _, err = run_cli(monkeypatch, capsys, "export", tmp_path / "m", "--out", tmp_path / "x")
    assert code == 0, err
    assert extractors.load(tmp_path / "x") is not None  # predicts without transformers
    exported = Classifier.load(tmp_path / "x").predict(clip, top_k=3)
    assert exported.labels == own.labels
