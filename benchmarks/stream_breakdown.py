"""Where a segment event's latency goes: benchmarks/stream_latency.py's stream, replayed offline.

The same stream (FSDD digits with silence between, pcm16 at `--rate` in 20 ms messages) is fed
to a `StreamSession` in this process, message by message, without a server. For each
recording it reports, in ms of stream audio after the recording's end:

- `detector end`: where the detector put the end of speech (Silero's probability stays up for
  a frame or two after the last sound; negative when the recording ends in silence);
- `min-silence wait`: from there to the detector frame that ends the segment (`min_silence`
  rounded up to whole 32 ms frames);
- `release wait`: from that frame to the message after which the session hands out the
  segment (message and frame granularity, the model resampler's lag, events queued before);
- `model`: the wall time of `Classifier.predict_waves` on the segment's wave and those handed
  out with it before it (one batch, as the server and the CLI classify them), after a warm-up.

`audio + model` is the latency a server with nothing else to do would give; the server's own
time is the rest of stream_latency.py's figure.

    python benchmarks/stream_breakdown.py MODEL [--min-silence 0.15] [--utterances 20]
    python benchmarks/stream_breakdown.py --quick    # a fresh `tiny` preset, 3 utterances

`--quick` (what the test suite runs) checks that the benchmark runs, not a latency.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from serve_load import fresh_model
from stream_latency import CHUNK_SECONDS, speech_stream

from voxclass import Classifier
from voxclass.stream import StreamSession, StreamSettings


class Recording(StreamSession):
    """A session that notes where the detector was when it queued each segment."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.decided: list[tuple[int, int]] = []
        """(speech end, detector position) in model samples, per segment queued."""

    def _segment(self, start: int, end: int) -> None:
        if end - start >= self.settings.min_speech * self.rate:
            self.decided.append((end, round(self.frames * self.frame)))
        super()._segment(start, end)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, nargs="?", help="trained or exported model dir")
    parser.add_argument("--min-silence", type=float, default=StreamSettings.min_silence)
    parser.add_argument("--utterances", type=int, default=20)
    parser.add_argument("--rate", type=int, default=16000, help="rate the client sends at")
    parser.add_argument("--quick", action="store_true", help="fresh tiny model, 3 utterances")
    args = parser.parse_args()
    if args.quick:
        torch.manual_seed(0)
        args.model = fresh_model("tiny", Path(tempfile.mkdtemp(prefix="stream-breakdown-")))
        args.utterances = 3
    if args.model is None:
        parser.error("give MODEL (or --quick)")

    clf = Classifier.load(args.model)
    wave, spans = speech_stream(args.utterances, args.rate)
    pcm = (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()
    session = Recording(clf, StreamSettings(args.rate, min_silence=args.min_silence))
    clf.predict_waves([wave[: args.rate]], ["warm-up"], 5)
    rows, feeds = [], []
    chunk = int(CHUNK_SECONDS * args.rate) * 2
    for at in range(0, len(pcm), chunk):
        started = time.perf_counter()
        steps = session.feed(pcm[at : at + chunk])
        feeds.append(time.perf_counter() - started)
        sent = (at + len(pcm[at : at + chunk])) / 2 / args.rate
        for i, step in enumerate(steps):
            if step.event["type"] != "segment":
                continue
            waves = [s.wave for s in steps[: i + 1] if s.wave is not None]
            started = time.perf_counter()
            clf.predict_waves(waves, ["stream"] * len(waves), 5)  # one batch, as served
            model = time.perf_counter() - started
            overlaps = [min(e, step.event["end"]) - max(s, step.event["start"]) for s, e in spans]
            recording_end = spans[int(np.argmax(overlaps))][1]
            end, decided = (x / clf.sampling_rate for x in session.decided[len(rows)])
            rows.append((end - recording_end, decided - end, sent - decided, model, len(waves) - 1))
    table = np.array(rows)
    total = table[:, :4].sum(axis=1)
    print(
        f"\n{args.model} ({clf.backend}); {len(spans)} recordings, {len(rows)} segments; "
        f"min_silence {args.min_silence:g} s; ms after the recording's end, p50 / p95 / max"
    )
    names = ["detector end", "min-silence wait", "release wait", "model"]
    for name, column in zip(names, table.T, strict=False):
        print(f"{name:22} " + " / ".join(f"{1000 * v:4.0f}" for v in _stats(column)))
    print(f"{'audio + model':22} " + " / ".join(f"{1000 * v:4.0f}" for v in _stats(total)))
    print(f"segments released behind another event's forward: {int((table[:, 4] > 0).sum())}")
    print(f"session.feed per 20 ms message: p95 {1000 * np.percentile(feeds, 95):.1f} ms")


def _stats(values: np.ndarray) -> list[float]:
    return [*np.percentile(values, [50, 95]), values.max()]


if __name__ == "__main__":
    main()
