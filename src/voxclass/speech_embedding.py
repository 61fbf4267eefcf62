"""Google's `speech_embedding` encoder and its log-mel front end as plain PyTorch modules.

openWakeWord (Apache-2.0) ships both as ONNX graphs in its wheel: `melspectrogram.onnx` (16 kHz
audio -> 32 log-mel bands every 10 ms) and `embedding_model.onnx` (76 frames x 32 bands -> 96
values). `from_onnx` copies their weights into `SpeechEmbedding`; `fetch_onnx` gets the two
graphs from the pinned wheel on PyPI. The port is exact up to float rounding, with one chosen
difference: the front end's 80 dB floor is taken per clip, where the ONNX graph takes it over the
whole batch (see `LogMel`).

Pipeline, as openWakeWord runs it:
    wave in [-1, 1] -> * 32767 -> log_mel (dB, = melspectrogram.onnx) -> / 10 + 2 (openWakeWord's
    own transform, outside both graphs) -> windows of 76 frames every 8 frames -> embed (=
    embedding_model.onnx) -> one 96-value embedding per window (760 ms of audio, hop 80 ms).

Only numpy and torch are needed at import; `onnx` is imported inside `from_onnx`.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

SAMPLE_RATE = 16000
INT16_SCALE = 32767.0  # melspectrogram.onnx expects int16-range samples as float32
WINDOW_FRAMES = 76  # embedding_model.onnx input: 76 frames (775 ms of audio)
WINDOW_STEP = 8  # openWakeWord's hop between windows: 8 frames = 80 ms
MEL_BANDS = 32
EMBEDDING_DIM = 96

WHEEL = "openwakeword==0.5.1"
WHEEL_FILE = "openwakeword-0.5.1-py3-none-any.whl"
WHEEL_SHA256 = "015467e49f08b0ef8efa433690ce70566abb72f7c36501a6fa893762b4ddc559"
MEL_MEMBER = "openwakeword/resources/models/melspectrogram.onnx"
EMBEDDING_MEMBER = "openwakeword/resources/models/embedding_model.onnx"


def scale_log_mel(log_mel: Tensor) -> Tensor:
    """openWakeWord's transform between the two graphs: dB / 10 + 2. Not part of either ONNX
    graph; `embed` expects its input already transformed like this."""
    return log_mel / 10 + 2


class LogMel(nn.Module):
    """The melspectrogram.onnx front end: framed DFT as a strided convolution (512-point DFT of
    a 400-sample periodic Hann window centred in 512 samples, hop 160: 25 ms every 10 ms, no
    padding), power, 32 mel bands (weights on DFT bins 2-121, 62-3781 Hz), 10*log10 after a
    1e-10 floor, then a floor `top_db` (80) below the maximum.

    The ONNX graph's ReduceMax has no axes, so its maximum is over the whole batch: a quiet clip
    batched with a loud one gets a higher floor than alone. Here the maximum is over each clip's
    own frames and bands, so features do not depend on batch mates; for a batch of one both agree.
    """

    def __init__(
        self,
        dft_real: Tensor,
        dft_imag: Tensor,
        mel_matrix: Tensor,
        hop: int,
        floor: float,
        top_db: float,
    ):
        super().__init__()
        # [2 * bins, 1, n_fft]: real rows then imaginary rows, window folded in
        self.register_buffer("dft", torch.cat([dft_real, dft_imag]))
        self.register_buffer("mel_matrix", mel_matrix)  # [bins, 32]
        self.hop = hop
        self.floor = floor
        self.top_db = top_db

    def forward(self, wave: Tensor) -> Tensor:
        """[batch, samples] int16-range float audio (wave * 32767) at 16 kHz ->
        [batch, frames, 32] log-mel in dB, frames = (samples - 512) // 160 + 1 (no padding).
        Does NOT apply openWakeWord's / 10 + 2 (`scale_log_mel` does)."""
        spectrum = F.conv1d(wave.unsqueeze(1), self.dft, stride=self.hop)  # [batch, 2*bins, frames]
        real, imag = spectrum.chunk(2, dim=1)
        power = (real.pow(2) + imag.pow(2)).transpose(1, 2)  # [batch, frames, bins]
        mel = torch.matmul(power, self.mel_matrix).clamp(min=self.floor)
        # same op order as the graph (log * 10 / ln 10) so rounding matches too
        db = torch.log(mel) * 10.0 / 2.3025851
        ceiling = db.amax(dim=(1, 2), keepdim=True)  # per clip, unlike the graph
        return torch.maximum(db, ceiling - self.top_db)


class ClippedLeakyReLU(nn.Module):
    """LeakyReLU(0.2) followed by max(., -0.4): the graph's LeakyRelu + Max pair, which bounds
    the negative side (inputs below -2 all map to -0.4)."""

    def __init__(self, slope: float = 0.2, lower: float = -0.4):
        super().__init__()
        self.slope = slope
        self.lower = lower

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.slope).clamp(min=self.lower)


