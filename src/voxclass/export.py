"""Export a trained model to ONNX (optionally int8) and check it against torch before keeping it.

The exported directory is self-contained: `model.onnx`, the feature extractor config and
`config.json` (labels, voxclass settings), plus `export.json` with the parity figures.
`Classifier.load(DIR)` sees `model.onnx` and runs it with onnxruntime (`runtime.OnnxBackend`),
which needs no torch: a deployment can `pip install voxclass` without the `train` extra.

int8 is dynamic by default (MatMul weights only, see `quantize_dynamic_int8`); with calibration
clips it is static (`quantize_static_int8`): convolutions too, activation scales fixed from the
user's audio.
Static int8 that misses --min-agreement on the held-out clips gives up precision step by step
(`INT8_FORMS`: convolutions back to fp32, then dynamic int8) before the export is refused.

Graph: the TorchScript exporter (`dynamo=False`) with `dynamic_axes` on batch and time; see
`_export_graph` for why not the dynamo one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import extractors
from .audio import load_many
from .config import publish_folder, recover_interrupted_write, staging_folder
from .data import DataError, iter_inputs
from .features import extract_one, min_samples, pad_batch
from .model import ModelError, load_trained, max_seconds_of, require_torch
from .runtime import ONNX_FILE, Backend, OnnxBackend, TorchBackend, sampling_rate_of

OPSET = 17


@dataclass
class ExportConfig:
    """What `voxclass export` writes."""

    model: str
    """Trained model directory (any transformers audio-classification one)."""
    out: Path
    """New folder for model.onnx, config and extractor."""
    int8: bool = False
    """int8 quantization, checked for top-1 agreement with torch: dynamic (MatMul weights)
    unless --calibrate is given."""
    calibrate: str | None = None
    """Folder or manifest of your clips: static int8 of the convolutions too, activation scales
    set from these clips (needs --int8); a quarter of them are held out for the check. Below
    --min-agreement there, the convolutions go back to fp32, then int8 falls back to dynamic."""
    calibration_clips: int = 200
    """At most this many clips from --calibrate (an even random sample, seeded)."""
    min_agreement: float = 0.9
    """The int8 export is kept only if it picks torch's top label on at least this share of
    the clips it is checked on (e.g. 0.99 to keep nearly every answer)."""


@dataclass
class ExportReport:
    path: str
    int8: bool
    form: str
    """What the graph is: "fp32", or one of the int8 forms of `INT8_FORMS`."""
    clips: int
    """Clips the torch and ONNX models were compared on."""
    max_abs_diff: float
    """Largest absolute logit difference, torch vs onnxruntime."""
    agreement: float
    """Fraction of clips where both pick the same top label."""
    size_bytes: int
    """Size of model.onnx."""
    checked_on: str = "synthetic clips"
    """Where the compared clips came from."""
    calibration: dict[str, Any] | None = None
    """With --calibrate: the clips and method the activation scales came from, what the kept
    form left in fp32, and the agreement of each form tried before it (`tried`)."""
    flipped_margin: float | None = None
    """Largest torch top-1 margin (logit gap to its second label) among the clips the export
    answers otherwise; None when it agrees on every clip. A small one means int8 rounding
    flipped near-ties, not answers the model was sure of."""


def validation_clips(sampling_rate: int, max_seconds: float) -> list[np.ndarray]:
    """Deterministic speech-like clips (harmonic tones with onsets, in noise) of 1 s up to the
    model's max duration, used when the caller gives no real clips."""
    rng = np.random.default_rng(0)
    clips = []
    for seconds in np.linspace(1.0, max(1.0, min(max_seconds, 9.0)), 8):
        t = np.arange(int(seconds * sampling_rate)) / sampling_rate
        pitch = rng.uniform(100, 250)
        wave = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 6))
        envelope = (np.sin(2 * np.pi * rng.uniform(2, 5) * t) > 0).astype(np.float32)
        noise = 0.05 * rng.standard_normal(t.size)
        clips.append((0.3 * wave * envelope + noise).astype(np.float32))
    return clips


