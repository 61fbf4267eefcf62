"""Start-up of the command line, timed as whole processes: `voxclass --help`, and `voxclass
predict` of one clip on an ONNX export (a fresh `tiny` preset, exported), against `python -c
pass` in the same run. Each command runs `--runs` times in turn (A B C A B C ...), so a drift
of the machine's speed touches all of them alike; the table gives each one's median, min-max,
and its median over the baseline's. The modules each command imported are listed too.

    python benchmarks/startup.py [--runs 5] [--quick]

`--quick` (what the test suite runs) times 2 runs of each.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

HEAVY = ("torch", "transformers", "datasets")
# Runs `voxclass ARGS...` as the console script does, then names the heavy modules it imported.
PROBE = f"""import sys
from voxclass import cli
try:
    cli.main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))
print('imported:', ','.join(heavy) or '-', file=sys.stderr)
"""


def make_export(root: Path) -> tuple[Path, Path]:
    """A `tiny` preset model exported to ONNX, and a 1 s clip at its rate."""
    from voxclass.export import export
    from voxclass.model import build_model

    model, extractor = build_model("tiny", ["a", "b", "c"])
    model.save_pretrained(root / "model")
    extractor.save_pretrained(root / "model")
    export(root / "model", root / "onnx")
    rate = extractor.sampling_rate
    clip = root / "one.wav"
    t = np.arange(rate) / rate
    sf.write(clip, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
    return root / "onnx", clip


def time_once(argv: list[str]) -> float:
    start = time.perf_counter()
    run = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({run.returncode}): {run.stderr[-2000:]}")
    return seconds


def imported(args: list[str]) -> str:
    run = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True)
    line = next((x for x in run.stderr.splitlines() if x.startswith("imported:")), None)
    if line is None:
        raise SystemExit(f"probe of voxclass {' '.join(args)} failed: {run.stderr[-2000:]}")
    return line.removeprefix("imported: ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each command")
    parser.add_argument("--quick", action="store_true", help="2 runs each (the test suite's)")
    opts = parser.parse_args()
    runs = 2 if opts.quick else opts.runs
    with tempfile.TemporaryDirectory() as tmp:
        onnx, clip = make_export(Path(tmp))
        voxclass = [sys.executable, "-m", "voxclass"]
        commands = {
            "python -c pass": ([sys.executable, "-c", "pass"], None),
            "voxclass --help": ([*voxclass, "--help"], ["--help"]),
            "voxclass predict (ONNX, 1 clip)": (
                [*voxclass, "predict", str(onnx), str(clip)],
                ["predict", str(onnx), str(clip)],
            ),
        }
        for argv, _ in commands.values():  # warm-up: file caches, .pyc files
            time_once(argv)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, (argv, _) in commands.items():
                times[name].append(time_once(argv))
        heavy = {name: imported(args) if args else "-" for name, (_, args) in commands.items()}
    base = statistics.median(times["python -c pass"])
    print(f"{runs} runs each, in turn; medians (whole process, wall clock)\n")
    print(f"{'command':34}{'median s':>10}{'min-max s':>14}{'x python':>10}  heavy modules")
    for name, values in times.items():
        median = statistics.median(values)
        spread = f"{min(values):.3f}-{max(values):.3f}"
        print(f"{name:34}{median:>10.3f}{spread:>14}{median / base:>9.1f}x  {heavy[name]}")


if __name__ == "__main__":
    main()
