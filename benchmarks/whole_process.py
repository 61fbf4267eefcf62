"""A folder of clips classified by whole processes, start-up included: `voxclass predict` on an
int8 ONNX export against a script running stock `transformers.pipeline("audio-classification")`
one clip at a time on the model it was exported from (the tutorial's way). This is what a user
waits for; `inference.py` times the backends inside one process, without start-up.

The two commands run in turn (A B A B ...) `--rounds` times, so a drift of the machine's speed
touches both alike; the table gives each one's median wall time, clips/s and the ratio, and the
top-1 agreement of the two outputs.

    python benchmarks/whole_process.py --model demo/model --clips demo/data/test [--rounds 3]
    python benchmarks/whole_process.py --quick      # a fresh `tiny` preset and 12 clips

The export is made once, before timing (`voxclass export --int8`, not timed). `--quick` (what
the test suite runs) checks that the benchmark runs, not a speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from serve_load import fresh_model

# The tutorial's inference, as a user would write it: stock pipeline, one clip per call, audio
# decoded with soundfile and brought to the model's rate with soxr (pipeline resamples only
# with torchaudio installed). Prints one JSON line per clip: file and top label.
PIPELINE_SCRIPT = """
import json, sys
from pathlib import Path
import soundfile as sf, soxr
from transformers import pipeline
classify = pipeline("audio-classification", model=sys.argv[1], device="cpu")
rate = classify.feature_extractor.sampling_rate
for path in sorted(Path(sys.argv[2]).rglob("*.wav")):
    wave, sr = sf.read(path, dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    if sr != rate:
        wave = soxr.resample(wave, sr, rate)
    top = classify({"raw": wave, "sampling_rate": rate}, top_k=1)[0]
    print(json.dumps({"source": str(path), "label": top["label"]}))
"""


def voxclass(*args: str) -> list[str]:
    return [sys.executable, "-m", "voxclass", *map(str, args)]


def timed(argv: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    run = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv[:4])} ... failed ({run.returncode}): {run.stderr[-2000:]}"
        )
    return seconds, run.stdout


def top_labels(rows: list[dict], key: str) -> dict[str, str]:
    """Top-1 label per clip: `key` is a list of labels (voxclass) or one label (the script)."""
    return {
        str(Path(r["source"]).resolve()): r[key][0] if isinstance(r[key], list) else r[key]
        for r in rows
    }


def quick_setup(root: Path) -> tuple[Path, Path]:
    """A fresh `tiny` preset model and 12 short noise clips (seconds-long smoke run)."""
    model = fresh_model("tiny", root / "model")
    rng = np.random.default_rng(0)
    for i in range(12):
        path = root / "clips" / f"{i:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, (0.1 * rng.standard_normal(8000 + 400 * i)).astype(np.float32), 8000)
    return model, root / "clips"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="trained model directory (torch)")
    parser.add_argument("--clips", type=Path, help="folder of .wav clips to classify")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each command")
    parser.add_argument("--quick", action="store_true", help="fresh tiny model, 12 clips, 1 run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="whole_process_") as tmp:
        root = Path(tmp)
        if args.quick:
            args.model, args.clips = quick_setup(root)
            args.rounds = 1
        if not (args.model and args.clips):
            raise SystemExit("give --model DIR and --clips FOLDER (or --quick)")
        clips = sorted(args.clips.rglob("*.wav"))
        if not clips:
            raise SystemExit(f"{args.clips}: no .wav clips")
        export = root / "int8"
        # A fresh model's random weights give near-tied logits, whose top label int8 may flip:
        # the smoke run checks the commands run, and the full run measures agreement itself.
        check = ["--min-agreement", "0"] if args.quick else []
        timed(voxclass("export", args.model, "--out", export, "--int8", *check))
        commands = {
            "voxclass predict, int8 ONNX export": voxclass(
                "predict", export, args.clips, "--format", "json", "--top-k", "1"
            ),
            "transformers.pipeline, 1 clip/call": [
                sys.executable,
                "-c",
                PIPELINE_SCRIPT,
                str(args.model),
                str(args.clips),
            ],  # fmt: skip
        }
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        outputs: dict[str, str] = {}
        for _ in range(args.rounds):
            for name, argv in commands.items():
                took, outputs[name] = timed(argv)
                seconds[name].append(took)
    ours, theirs = commands
    predicted = top_labels(json.loads(outputs[ours]), "labels")
    reference = top_labels([json.loads(x) for x in outputs[theirs].splitlines()], "label")
    if set(predicted) != set(reference):
        raise SystemExit("the two commands classified different clips")
    agreement = np.mean([predicted[k] == reference[k] for k in reference])
    baseline = statistics.median(seconds[theirs])
    print(f"\n{len(clips)} clips in {args.clips}, model {args.model}, {args.rounds} runs each\n")
    print("| command (whole process) | median s | min-max s | clips/s | x pipeline |")
    print("|---|---|---|---|---|")
    for name in (theirs, ours):
        median = statistics.median(seconds[name])
        print(
            f"| {name} | {median:.2f} | {min(seconds[name]):.2f}-{max(seconds[name]):.2f} "
            f"| {len(clips) / median:.1f} | {baseline / median:.2f}x |"
        )
    print(f"\ntop-1 agreement of voxclass int8 with the pipeline: {agreement:.1%}")


if __name__ == "__main__":
    main()