def _export_graph(model: Any, example: dict[str, Any], path: Path) -> None:
    """Trace the model's forward on `example` into an ONNX file with dynamic batch and time.

    The dynamo exporter (`dynamo=True`, `dynamic_shapes` on batch and time) was tried first
    (torch 2.13): `torch.export` itself fails (TorchExportError, step 1/3) on both the
    Wav2Vec2-BERT and the wav2vec2 presets. The TorchScript exporter with `dynamic_axes` keeps
    both axes symbolic and matches torch to ~1e-6 on every architecture tested (Wav2Vec2-BERT,
    wav2vec2, AST), on batches of 1-7 clips of 1-9 s.
    """
    import torch

    names = list(example)

    class Logits(torch.nn.Module):
        """Positional inputs in, logits out: the signature ONNX needs."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, tensors, strict=True))).logits

    axes = {name: {0: "batch", 1: "time"} for name in names}
    with torch.inference_mode():
        torch.onnx.export(
            Logits().eval(),  # the exporter restores the wrapper's mode afterwards: keep eval
            tuple(example[n] for n in names),
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes={**axes, "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


def top1_margins(scores: np.ndarray) -> np.ndarray:
    """Each row's gap between its best and second-best score (give logits or log-probabilities):
    how far a perturbation of the model, such as int8 rounding, has to move the scores to change
    the answer."""
    best_two = np.sort(scores, axis=1)[:, -2:]
    return best_two[:, -1] - best_two[:, 0]


def _check_batches(
    reference: Backend, clips: list[np.ndarray], rate: int, shortest: int
) -> list[tuple[list[np.ndarray], np.ndarray]]:
    """The clips to check an export on, as batches of up to 4 similar-length clips' features
    with torch's logits on them: computed once, however many forms are checked."""
    order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
    batches = []
    for start in range(0, len(order), 4):
        batch = order[start : start + 4]
        features = [extract_one(reference.extractor, clips[i], rate, shortest) for i in batch]
        batches.append((features, reference.logits(features)))
    return batches


def _compare(
    batches: list[tuple[list[np.ndarray], np.ndarray]], onnx: Backend
) -> tuple[float, float, float | None]:
    """Max abs logit difference and top-1 agreement, torch vs onnxruntime, on `_check_batches`
    (both see the same padded inputs); and the largest torch top-1 margin among the clips they
    answer differently (None: none)."""
    diff, same, checked, flipped = 0.0, 0, 0, []
    for features, expected in batches:
        got = onnx.logits(features)
        diff = max(diff, float(np.abs(expected - got).max()))
        agrees = expected.argmax(1) == got.argmax(1)
        same += int(agrees.sum())
        checked += len(features)
        flipped.extend(top1_margins(expected)[~agrees].tolist())
    return diff, same / checked, max(flipped, default=None)


def calibration_clips(
    data: str | Path, rate: int, max_seconds: float, limit: int = 200
) -> tuple[list[np.ndarray], int]:
    """Up to `limit` decodable clips of a folder or manifest (`data.iter_inputs`), an even
    random sample (reservoir, seed 0) in listing order, at `rate`, each cut to its first
    `max_seconds`; and how many files were listed. DataError naming `data` when it lists no
    audio or none of the sampled files decodes."""
    if limit < 1:
        raise DataError(f"--calibration-clips {limit}: give at least 1 clip")
    rng = np.random.default_rng(0)
    chosen: list[tuple[int, str]] = []
    listed = 0
    for index, path in enumerate(iter_inputs([str(data)])):
        listed += 1
        if len(chosen) < limit:
            chosen.append((index, path))
        elif (slot := int(rng.integers(0, index + 1))) < limit:
            chosen[slot] = (index, path)
    paths = [path for _, path in sorted(chosen)]
    waves, errors = load_many(paths, rate)
    if not waves:
        first = next(iter(errors.values()), None)
        raise DataError(
            f"{data}: none of its {len(paths)} sampled audio files decodes ({first}); give "
            "--calibrate a folder or manifest of clips like the ones the model will hear"
        )
    size = int(max_seconds * rate)
    return [wave[:size] for wave in waves.values()], listed


