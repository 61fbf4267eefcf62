"""Inference speed: the seed's `transformers.pipeline` (one clip at a time) vs voxclass batched
inference on torch, ONNX fp32 and ONNX int8. Same model, same clips, one run; prints a table.

Clips are concatenations of real FSDD digits, 1-10 s long. Throughput is clips/s over all
clips (voxclass batches clips of similar length): the median of `--rounds` passes that take the
backends in turn, so a slow spell of the machine hits every backend. Latency is one clip per
call, on the first `--latency-clips` clips. Agreement is top-1 agreement with voxclass torch;
below the table, the torch model's top-1 margins (logit gap between its two best labels) and
those of the clips each backend answers otherwise: int8 rounding flips near-ties first, so a
weak model with small margins disagrees more than a confident one.

    python benchmarks/inference.py [--model DIR] [--model-size tiny|base] [--clips 200] [--rounds 3]
    python benchmarks/inference.py --model demo/model --rounds 3     # the README's demo table
    python benchmarks/inference.py --model-size base --rounds 2       # the README's base table
    python benchmarks/inference.py --model DIR --calibrate DATA  # + a static int8 row
    python benchmarks/inference.py --model-size base-ln --save-fresh DIR  # to train, then --model
    python benchmarks/inference.py --model DIR --speaker theo --clips 250  # single digits
    python benchmarks/inference.py --model DIR --clips-from DATA --clips 400  # your own clips

`--calibrate DATA` (a folder or manifest of clips) adds static int8 calibrated on DATA
(`voxclass export --int8 --calibrate DATA`) beside the default dynamic int8; with
`--min-agreement 0.99` that row is the form the export keeps to agree on 99 % of DATA's
held-out clips (static int8, static with fp32 convolutions, or dynamic).

`--quick` (what the test suite runs): 12 clips, 4 for latency, one round.

Without --model a freshly built model with random weights is used (`tiny` preset, or a
wav2vec2-base-sized model from the default `Wav2Vec2Config()` for `--model-size base`).
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModelForAudioClassification,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    pipeline,
)

from voxclass import Classifier
from voxclass.audio import load_audio
from voxclass.data import DataError
from voxclass.export import ExportReport, calibration_clips, check_note, export, top1_margins
from voxclass.model import ModelError, build_model, label_maps

# The recordings live in shared/data/fsdd beside the checkout (a worktree sits one level deeper).
FSDD = next(
    (
        p / "shared" / "data" / "fsdd"
        for p in Path(__file__).resolve().parents
        if (p / "shared" / "data" / "fsdd").is_dir()
    ),
    None,
)
DIGITS = [str(d) for d in range(10)]


CALIBRATED_ROWS = {
    "static int8": "int8 static",
    "static int8 with fp32 convolutions": "int8 static, fp32 conv",
    "dynamic int8": "int8 dynamic (calibrated)",
}
"""Row names of the --calibrate export's forms (`export.INT8_FORMS`)."""


def fresh_model(size: str, path: Path) -> Path:
    torch.manual_seed(0)  # the same random weights on every run, so agreement figures repeat
    if size == "tiny":
        model, extractor = build_model("tiny", DIGITS)
    else:  # wav2vec2-base dimensions (95 M parameters), random weights
        # base-ln: with the layer norms of wav2vec2's large models (a pre-LN transformer, the
        # kind that trains more readily from scratch): what the README's trained base-size
        # model starts from.
        norms = {"do_stable_layer_norm": True, "feat_extract_norm": "layer"}
        config = Wav2Vec2Config(**label_maps(DIGITS), **(norms if size == "base-ln" else {}))
        model = AutoModelForAudioClassification.from_config(config)
        extractor = Wav2Vec2FeatureExtractor(return_attention_mask=False, do_normalize=True)
    model.save_pretrained(path)
    extractor.save_pretrained(path)
    return path


