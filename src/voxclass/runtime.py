"""Running a model: the torch and onnxruntime backends behind one `logits(features)`.

`Classifier` and the export's torch-vs-ONNX check both score through a `Backend`, so neither
needs the other. Loading an exported directory (model.onnx) imports neither torch nor
transformers when its feature extractor was saved in numpy form (`extractors`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from . import extractors
from .config import ConfigError
from .features import pad_batch
from .model import ModelError, labels_hint, load_trained

ONNX_FILE = "model.onnx"
ORT_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


class Backend(Protocol):
    """A loaded model: per-clip features in (from `features.extract_one` with `extractor`),
    one row of logits per clip out. Padding to the batch's longest happens inside, as torch
    inference does it."""

    name: str
    """"torch" or "onnx"."""
    config: Any
    """The model's config: id2label, num_labels, problem_type, voxclass settings."""
    extractor: Any
    """The feature extractor the features come from (and that pads them)."""
    device: str

    def logits(self, features: list[np.ndarray]) -> np.ndarray: ...


class TorchBackend:
    """A transformers audio-classification model on a torch device. A wav2vec2 model saved
    without attention masks is given them (`exact_batches.mask_padding`, which changes `model`
    and `extractor` in place), so clips of any lengths share its batches."""

    name = "torch"

    def __init__(self, model: Any, extractor: Any):
        from .exact_batches import mask_padding

        mask_padding(model, extractor)
        self.model = model
        self.config = model.config
        self.extractor = extractor

    @property
    def device(self) -> str:
        return str(self.model.device)

    def logits(self, features: list[np.ndarray]) -> np.ndarray:
        import torch

        inputs = pad_batch(self.extractor, features)
        inputs = {name: tensor.to(self.model.device) for name, tensor in inputs.items()}
        with torch.inference_mode():
            return self.model(**inputs).logits.float().cpu().numpy()


class OnnxBackend:
    """An exported graph run by onnxruntime on the CPU. No torch needed. `per_clip`: run each
    clip alone, for dynamic int8 graphs (see `is_dynamic_int8`). `threads`: onnxruntime's
    intra-op threads (None: its default, one per physical core)."""

    name = "onnx"
    device = "cpu"

    def __init__(self, graph: str | Path, config: Any, extractor: Any, per_clip: bool = False,
                 threads: int | None = None):  # fmt: skip
        import onnxruntime as ort

        self.config = config
        self.extractor = extractor
        self.per_clip = per_clip
        options = ort.SessionOptions()
        # Idle pool threads spin by default, taking cycles from the calling thread, which
        # decodes and extracts the next clips between runs, and from any other process on the
        # machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(graph), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own types (InvalidProtobuf, Fail...)
            first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise ModelError(
                f"{graph}: not a usable ONNX graph ({first}); export it again with "
                "`voxclass export`"
            ) from None
        self.inputs = {i.name: ORT_TYPES[i.type] for i in self.session.get_inputs()}
        width = self.session.get_outputs()[0].shape[-1]
        if isinstance(width, int) and width != config.num_labels:
            raise ModelError(
                f"{Path(graph).parent}: the graph scores {width} labels but config.json names "
                f"{config.num_labels}"
                + (labels_hint(Path(graph).parent, width) or "; export it again")
            )

    def feed(self, features: list[np.ndarray]) -> dict[str, np.ndarray]:
        """The graph's inputs for a batch: padded to the longest, in the types it declares."""
        padded = pad_batch(self.extractor, features, return_tensors="np")
        return {key: np.asarray(padded[key], dtype=kind) for key, kind in self.inputs.items()}

    def logits(self, features: list[np.ndarray]) -> np.ndarray:
        if self.per_clip:
            runs = [self.session.run(["logits"], self.feed([f]))[0] for f in features]
            return np.concatenate(runs)
        return self.session.run(["logits"], self.feed(features))[0]


def is_dynamic_int8(path: Path) -> bool:
    """Whether an exported directory holds a dynamic int8 graph (its `export.json`). Dynamic
    int8 quantizes a batch's activations with one scale for the whole batch, so a clip's scores
    would depend on the clips beside it; run alone, each clip gets its own, as with torch."""
    try:
        report = json.loads((path / "export.json").read_text())
    except (OSError, ValueError):
        return False
    if "form" in report:
        return report["form"] == "dynamic int8"
    return bool(report.get("int8")) and not report.get("calibration")  # written before `form`


def thread_budget() -> int | None:
    """The threads this process may use, from `OMP_NUM_THREADS` (which torch obeys by itself
    and onnxruntime does not; Ray sets it in each actor to the actor's CPU share), or None."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def load_onnx(path: Path) -> OnnxBackend:
    """An exported directory: its graph and the feature extractor saved beside it, in numpy
    (`extractors`) when the export checked that it matches, else through transformers. The
    session uses `thread_budget()` threads when set."""
    dynamic, threads = is_dynamic_int8(path), thread_budget()
    if (plain := extractors.load(path)) is not None:
        config, extractor = plain
        return OnnxBackend(path / ONNX_FILE, config, extractor, dynamic, threads)
    from transformers import AutoConfig, AutoFeatureExtractor

    try:
        config, extractor = (
            AutoConfig.from_pretrained(path),
            AutoFeatureExtractor.from_pretrained(path),
        )
    except (OSError, ValueError) as err:
        raise ModelError(f"{path}: cannot load the exported model ({err})") from None
    return OnnxBackend(path / ONNX_FILE, config, extractor, dynamic, threads)


def load_backend(path: str | Path, device: str = "cpu") -> Backend:
    """A model directory: an exported one (model.onnx) on onnxruntime on the CPU, else torch on
    `device` ("cpu", "cuda", "cuda:1", ...)."""
    if (Path(path).expanduser() / ONNX_FILE).is_file():
        if device != "cpu":
            raise ConfigError(
                f"{path}: an ONNX export runs on the CPU; give device 'cpu', or the torch "
                "model directory it was exported from to run on a GPU"
            )
        return load_onnx(Path(path).expanduser())
    model, extractor = load_trained(path)
    if device != "cpu":
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device}: torch sees no CUDA GPU here; use 'cpu'")
        model.to(device)
    return TorchBackend(model, extractor)


def sampling_rate_of(config: Any, extractor: Any) -> int:
    """The rate the model listens at: the voxclass setting saved at training, else the
    extractor's."""
    return int(getattr(config, "voxclass", {}).get("sampling_rate", extractor.sampling_rate))