def export(
    model_dir: str | Path,
    out: str | Path,
    int8: bool = False,
    clips: list[np.ndarray] | None = None,
    max_diff: float = 1e-3,
    min_agreement: float = 0.9,
    calibrate: str | Path | None = None,
    calibration_limit: int = 200,
) -> ExportReport:
    """Export `model_dir` (any transformers audio-classification dir) to ONNX in `out`.

    `clips`: mono float32 waves at the model's rate to validate on (default: synthetic ones).
    `calibrate` (with `int8`): a folder or manifest of real clips; up to `calibration_limit`
    are read, three quarters set the static int8 scales and the rest are added to the clips
    validated on (then the only ones, unless `clips` is given).
    fp32 must match torch within `max_diff` on every logit; int8 must agree on the top label for
    at least `min_agreement` of the clips. On failure nothing is left in `out` (ModelError).
    """
    require_torch("exporting to ONNX")
    if not 0.0 <= min_agreement <= 1.0:
        raise ModelError(f"--min-agreement {min_agreement}: give a share from 0 to 1 (e.g. 0.99)")
    if calibrate is not None and not int8:
        raise ModelError(f"--calibrate {calibrate}: calibration is for int8; add --int8")
    out = Path(out)
    recover_interrupted_write(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise ModelError(f"{out}: already exists and is not an empty folder; choose another --out")
    model, extractor = load_trained(model_dir)
    reference = TorchBackend(model, extractor)
    rate = sampling_rate_of(model.config, extractor)  # the rate and padding inference uses
    shortest = min_samples(extractor, model.config, rate)
    checked_on = "given clips" if clips else "synthetic clips"
    calibration, calibration_info = None, None
    if calibrate is not None:
        real, listed = calibration_clips(
            calibrate, rate, max_seconds_of(model.config), calibration_limit
        )
        if len(real) >= 4:  # every fourth clip is held out to check on
            held_out = real[3::4]
            calibration = [c for i, c in enumerate(real) if i % 4 != 3]
            where = f"{len(held_out)} clips of {calibrate} not used to calibrate"
        else:  # too few to hold any out: checked on the calibration clips themselves
            held_out, calibration = real, real
            where = f"the {len(real)} calibration clips of {calibrate}"
        checked_on = where + (" and the given clips" if clips else "")
        clips = (clips or []) + held_out
        calibration_info = {
            "data": str(calibrate),
            "files_listed": listed,
            "clips": len(calibration),
            **STATIC_SETTINGS,
        }
    clips = clips or validation_clips(rate, max_seconds_of(model.config))

    tmp = staging_folder(out)
    try:
        graph = tmp / ONNX_FILE
        _export_graph(model, pad_example(extractor, rate), graph)
        extractor.save_pretrained(tmp)
        model.config.save_pretrained(tmp)
        extractors.save(extractor, tmp, clips)
        forms: dict[str, list[str] | None] = {"fp32": None}
        if int8:
            fp32 = graph.rename(tmp / "model.fp32.onnx")
            forms = int8_forms(fp32, calibrated=calibration is not None)
        if calibration is not None:
            runner = OnnxBackend(fp32, model.config, extractor)
            feeds = [runner.feed([extract_one(extractor, c, rate, shortest)]) for c in calibration]
            del runner
        batches = _check_batches(reference, clips, rate, shortest)
        tried: list[dict[str, Any]] = []
        for form, kept in forms.items():
            if form == "dynamic int8":
                quantize_dynamic_int8(fp32, graph)
            elif kept is not None:
                quantize_static_int8(fp32, graph, feeds, kept)
            # dynamic int8 sets its scales per run: one clip per run, as it will be loaded
            onnx = OnnxBackend(graph, model.config, extractor, per_clip=form == "dynamic int8")
            diff, agreement, flipped_margin = _compare(batches, onnx)
            tried.append({"form": form, "agreement": agreement})
            if agreement >= min_agreement:
                break
        if int8:
            fp32.unlink()
        if calibration_info is not None:
            calibration_info.update(kept_float=INT8_FORMS[form], tried=tried[:-1])
        report = ExportReport(
            str(out),
            int8,
            form,
            len(clips),
            diff,
            agreement,
            graph.stat().st_size,
            checked_on,
            calibration_info,
            flipped_margin,
        )
        if (not int8 and diff > max_diff) or agreement < min_agreement:
            raise ModelError(
                f"{model_dir}: the ONNX {form} export does not match torch (max logit diff "
                f"{diff:.2e}, top-1 agreement {agreement:.1%} on {len(clips)} clips"
                f"{check_note(report)}; "
                f"limits {max_diff:g} fp32 / {min_agreement:.0%}); nothing written to {out}"
            )
        (tmp / "export.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
        publish_folder(tmp, out)
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_note(report: ExportReport) -> str:
    """What the check found beyond the agreement, for a message: ", torch's margin on those it
    answers otherwise at most N logits" (unless it agrees on all) and, when calibrated int8
    tried other forms first, "; before it: static int8 97.5%, ..." (their agreement)."""
    note = ""
    if report.flipped_margin is not None:
        margin = report.flipped_margin
        note = f", torch's margin on those it answers otherwise at most {margin:.3f} logits"
    tried = (report.calibration or {}).get("tried")
    if tried:
        note += "; before it: " + ", ".join(f"{t['form']} {t['agreement']:.1%}" for t in tried)
    return note


def held_out_note(report: ExportReport, min_agreement: float) -> str:
    """A note when a calibrated export's check had too few clips to show `min_agreement` (below
    100 %, which no number of clips can show), else "". By the rule of three, no flip among n
    clips still allows a flip rate of 3/n (95 % confidence): showing 99 % takes 300 clips, and
    the default 200 hold out 50."""
    if report.calibration is None or not 3 / report.clips > 1 - min_agreement > 0:
        return ""
    needed = int(np.ceil(3 / (1 - min_agreement)))
    return (
        f"note: {report.clips} held-out clips cannot show {min_agreement:.0%} agreement (with no "
        f"flip among them, up to {3 / report.clips:.0%} of answers may still flip); "
        f"--calibration-clips {4 * needed} holds out {needed}"
    )


def pad_example(extractor: Any, rate: int) -> dict[str, Any]:
    """A two-clip batch of different lengths to trace with (so padding paths are traced)."""
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(int(s * rate)).astype(np.float32) for s in (1.0, 2.0)]
    return pad_batch(extractor, [extract_one(extractor, w, rate) for w in waves])


def quantize_dynamic_int8(fp32: Path, path: Path) -> None:
    """Dynamic int8 quantization of the matrix multiplications' weights, one scale per output
    channel (activations stay float, quantized per batch). Convolutions stay fp32: onnxruntime's
    integer convolution (ConvInteger) made a wav2vec2-base-sized model 1.7x slower than fp32,
    and one scale per tensor flipped 3.5 % of a trained tiny model's top-1 answers."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32),
        str(path),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm"],
    )


STATIC_SETTINGS: dict[str, Any] = {
    "method": "MinMax",
    "format": "QDQ",
    "ops": ["Conv", "MatMul", "Gemm"],
    "per_channel": True,
    "activations": "uint8",
    "weights": "int8",
}
"""What `quantize_static_int8` does, recorded in export.json."""

INT8_FORMS: dict[str, list[str]] = {
    "static int8": ["convolutions over one input channel (a raw waveform)", "classification head"],
    "static int8 with fp32 convolutions": [
        "every ungrouped convolution (a wav2vec2 feature encoder's)",
        "classification head",
    ],
    "dynamic int8": ["every convolution"],
}
"""The int8 forms of an export with calibration clips and what each keeps in fp32 (dynamic
int8 quantizes the matmuls' activations per run, not from the clips). They are tried in this
order, which is their speed's on a wav2vec2-base-sized model (on a small one dynamic int8 can
be the fastest), until one agrees with torch on --min-agreement of the held-out clips.
The convolutions come back first: on a wav2vec2-base-sized model they are where static int8
loses answers (its feature encoder's large convolutions, whose uint8 inputs round away what
separates close scores)."""


def int8_forms(fp32: Path, calibrated: bool) -> dict[str, list[str] | None]:
    """The int8 forms of `INT8_FORMS` to try on the graph `fp32`, in turn, each with the nodes
    static int8 keeps in fp32 (None: dynamic int8, the only one without calibration). A form
    that would keep the same nodes as the one before is skipped."""
    if not calibrated:
        return {"dynamic int8": None}
    import onnx

    graph = onnx.load(fp32).graph
    forms: dict[str, list[str] | None] = {"static int8": kept_float(graph)}
    with_convolutions = kept_float(graph, convolutions=True)
    if with_convolutions != forms["static int8"]:
        forms["static int8 with fp32 convolutions"] = with_convolutions
    forms["dynamic int8"] = None
    return forms


HEAD_MODULES = ("projector", "classifier")
"""transformers' names for the layers of an audio classification head (wav2vec2, HuBERT,
WavLM, Wav2Vec2-BERT, Whisper...), as they appear in the exported graph's node names."""


