"""Google's `speech_embedding` weights, read from the ONNX graphs that openWakeWord (Apache-2.0)
ships in its 0.5.1 wheel on PyPI, into the PyTorch port in `speech_embedding`.

`fetch_onnx` gets the two graphs from the pinned wheel (one `pip download`, cached, checked by
hash); `from_onnx` checks that each graph has the structure the port mirrors (kernels, paddings,
activation constants, pools, front-end constants) and copies its weights. Later openWakeWord
releases fetch the files from GitHub instead of shipping them, so the version stays pinned.
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
from torch import nn

from .speech_embedding import (
    HOP,
    LOG_FLOOR,
    TOP_DB,
    ClippedLeakyReLU,
    EmbeddingNet,
    LogMel,
    SpeechEmbedding,
)

WHEEL = "openwakeword==0.5.1"
WHEEL_FILE = "openwakeword-0.5.1-py3-none-any.whl"
WHEEL_SHA256 = "015467e49f08b0ef8efa433690ce70566abb72f7c36501a6fa893762b4ddc559"
MEL_MEMBER = "openwakeword/resources/models/melspectrogram.onnx"
EMBEDDING_MEMBER = "openwakeword/resources/models/embedding_model.onnx"
CACHE = Path.home() / ".cache" / "voxclass"


def fetch_onnx(cache_dir: str | Path | None = None) -> tuple[bytes, bytes]:
    """(melspectrogram.onnx, embedding_model.onnx) bytes from the openwakeword 0.5.1 wheel,
    downloaded once from PyPI with pip into `cache_dir` and checked against its sha256, so a
    changed or corrupt download fails here instead of in the numbers. OSError (one line, with
    the fix) when it cannot be downloaded or is not the pinned wheel."""
    cache = Path(cache_dir or CACHE)
    wheel = cache / WHEEL_FILE
    if not wheel.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--disable-pip-version-check", "-q", WHEEL, "-d", str(cache)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not wheel.is_file():
            last = (done.stderr.strip().splitlines() or ["no wheel written"])[-1][:200]
            raise OSError(
                f"cannot fetch {WHEEL} from PyPI ({last}); where PyPI is reachable, run "
                f"`pip download --no-deps {WHEEL} -d {cache}`"
            )
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise OSError(f"{wheel}: sha256 {digest}, not the pinned wheel's; delete it to refetch")
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
    _expect("hop", int(_attributes(real_conv)["strides"][0]), HOP)
    _expect("log floor", float(constants[first_clip.input[1]]), float(np.float32(LOG_FLOOR)))
    _expect("top dB", float(constants[subtract.input[1]]), TOP_DB)
    front_end = LogMel()
    dft = np.concatenate([constants[real_conv.input[1]], constants[imag_conv.input[1]]])
    mel_matrix = constants[by_type["MatMul"][0].input[1]]
    _expect("DFT shape", tuple(dft.shape), tuple(front_end.dft.shape))
    _expect("mel matrix shape", tuple(mel_matrix.shape), tuple(front_end.mel_matrix.shape))
    front_end.dft.copy_(torch.tensor(dft))
    front_end.mel_matrix.copy_(torch.tensor(mel_matrix))
    return front_end


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
    from `fetch_onnx`). ValueError if a graph differs from the structure ported here."""
    model = SpeechEmbedding()
    model.front_end = _front_end_from_onnx(melspectrogram)
    model.encoder = _encoder_from_onnx(embedding)
    return model
