"""Live streaming through `voxclass serve`'s `WS /v1/stream`, at real time, on real speech.

The stream: FSDD spoken digits (real recordings, 8 kHz) with 0.8-1.5 s of digital silence
between them, resampled to `--rate` and sent as 16-bit PCM in 20 ms messages at the pace it
would be spoken. Starts `voxclass serve` in a subprocess on a free 127.0.0.1 port, then:

1. one stream: from the end of each recording in the stream (where its speech is over at the
   latest) to the arrival of its segment event, p50/p95 (goal p95 <= 300 ms); the detector
   waits `StreamSettings.min_silence` (0.15 s) of silence before it ends a segment, so that
   much is by design;
2. `--streams` (8) such streams at once: the worst lag of any event behind the audio it is
   about (arrival - the moment its `end` was sent); goal: it keeps pace (worst lag <= one
   0.5 s hop, so nothing piles up);
3. segment labels against `voxclass predict` (a subprocess) on each segment cut out of the
   stream (at the model's rate, as the server resampled it) and written as a WAV file.

    python benchmarks/stream_latency.py [--model DIR] [--utterances 20] [--streams 8] [--quick]

Without --model a fresh `tiny` model (the demo's preset; random weights, fixed seed) is built:
timing does not depend on what the weights learned. `--quick` (what the test suite runs):
3 utterances, 2 streams.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import websocket  # websocket-client
from serve_load import free_port, fresh_model, wait_healthy

from voxclass import Classifier
from voxclass.audio import Resampler, load_audio

FSDD = next(
    (
        p / "shared" / "data" / "fsdd"
        for p in Path(__file__).resolve().parents
        if (p / "shared" / "data" / "fsdd").is_dir()
    ),
    None,
)
CHUNK_SECONDS = 0.02
HOP = 0.5


def speech_stream(
    utterances: int, rate: int, seed: int = 0
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Digits of all four speakers with silence between, at `rate`, and where each recording
    sits (seconds)."""
    rng = np.random.default_rng(seed)
    paths = sorted(FSDD.glob("*/*.wav"))
    parts, spans, at = [], [], 0
    for _ in range(utterances):
        gap = np.zeros(int(rng.uniform(0.8, 1.5) * rate), np.float32)
        digit = load_audio(paths[rng.integers(len(paths))], rate)
        parts += [gap, digit]
        spans.append(((at + len(gap)) / rate, (at + len(gap) + len(digit)) / rate))
        at += len(gap) + len(digit)
    parts.append(np.zeros(rate, np.float32))
    return np.concatenate(parts), spans


def run_stream(url: str, pcm: bytes, rate: int, results: list, start_at: float) -> None:
    """Send `pcm` at real time from `start_at` (a perf_counter time); append
    (events with their arrival times, error or None) to `results`."""
    ws = websocket.create_connection(url, timeout=60)
    events: list[tuple[float, dict]] = []
    error: list[str] = []

    def receive() -> None:
        try:
            while True:
                message = ws.recv()
                if not message:
                    return
                events.append((time.perf_counter(), json.loads(message)))
                if events[-1][1]["type"] == "end":
                    return
        except websocket.WebSocketException as err:
            error.append(f"{type(err).__name__}: {err}")

    ws.send(json.dumps({"sampling_rate": rate, "format": "pcm16", "hop": HOP}))
    receiver = threading.Thread(target=receive)
    receiver.start()
    chunk = int(CHUNK_SECONDS * rate) * 2
    for at in range(0, len(pcm), chunk):
        time.sleep(max(0.0, start_at + at / 2 / rate - time.perf_counter()))
        ws.send_binary(pcm[at : at + chunk])
    ws.send(json.dumps({"type": "end"}))
    receiver.join(60)
    ws.close()
    results.append((events[1:], error[0] if error else None))  # events[0] is `ready`