# (channels, (1x3, 3x1) conv pairs, max-pool window = stride) after the 3x3 stem conv to 24.
# Time is the height axis, mel bands the width.
STAGES = ((24, 1, (2, 2)), (48, 2, (1, 2)), (72, 2, (2, 2)), (96, 2, (1, 2)), (96, 2, (2, 2)))


def _conv(c_in: int, c_out: int, kernel: tuple[int, int], bias: bool = True) -> nn.Conv2d:
    """Padding 1 along mel bands when the kernel spans 3 of them ('same'), none along time
    ('valid'): the graph pads [0, 1, 0, 1] on the 3x3 and 1x3 convs and nothing on 3x1."""
    return nn.Conv2d(c_in, c_out, kernel, padding=(0, kernel[1] // 2), bias=bias)


class EmbeddingNet(nn.Module):
    """The embedding_model.onnx network: 20 convs (batch norm folded in), each but the last
    followed by `ClippedLeakyReLU`, 5 max-pools. Time 76 -> 74 -> 72 -> pool 36 -> 32 -> 28 ->
    pool 14 -> 10 -> 6 -> pool 3 -> last 3x1 conv (no bias, no activation) -> 1; bands 32 -> 16
    -> 8 -> 4 -> 2 -> 1 over the pools."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = [_conv(1, 24, (3, 3)), ClippedLeakyReLU()]
        channels = 24
        for width, pairs, pool in STAGES:
            for _ in range(pairs):
                layers += [_conv(channels, width, (1, 3)), ClippedLeakyReLU()]
                layers += [_conv(width, width, (3, 1)), ClippedLeakyReLU()]
                channels = width
            layers.append(nn.MaxPool2d(pool))
        layers.append(_conv(channels, EMBEDDING_DIM, (3, 1), bias=False))
        self.layers = nn.Sequential(*layers)

    def forward(self, windows: Tensor) -> Tensor:
        """[n, 76, 32] scaled log-mel windows -> [n, 96]."""
        return self.layers(windows.unsqueeze(1)).flatten(1)


class SpeechEmbedding(nn.Module):
    """Front end (`log_mel`, frozen buffers) plus encoder (`embed`, trainable parameters)."""

    def __init__(self, front_end: LogMel, encoder: EmbeddingNet):
        super().__init__()
        self.front_end = front_end
        self.encoder = encoder

    def log_mel(self, wave: Tensor) -> Tensor:
        """= melspectrogram.onnx with a per-clip floor: [batch, samples] int16-range audio ->
        [batch, frames, 32] dB, without openWakeWord's / 10 + 2."""
        return self.front_end(wave)

    def embed(self, windows: Tensor) -> Tensor:
        """= embedding_model.onnx: [n, 76, 32] windows of `scale_log_mel` output -> [n, 96]."""
        return self.encoder(windows)

    def forward(self, wave: Tensor) -> Tensor:
        """[batch, samples] float audio in [-1, 1] at 16 kHz -> [batch, windows, 96], one
        embedding per 76 frames every 8 (openWakeWord's windows; a trailing partial window is
        dropped). Needs at least 12512 samples (76 frames)."""
        mel = scale_log_mel(self.log_mel(wave * INT16_SCALE))
        windows = mel.unfold(1, WINDOW_FRAMES, WINDOW_STEP).transpose(2, 3)  # [b, w, 76, 32]
        batch, count = windows.shape[:2]
        return self.embed(windows.reshape(-1, WINDOW_FRAMES, MEL_BANDS)).reshape(batch, count, -1)


def fetch_onnx(cache_dir: str | Path | None = None) -> tuple[bytes, bytes]:
    """(melspectrogram.onnx, embedding_model.onnx) bytes from the openwakeword 0.5.1 wheel,
    downloaded once from PyPI with pip into `cache_dir` (default ~/.cache/voxclass) and checked
    against its sha256, so a changed or corrupt download fails here instead of in the numbers."""
    cache = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "voxclass"
    wheel = cache / WHEEL_FILE
    if not wheel.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "-q",
                WHEEL,
                "-d",
                str(cache),
            ],
            check=True,
        )
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise ValueError(f"{wheel}: sha256 {digest}, expected {WHEEL_SHA256}; delete it to refetch")
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(MEL_MEMBER), archive.read(EMBEDDING_MEMBER)


def _expect(what: str, found: object, wanted: object) -> None:
    """Raise (not assert: must survive -O) when the graph is not the one this port mirrors."""
    if found != wanted:
        raise ValueError(f"unexpected ONNX graph: {what} is {found!r}, expected {wanted!r}")


