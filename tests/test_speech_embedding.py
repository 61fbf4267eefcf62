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

from voxclass.audio import load_audio
from voxclass.speech_embedding import (
    INT16_SCALE,
    WINDOW_FRAMES,
    WINDOW_STEP,
    fetch_onnx,
    from_onnx,
    scale_log_mel,
)

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
            got = port.embed(torch.from_numpy(windows)).numpy()
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
    with pytest.raises(ValueError, match="sha256"):
        fetch_onnx(tmp_path)