def fsdd_clips(n: int, rate: int, seed: int = 0, speaker: str | None = None) -> list[np.ndarray]:
    """`n` clips of 1-10 s, each a run of random FSDD digit recordings; with `speaker`, `n`
    single recordings of that speaker instead (evenly spread over the digits and takes)."""
    rng = np.random.default_rng(seed)
    files = sorted(FSDD.glob("*/*.wav")) if FSDD else []
    if not files:
        raise SystemExit("no FSDD recordings in shared/data/fsdd beside this checkout")
    if speaker:
        own = [f for f in files if f.stem.split("_")[1] == speaker]
        if not own:
            raise SystemExit(f"--speaker {speaker}: no FSDD recordings of that speaker")
        return [load_audio(f, rate) for f in own[:: max(1, len(own) // n)][:n]]
    clips = []
    for _ in range(n):
        target = int(rng.uniform(1.0, 10.0) * rate)
        parts, length = [], 0
        while length < target:
            wave = load_audio(files[rng.integers(len(files))], rate)
            parts.append(wave)
            length += len(wave)
        clips.append(np.concatenate(parts)[:target])
    return clips


def benchmark_clips(
    n: int, rate: int, max_seconds: float, speaker: str | None, clips_from: Path | None
) -> tuple[list[np.ndarray], str]:
    """The clips to time and compare on, and how the table names them: up to `n` clips of the
    folder or manifest `clips_from`, sampled and cut to the model's `max_seconds` as
    `--calibrate` takes its clips (a missing, empty or undecodable one is a one-line exit);
    else `fsdd_clips`."""
    if clips_from:
        try:
            clips, _ = calibration_clips(clips_from, rate, max_seconds, n)
        except DataError as err:
            raise SystemExit(f"--clips-from {err}") from None
        return clips, f"clips of {clips_from}"
    return fsdd_clips(n, rate, speaker=speaker), f"FSDD {speaker or 'concatenation'} clips"


def calibrated_export(
    model_dir: Path, out: Path, calibrate: Path, min_agreement: float, limit: int
) -> ExportReport:
    """`voxclass export --int8 --calibrate` for the calibrated row; bad data, a bad option or no
    form meeting the bar is a one-line exit with export's message, not a traceback."""
    try:
        return export(
            model_dir,
            out,
            int8=True,
            calibrate=calibrate,
            min_agreement=min_agreement,
            calibration_limit=limit,
        )
    except (DataError, ModelError) as err:
        raise SystemExit(str(err)) from None


def size_mb(path: Path, pattern: str) -> float:
    return sum(p.stat().st_size for p in path.glob(pattern)) / 1e6


def throughput(run_all, clips) -> tuple[float, list]:
    """Clips per second over all clips, and the top-1 predictions."""
    start = time.perf_counter()
    top1 = run_all(clips)
    return len(clips) / (time.perf_counter() - start), list(top1)


def latencies_ms(run_one, clips) -> list[float]:
    """Milliseconds for each clip classified alone."""
    out = []
    for wave in clips:
        start = time.perf_counter()
        run_one(wave)
        out.append(1000 * (time.perf_counter() - start))
    return out


def print_margins(probs: np.ndarray, top1: dict[str, list], reference: str) -> None:
    """Whether the backends disagree with `reference` on near-ties: the reference's top-1
    margins, and for each backend the margins of the clips it answers differently."""
    margins = top1_margins(np.log(np.maximum(probs, 1e-30)))  # a logit gap, from probabilities
    print(
        f"\n{reference} top-1 margin (logit gap to the second label): median "
        f"{np.median(margins):.3f}, {np.mean(margins < 0.1):.1%} of clips under 0.1"
    )
    for name, answers in top1.items():
        flipped = margins[np.asarray(answers) != np.asarray(top1[reference])]
        if len(flipped):
            below = np.mean(margins <= flipped.max())
            print(
                f"{name}: {len(flipped)} clips answered otherwise, at margins "
                f"{flipped.min():.3f}-{flipped.max():.3f} ({below:.1%} of clips are at or under "
                f"{flipped.max():.3f})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="trained model dir (default: fresh model)")
    parser.add_argument("--model-size", choices=["tiny", "base", "base-ln"], default="tiny")
    parser.add_argument(
        "--speaker",
        help="single FSDD recordings of this speaker instead of runs of digits, for a digit "
        "model (agreement on clips like its training clips; e.g. a held-out speaker)",
    )
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--latency-clips", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the clips")
    parser.add_argument("--quick", action="store_true", help="12 clips, 1 round (seconds)")
    parser.add_argument("--calibrate", type=Path, help="clips for a static int8 row")
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=0.0,
        help="for the --calibrate row, as `voxclass export --min-agreement`: the first int8 form "
        "that agrees on this share of the held-out calibration clips (default: static int8)",
    )
    parser.add_argument(
        "--calibration-clips",
        type=int,
        default=200,
        help="as `voxclass export --calibration-clips`: clips sampled from --calibrate, a "
        "quarter of them held out for the export's check",
    )
    parser.add_argument(
        "--clips-from",
        type=Path,
        help="time and compare on up to --clips clips of this folder or manifest (an even "
        "sample, as --calibrate takes its clips) instead of FSDD recordings",
    )
    parser.add_argument(
        "--save-fresh",
        type=Path,
        help="write the fresh --model-size model (random weights, seed 0) here and stop: "
        "a starting point for `voxclass train --model DIR`",
    )
    args = parser.parse_args()
    if args.save_fresh:
        if args.save_fresh.exists():
            raise SystemExit(f"--save-fresh {args.save_fresh}: exists; give a new folder")
        fresh_model(args.model_size, args.save_fresh)
        print(f"fresh {args.model_size} model (random weights, seed 0) in {args.save_fresh}")
        return
    if args.clips_from and args.speaker:
        parser.error("--clips-from and --speaker choose the clips both ways: give one")
    if args.quick:
        args.clips, args.latency_clips, args.rounds = 12, 4, 1

    work = Path(tempfile.mkdtemp(prefix="voxclass-bench-"))

    atexit.register(shutil.rmtree, work, ignore_errors=True)  # models, data: all temporary
    model_dir = args.model or fresh_model(args.model_size, work / "model")
    title = str(args.model) if args.model else f"fresh {args.model_size} model, random weights"
    export(model_dir, work / "fp32")
    export(model_dir, work / "int8", int8=True, min_agreement=0.0)  # the table shows agreement
    onnx_rows = [("fp32", work / "fp32"), ("int8", work / "int8")]
    if args.calibrate:
        static = calibrated_export(
            model_dir, work / "static", args.calibrate, args.min_agreement, args.calibration_clips
        )
        onnx_rows.append((CALIBRATED_ROWS[static.form], work / "static"))
        print(
            f"calibrated on {static.calibration['clips']} clips of {args.calibrate}: "
            f"{static.form}, {static.agreement:.1%} on {static.clips} held-out clips"
            f"{check_note(static)}"
        )

    torch_clf = Classifier.load(model_dir)
    rate = torch_clf.sampling_rate
    clips, described = benchmark_clips(
        args.clips, rate, torch_clf.max_seconds, args.speaker, args.clips_from
    )
    label_ids = {label: i for i, label in enumerate(torch_clf.labels)}

    seed = pipeline("audio-classification", model=str(model_dir), device="cpu")

    def seed_one(wave):
        return label_ids[seed({"raw": wave, "sampling_rate": rate}, top_k=1)[0]["label"]]

    # (name, all clips -> top-1 ids, one clip -> anything, MB of the model on disk)
    torch_mb = size_mb(model_dir, "*.safetensors")
    backends = [("pipeline, 1 clip/call", lambda cs: [seed_one(w) for w in cs], seed_one, torch_mb)]
    for name, clf, mb in [("voxclass torch", torch_clf, torch_mb)] + [
        (f"voxclass onnx {kind}", Classifier.load(path), size_mb(path, "*.onnx"))
        for kind, path in onnx_rows
    ]:
        # A dynamic int8 graph runs each clip alone (its activation scales are per run).
        per_clip = getattr(clf.runtime, "per_clip", False)
        backends.append(
            (
                f"{name}, 1 clip/run" if per_clip else f"{name}, batch {args.batch_size}",
                lambda cs, c=clf: c.probabilities(cs, args.batch_size).argmax(1),
                lambda w, c=clf: c.probabilities([w]),
                mb,
            )
        )

    # Rounds interleave the backends, so a slow spell of a shared machine hits all of them;
    # the table gives each one's median round.
    rates: dict[str, list[float]] = {name: [] for name, *_ in backends}
    top1: dict[str, list] = {}
    for _name, _, run_one, _mb in backends:
        run_one(clips[0])  # warm-up
    for _ in range(args.rounds):
        for name, run_all, _, _mb in backends:
            rate_now, top1[name] = throughput(run_all, clips)
            rates[name].append(rate_now)
    latency = {
        name: latencies_ms(run_one, clips[: args.latency_clips]) or [float("nan")]
        for name, _, run_one, _mb in backends
    }  # --latency-clips 0: no latency columns (nan), for a short run

    seconds = [len(c) / rate for c in clips]
    print(
        f"\n{title}; {len(clips)} {described} of "
        f"{min(seconds):.1f}-{max(seconds):.1f} s (mean {np.mean(seconds):.1f} s) at {rate} Hz; "
        f"clips/s: median of {args.rounds} interleaved rounds; latency over "
        f"{min(args.latency_clips, len(clips))} clips\n"
    )
    header = (
        f"{'':52} {'clips/s':>8} {'min-max':>13} {'x pipe':>7} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'MB':>7} agree"
    )
    print(header)
    print("-" * len(header))
    names = [name for name, *_ in backends]
    median = {name: float(np.median(rates[name])) for name in names}
    reference = np.asarray(top1[names[1]])  # voxclass torch
    for name, *_, mb in backends:
        agree = float((np.asarray(top1[name]) == reference).mean())
        spread = f"{min(rates[name]):.1f}-{max(rates[name]):.1f}"
        print(
            f"{name:52} {median[name]:8.1f} {spread:>13} {median[name] / median[names[0]]:6.1f}x "
            f"{np.percentile(latency[name], 50):8.1f} {np.percentile(latency[name], 95):8.1f} "
            f"{mb:7.1f} {agree:5.1%}"
        )
    if not torch_clf.multi_label:
        print_margins(torch_clf.probabilities(clips, args.batch_size), top1, names[1])


if __name__ == "__main__":
    main()