def _graph(source: str | Path | bytes):
    """(nodes, constants by name: initializers and Constant nodes as numpy arrays)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(io.BytesIO(source) if isinstance(source, bytes) else str(source))
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return list(model.graph.node), constants


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _front_end_from_onnx(source: str | Path | bytes) -> LogMel:
    """Read the DFT and mel weights and the hop, floor and top-dB constants, checking the ops
    between them are the ones `LogMel.forward` performs."""
    nodes, constants = _graph(source)
    by_type: dict[str, list] = {}
    for node in nodes:
        by_type.setdefault(node.op_type, []).append(node)
    real_conv, imag_conv = by_type["Conv"]
    for conv in (real_conv, imag_conv):
        attrs = _attributes(conv)
        _expect("front-end conv pads", list(attrs.get("pads", [0, 0])), [0, 0])
        _expect("front-end conv dilation/group", (attrs["dilations"], attrs["group"]), ([1], 1))
        _expect("front-end conv strides", attrs["strides"], _attributes(real_conv)["strides"])
    _expect("power exponents", [float(constants[n.input[1]]) for n in by_type["Pow"]], [2.0, 2.0])
    _expect("dB scale", float(constants[by_type["Mul"][0].input[1]]), 10.0)
    _expect("ln 10", float(constants[by_type["Div"][0].input[1]]), float(np.float32(2.3025851)))
    first_clip, floor_clip = by_type["Clip"]
    _expect("log floor ceiling", float(constants[first_clip.input[2]]), float("inf"))
    reduce_max = by_type["ReduceMax"][0]
    # no axes: the maximum is over the whole batch (LogMel takes it per clip instead)
    _expect("ReduceMax axes", _attributes(reduce_max).get("axes"), None)
    subtract = next(n for n in by_type["Sub"] if n.input[0] == reduce_max.output[0])
    offset = next(n for n in by_type["Sub"] if n.output[0] == reduce_max.input[0])
    _expect("dB offset", float(constants[offset.input[1]]), 0.0)
    _expect("top-dB clip input", floor_clip.input[0], reduce_max.input[0])
    return LogMel(
        dft_real=torch.tensor(constants[real_conv.input[1]]),
        dft_imag=torch.tensor(constants[imag_conv.input[1]]),
        mel_matrix=torch.tensor(constants[by_type["MatMul"][0].input[1]]),
        hop=int(_attributes(real_conv)["strides"][0]),
        floor=float(constants[first_clip.input[1]]),
        top_db=float(constants[subtract.input[1]]),
    )


def _encoder_from_onnx(source: str | Path | bytes) -> EmbeddingNet:
    """Copy the 20 conv weights (and biases) in graph order into `EmbeddingNet`, checking every
    kernel, padding, activation constant and pool window against the torch layers."""
    nodes, constants = _graph(source)
    encoder = EmbeddingNet()
    convs = [m for m in encoder.layers if isinstance(m, nn.Conv2d)]
    pools = [m for m in encoder.layers if isinstance(m, nn.MaxPool2d)]
    onnx_convs = [n for n in nodes if n.op_type == "Conv"]
    onnx_pools = [n for n in nodes if n.op_type == "MaxPool"]
    _expect("conv count", len(onnx_convs), len(convs))
    _expect("pool count", len(onnx_pools), len(pools))
    for node, conv in zip(onnx_convs, convs, strict=True):
        attrs = _attributes(node)
        pad_h, pad_w = conv.padding
        _expect(
            f"{node.name} pads", list(attrs.get("pads", [0, 0, 0, 0])), [pad_h, pad_w, pad_h, pad_w]
        )
        _expect(
            f"{node.name} strides/dilations/group",
            (attrs.get("strides"), attrs.get("dilations"), attrs.get("group", 1)),
            ([1, 1], [1, 1], 1),
        )
        weight = constants[node.input[1]]
        _expect(f"{node.name} weight shape", tuple(weight.shape), tuple(conv.weight.shape))
        _expect(f"{node.name} has bias", len(node.input) == 3, conv.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor(weight))
            if conv.bias is not None:
                conv.bias.copy_(torch.tensor(constants[node.input[2]]))
    for node, pool in zip(onnx_pools, pools, strict=True):
        attrs = _attributes(node)
        window = list(pool.kernel_size)
        _expect(f"{node.name} window", (attrs["kernel_shape"], attrs["strides"]), (window, window))
        _expect(f"{node.name} pads", list(attrs.get("pads", [0, 0, 0, 0])), [0, 0, 0, 0])
    activations = [m for m in encoder.layers if isinstance(m, ClippedLeakyReLU)]
    slopes = [_attributes(n)["alpha"] for n in nodes if n.op_type == "LeakyRelu"]
    lowers = [constants[n.input[1]].item() for n in nodes if n.op_type == "Max"]
    _expect("LeakyRelu alphas", [float(np.float32(a.slope)) for a in activations], slopes)
    _expect("Max constants", [float(np.float32(a.lower)) for a in activations], lowers)
    return encoder


def from_onnx(melspectrogram: str | Path | bytes, embedding: str | Path | bytes) -> SpeechEmbedding:
    """A `SpeechEmbedding` with the weights of openWakeWord's two graphs (paths or bytes, e.g.
    from `fetch_onnx`). Raises ValueError if a graph differs from the structure ported here."""
    return SpeechEmbedding(_front_end_from_onnx(melspectrogram), _encoder_from_onnx(embedding))