def streams_at_once(url: str, pcm: bytes, rate: int, count: int) -> tuple[list, float]:
    results: list = []
    start_at = time.perf_counter() + 0.5  # every stream connected before the audio starts
    threads = [
        threading.Thread(target=run_stream, args=(url, pcm, rate, results, start_at))
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, start_at


def segment_latencies(events, spans, start_at: float) -> tuple[list[float], int]:
    """Seconds from each recording's end to the arrival of the segment event that covers it
    most, and how many recordings got no segment."""
    segments = [(t, e) for t, e in events if e["type"] == "segment"]
    latencies, missed = [], 0
    for start, end in spans:
        overlaps = [min(end, e["end"]) - max(start, e["start"]) for _, e in segments]
        if not overlaps or max(overlaps) <= 0:
            missed += 1
            continue
        arrived, _ = segments[int(np.argmax(overlaps))]
        latencies.append(arrived - (start_at + end))
    return latencies, missed


def percentile_ms(values: list[float], q: float) -> str:
    return f"{1000 * np.percentile(values, q):.0f} ms" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="trained or exported model dir")
    parser.add_argument("--utterances", type=int, default=20, help="digits per stream")
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams")
    parser.add_argument("--rate", type=int, default=16000, help="rate the client sends at")
    parser.add_argument("--quick", action="store_true", help="3 utterances, 2 streams")
    args = parser.parse_args()
    if args.quick:
        args.utterances, args.streams = 3, 2
    if FSDD is None:
        raise SystemExit("FSDD recordings expected in shared/data/fsdd beside the checkout")
    if not (1 <= args.streams <= 32 and 1 <= args.utterances <= 200):
        parser.error("--streams must be 1-32 and --utterances 1-200")

    work = Path(tempfile.mkdtemp(prefix="voxclass-stream-latency-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    if args.model is None:
        torch.manual_seed(0)
    model_dir = args.model or fresh_model("tiny", work / "model")
    clf = Classifier.load(model_dir)
    wave, spans = speech_stream(args.utterances, args.rate)
    pcm = (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()

    port = free_port()
    log = work / "server.log"
    command = [sys.executable, "-m", "voxclass", "serve", str(model_dir), "--port", str(port)]
    with open(log, "wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"ws://127.0.0.1:{port}/v1/stream"
    try:
        wait_healthy(f"http://127.0.0.1:{port}", server, log)
        streams_at_once(url, pcm[: 2 * args.rate], args.rate, 1)  # warm-up: lazy imports
        [(single, error)], single_start = streams_at_once(url, pcm, args.rate, 1)
        many, many_start = streams_at_once(url, pcm, args.rate, args.streams)
    finally:
        server.terminate()
        server.wait(timeout=30)
    errors = [e for _, e in [(single, error), *many] if e]

    latencies, missed = segment_latencies(single, spans, single_start)
    many_latencies, lags = [], []
    for events, _ in many:
        many_latencies += segment_latencies(events, spans, many_start)[0]
        lags += [t - (many_start + e["end"]) for t, e in events if e["type"] in ("hop", "segment")]
    segment_lags = [t - (single_start + e["end"]) for t, e in single if e["type"] == "segment"]

    # Segment labels against `voxclass predict` on each segment cut out as a file.
    resampler = Resampler(args.rate, clf.sampling_rate)
    heard = np.concatenate(
        [resampler.push(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768), resampler.flush()]
    )
    segments = [e for _, e in single if e["type"] == "segment"]
    files = []
    for i, segment in enumerate(segments):
        cut = heard[
            round(segment["start"] * clf.sampling_rate) : round(segment["end"] * clf.sampling_rate)
        ]
        files.append(work / f"segment{i:03d}.wav")
        sf.write(files[-1], cut, clf.sampling_rate, subtype="FLOAT")
    predicted = (
        json.loads(
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "voxclass",
                    "predict",
                    str(model_dir),
                    *map(str, files),
                    "--format",
                    "json",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        if files
        else []
    )
    same = sum(s["labels"] == p["labels"] for s, p in zip(segments, predicted, strict=True))
    score_diff = max(
        (
            abs(a - b)
            for s, p in zip(segments, predicted, strict=True)
            for a, b in zip(s["scores"], p["scores"], strict=True)
        ),
        default=0.0,
    )

    title = str(args.model) if args.model else "fresh tiny model, random weights"
    seconds = len(wave) / args.rate
    print(
        f"\n{title} ({clf.backend}, {clf.sampling_rate} Hz); {args.utterances} FSDD digits in "
        f"{seconds:.1f} s of audio sent as pcm16 at {args.rate} Hz in {1000 * CHUNK_SECONDS:g} ms "
        f"messages, real time; hop {HOP} s; torch threads {torch.get_num_threads()}\n"
    )
    p95 = np.percentile(latencies, 95) if latencies else np.inf
    worst = max(lags) if lags else np.inf
    rows = [
        ("errors", f"{len(errors)}"),
        ("segments / recordings", f"{len(segments)} / {len(spans)} ({missed} missed)"),
        ("1 stream: end -> event p50", percentile_ms(latencies, 50)),
        ("1 stream: end -> event p95", percentile_ms(latencies, 95)),
        ("1 stream: segment lag p95", percentile_ms(segment_lags, 95)),
        (f"{args.streams} streams: end -> event p95", percentile_ms(many_latencies, 95)),
        (f"{args.streams} streams: worst lag", f"{1000 * worst:.0f} ms"),
        (
            "segment labels == predict",
            f"{same} / {len(segments)} (max score diff {score_diff:.1e})",
        ),
        ("latency goal (p95 <= 300 ms)", "met" if p95 <= 0.3 else "NOT met"),
        (f"pace goal (worst lag <= {HOP} s)", "met" if worst <= HOP else "NOT met"),
    ]
    for name, value in rows:
        print(f"{name:34} {value}")
    for error in errors[:5]:
        print(f"  error: {error}")


if __name__ == "__main__":
    main()