def kept_float(graph: Any, convolutions: bool = False) -> list[str]:
    """Nodes of an ONNX graph that static int8 leaves in fp32: convolutions over one input
    channel, not grouped (a wav2vec2-family model's raw waveform, also AST's spectrogram
    patches), whose input one uint8 scale covers badly from silence to a shout, and the
    classification head, whose few narrow activations decide between close scores. Both are a
    sliver of the compute. With `convolutions`, every ungrouped convolution: a wav2vec2-family
    feature encoder's, not its grouped positional one, which costs little agreement in int8
    and much time in fp32."""
    weights = {init.name: init for init in graph.initializer}
    kept = []
    for node in graph.node:
        if node.op_type == "Conv" and node.input[1] in weights:
            groups = next((a.i for a in node.attribute if a.name == "group"), 1)
            if groups == 1 and (convolutions or weights[node.input[1]].dims[1] == 1):
                kept.append(node.name)
        elif node.op_type in ("MatMul", "Gemm") and set(node.name.split("/")) & set(HEAD_MODULES):
            kept.append(node.name)
    return kept


def quantize_static_int8(
    fp32: Path, path: Path, feeds: list[dict[str, np.ndarray]], kept: list[str]
) -> None:
    """Static int8 in QDQ form of the graph `fp32`, written to `path`: its convolutions and
    matrix multiplications but the nodes `kept` (from `kept_float`), weights one scale per
    output channel, activations one scale each from the min and max seen on `feeds` (one clip
    each, so no padding enters the ranges). onnxruntime fuses the quantize/dequantize pairs
    into integer kernels (QLinearConv, QLinearMatMul). uint8 activations with int8 weights:
    onnxruntime's advice for x86 CPUs."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self.rest = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.rest, None)

    quantize_static(
        str(fp32),
        str(path),
        Feeds(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=STATIC_SETTINGS["ops"],
        nodes_to_exclude=kept,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
