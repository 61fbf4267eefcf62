"""Scale-out: plain `predict` vs the Ray engine with 1 and 2 workers, on the same files, in one
run. Prints clips/s, the ratios the engine promises, and whether every row agrees with plain
`predict` (same labels, scores within 1e-6).

    python benchmarks/scale_out.py [--model DIR] [--clips 600] [--seconds 5] [--rounds 3] [--quick]

Clips are real FSDD digit recordings strung together to `--seconds` each, written as 8 kHz WAV
files to a temp folder; every engine decodes them from disk. Without --model a `tiny` preset
with fixed random weights is used. The Ray instance is started, and given a first job, before
the timed runs: both are paid once per cluster, not per job (the first job also starts Ray's
worker processes), and their times are printed apart. Each timed run includes loading the
model in every actor, decoding, classifying and writing the shards. Each row also splits its
time into start-up (model load for plain; for Ray, until as many shards as workers are
written) and the steady clips/s after it. Plain `predict` is timed twice: with the default
threads (all cores) and with one thread, the share one Ray worker gets (Ray sets
`OMP_NUM_THREADS=1` in each actor, which torch and voxclass's onnxruntime session obey), which
isolates the engine's own overhead. Rounds take the engines in turn; each row is the median of
its rounds.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import soundfile as sf
import torch

from voxclass import Classifier
from voxclass.audio import load_audio
from voxclass.model import build_model
from voxclass.predict import expand_inputs, run
from voxclass.scale import results_table, run_engine

# ../shared/data/fsdd beside the checkout (or a worktree of it)
FSDD = next(
    (p / "shared/data/fsdd" for p in Path(__file__).resolve().parents if (p / "shared").is_dir()),
    Path("shared/data/fsdd"),
)
RATE = 8000


def write_clips(folder: Path, n: int, seconds: float, seed: int = 0) -> None:
    """`n` WAV files of `seconds` each, runs of random FSDD digit recordings."""
    rng = np.random.default_rng(seed)
    files = sorted(FSDD.glob("*/*.wav"))
    folder.mkdir(parents=True)
    for i in range(n):
        parts, length = [], 0
        while length < seconds * RATE:
            wave = load_audio(files[rng.integers(len(files))], RATE)
            parts.append(wave)
            length += len(wave)
        sf.write(folder / f"clip_{i:05d}.wav", np.concatenate(parts)[: int(seconds * RATE)], RATE)


def fresh_model(path: Path) -> Path:
    torch.manual_seed(0)
    model, extractor = build_model("tiny", [str(d) for d in range(10)])
    model.save_pretrained(path)
    extractor.save_pretrained(path)
    return path


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def agreement(reference: pd.DataFrame, out: Path) -> tuple[bool, float]:
    """(every source once with the same labels, largest score difference) against plain."""
    rows = pd.read_parquet(out).set_index("source").sort_index()
    same = list(rows.index) == list(reference.index) and all(
        list(a) == list(b) for a, b in zip(rows["labels"], reference["labels"], strict=True)
    )
    diff = max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(rows["scores"], reference["scores"], strict=True)
    )
    return same, diff


def shard_times(out: Path, started: float, workers: int) -> tuple[float, float]:
    """(seconds from the run's start to the `workers`-th shard, clips/s after it): start-up
    (actors importing torch and loading the model, the first chunks) apart from the steady
    rate, read off the shards' write times."""
    shards = sorted((p.stat().st_mtime, pq.read_metadata(p).num_rows) for p in out.glob("part-*"))
    first = shards[workers - 1][0]
    later = sum(rows for _, rows in shards[workers:])
    return first - started, later / (shards[-1][0] - first) if later else float("nan")


@dataclass
class Row:
    seconds: float
    startup: float
    steady: float
    """clips/s once started"""
    check: str = ""


def median_row(rounds: list[Row]) -> Row:
    """Each figure's median over the rounds; the check of the worst round."""
    checks = sorted((r.check for r in rounds), key=lambda c: not c.startswith("NO"))
    return Row(
        float(np.median([r.seconds for r in rounds])),
        float(np.median([r.startup for r in rounds])),
        float(np.median([r.steady for r in rounds])),
        checks[0],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model directory (default: tiny, random weights)")
    parser.add_argument("--clips", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="40 clips of 1 s, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.clips, args.seconds, args.rounds = 40, 1.0, 1
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = args.model or str(fresh_model(root / "model"))
        write_clips(root / "clips", args.clips, args.seconds)
        inputs = [str(root / "clips")]
        chunk = max(1, args.clips // 24)  # enough chunks to keep two workers busy to the end

        def plain(one_thread: bool = False) -> tuple[Row, list]:
            # One thread: torch's, and onnxruntime's through OMP_NUM_THREADS, as in an actor.
            if one_thread:
                torch.set_num_threads(1)
                os.environ["OMP_NUM_THREADS"] = "1"
            try:
                load_s, clf = timed(lambda: Classifier.load(model))
                run_s, results = timed(
                    lambda: run(clf, expand_inputs(inputs), top_k=3, batch_size=args.batch_size)
                )
            finally:
                torch.set_num_threads(threads)
                os.environ.pop("OMP_NUM_THREADS", None)
            return Row(load_s + run_s, load_s, args.clips / run_s), results

        threads = torch.get_num_threads()
        _, results = plain()
        reference = results_table(results).to_pandas().set_index("source").sort_index()

        def ray_run(workers: int, out: Path) -> Row:
            started = time.time()
            seconds, _ = timed(
                lambda: run_engine(
                    "ray", model, inputs, out, top_k=3, batch_size=args.batch_size,
                    chunk_size=chunk, workers=workers,
                )  # fmt: skip
            )
            same, diff = agreement(reference, out)
            check = f"{'yes' if same and diff < 1e-6 else 'NO'} ({diff:.1e})"
            return Row(seconds, *shard_times(out, started, workers), check)

        init_s, _ = timed(lambda: ray.init(num_cpus=2, include_dashboard=False,
                                           log_to_driver=False))  # fmt: skip
        # The first job on a fresh instance also starts Ray's worker processes and Ray Data's
        # executor: paid once per cluster, like ray.init, so it is timed apart.
        first = ray_run(2, root / "first")
        runs: dict[str, list[Row]] = {}
        for round_ in range(args.rounds):  # interleaved: a slow spell hits every engine
            runs.setdefault(f"plain predict ({threads} threads)", []).append(plain()[0])
            runs.setdefault("plain predict (1 thread)", []).append(plain(one_thread=True)[0])
            for workers in (1, 2):
                name = f"ray, {workers} worker{'s' if workers > 1 else ''}"
                runs.setdefault(name, []).append(ray_run(workers, root / f"{name}{round_}"))
        ray.shutdown()
    rows = {name: median_row(rounds) for name, rounds in runs.items()}

    print(f"{args.clips} clips of {args.seconds:g} s, chunks of {chunk}, batch {args.batch_size}")
    print(f"ray.init (local, 2 CPUs; once per cluster, in no row below): {init_s:.1f} s; "
          f"the instance's first job (2 workers): {first.seconds:.1f} s, start-up "
          f"{first.startup:.1f} s")  # fmt: skip
    print(f"rows: median of {args.rounds} interleaved rounds")
    print(f"{'engine':<28} {'clips/s':>8} {'start-up s':>10} {'steady clips/s':>14}  "
          "agrees with plain (max score diff)")  # fmt: skip
    for name, row in rows.items():
        rate = args.clips / row.seconds
        print(f"{name:<28} {rate:8.1f} {row.startup:10.1f} {row.steady:14.1f}  {row.check}")

    def ratio(a: str, b: str, steady: bool = False) -> float:
        if steady:
            return rows[a].steady / rows[b].steady
        return rows[b].seconds / rows[a].seconds

    one, two, plain1 = "ray, 1 worker", "ray, 2 workers", "plain predict (1 thread)"
    print(f"2 workers / 1 worker: {ratio(two, one):.2f}x end to end, "
          f"{ratio(two, one, True):.2f}x steady (goal >= 1.7)")  # fmt: skip
    print(f"ray 1 worker / plain 1 thread: {ratio(one, plain1):.2f} end to end, "
          f"{ratio(one, plain1, True):.2f} steady (goal >= 0.85)")  # fmt: skip
    print(f"ray 1 worker / plain {threads} threads: "
          f"{ratio(one, f'plain predict ({threads} threads)'):.2f} end to end")  # fmt: skip
    print(f"per worker: {args.clips / rows[two].seconds / 2:.1f} clips/s end to end, "
          f"{rows[two].steady / 2:.1f} steady")  # fmt: skip


if __name__ == "__main__":
    main()
