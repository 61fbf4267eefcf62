"""Abuse check for `voxclass serve`: hostile uploads under the upload limit must neither bloat
nor stall the server.

Starts `voxclass serve` in a subprocess on a free 127.0.0.1 port (default limits). Phase 1,
idle: one good client sends `--requests` 1 s WAV clips one after another; its p50 latency and
the server's peak RSS (VmRSS from /proc, sampled every 10 ms) are the baseline. Phase 2, abuse:
an attacker process loops over the worst uploads built below while the good client sends the
same requests again; the server's peak RSS and the good p50 are measured the same way.
Prints a row per attack (what the server answered, how long it took) and the idle vs abuse
table. Goals: peak RSS under abuse <= 2x idle, good p50 under abuse <= 2x idle.

    python benchmarks/serve_abuse.py [--model DIR] [--requests 300] [--threads 1] [--quick]

The attacks, each under the server's 20 MB upload limit: WAV headers claiming 1 Hz and 2 GHz,
a real hour of silent FLAC, a FLAC header claiming 2^36 frames, a FLAC of unknown length (0 in
its header) holding more than the longest accepted audio, 384 kHz stereo noise, 32
channels, a 48-byte WAV, a truncated WAV, a text file, a 20 MB WAV that is too long, and the
most expensive upload that is accepted: silent FLAC of exactly the longest accepted duration
at the highest accepted rate, in stereo (a few kB).

Without --model a fresh `tiny` preset model (random weights) is built in a temp dir. The server
runs with `--threads` torch threads (default 1: on a 2-core machine a 2-thread forward waits for
whichever thread the attacker's decoding descheduled). Traffic goes to 127.0.0.1 only and is
bounded: the attacker stops when the good client is done, and everything stops after
`--deadline` seconds. `--quick` (seconds, for the tests): 15 good requests, shorter attacks.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
from serve_load import free_port, fresh_model, wait_healthy, wav_clip

MAX_REQUESTS = 2000


def encode(wave: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def silent_flac(seconds: float, rate: int, channels: int = 1) -> bytes:
    return encode(np.zeros((int(seconds * rate), channels), np.int16), rate, "FLAC")


def flac_claiming(data: bytes, frames: int) -> bytes:
    """The FLAC with its STREAMINFO header's frame count (36 bits at byte 18) set to `frames`."""
    field = int.from_bytes(data[18:26], "big")
    field = (field & ~((1 << 36) - 1)) | frames
    return data[:18] + field.to_bytes(8, "big") + data[26:]


def wav_claiming_rate(clip: bytes, rate: int) -> bytes:
    """The WAV with its header's sample rate (and byte rate) set to `rate`."""
    data = bytearray(clip)
    data[24:28] = rate.to_bytes(4, "little")
    data[28:32] = min(2 * rate, 2**32 - 1).to_bytes(4, "little")
    return bytes(data)


def attacks(
    max_seconds: float, max_rate: int, upload_mb: float, quick: bool
) -> dict[str, bytes]:
    """The hostile uploads, by name; every one under the upload limit."""
    rng = np.random.default_rng(0)
    second = encode(0.1 * rng.standard_normal(8000).astype(np.float32), 8000)
    hours = 0.1 if quick else 1.0
    over_limit = max_seconds + 10
    noise_mb = 0.1 * upload_mb if quick else upload_mb - 0.5
    noise = (0.1 * rng.standard_normal(int(noise_mb * 1024 * 1024 / 2))).astype(np.float32)
    built = {
        "WAV header claiming 1 Hz": wav_claiming_rate(second, 1),
        "WAV header claiming 2 GHz": wav_claiming_rate(second, 2_000_000_000),
        f"{hours:g} h of silent FLAC": silent_flac(hours * 3600, 8000),
        "FLAC header claiming 2^36 frames": flac_claiming(silent_flac(1, 8000), 2**36 - 1),
        f"FLAC of unknown length (0 in header), {over_limit:g} s": flac_claiming(
            silent_flac(over_limit, 8000), 0
        ),
        "384 kHz stereo noise FLAC": encode(
            0.1 * rng.standard_normal((int(0.6 * 384_000), 2)).astype(np.float32),
            384_000,
            "FLAC",
        ),
        "32-channel WAV": encode(np.zeros((8000, 32), np.float32), 8000),
        "48-byte WAV": encode(np.zeros(2, np.float32), 8000),
        "truncated WAV": second[:30],
        "text file named .wav": b"meeting notes, not a recording\n" * 100,
        f"{noise_mb:g} MB noise WAV (too long)": encode(noise, 8000),
        f"longest accepted: {max_seconds:g} s silent FLAC, {max_rate} Hz stereo": silent_flac(
            max_seconds, max_rate, 2
        ),
    }
    limit = upload_mb * 1024 * 1024
    assert all(len(data) < limit for data in built.values()), "an attack is over the limit"
    return built


def attacker(url: str, built: dict[str, bytes], stop, results, deadline: float) -> None:
    """Loop over the attacks until `stop` is set; put (name, status, seconds) on `results`."""
    with httpx.Client(base_url=url, timeout=120.0) as http:
        while not stop.is_set() and time.monotonic() < deadline:
            for name, data in built.items():
                if stop.is_set():
                    break
                start = time.perf_counter()
                try:
                    status = http.post(
                        "/v1/classify", files={"file": ("upload.wav", data, "audio/wav")}
                    ).status_code
                except httpx.HTTPError as err:
                    status = type(err).__name__
                results.put((name, status, time.perf_counter() - start))


class PeakRss:
    """Samples a process's VmRSS every 10 ms in a thread; `peak` is the largest seen (bytes)
    since the last `reset`."""

    def __init__(self, pid: int):
        self.path = Path(f"/proc/{pid}/status")
        self.peak = 0
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def rss(self) -> int:
        for line in self.path.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS in {self.path}")

    def _sample(self) -> None:
        while self.running:
            try:
                self.peak = max(self.peak, self.rss())
            except (OSError, RuntimeError):  # the server is gone
                return
            time.sleep(0.01)

    def reset(self) -> None:
        self.peak = self.rss()

    def stop(self) -> None:
        self.running = False
        self.thread.join()


def good_client(url: str, clip: bytes, requests: int, deadline: float) -> tuple[list[float], int]:
    """Latencies (s) of `requests` sequential good requests, and how many failed."""
    latencies, errors = [], 0

    async def run() -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=url, timeout=120.0) as http:
            for _ in range(requests):
                if time.monotonic() > deadline:
                    errors += 1
                    continue
                start = time.perf_counter()
                response = await http.post(
                    "/v1/classify", files={"file": ("good.wav", clip, "audio/wav")}
                )
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

    asyncio.run(run())
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="trained or exported model dir")
    parser.add_argument("--requests", type=int, default=300, help="good requests per phase")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds for the run")
    parser.add_argument("--quick", action="store_true", help="a few seconds, for the tests")
    args = parser.parse_args()
    if args.quick:
        args.requests = 15
    if not 1 <= args.requests <= MAX_REQUESTS:
        parser.error(f"--requests must be 1-{MAX_REQUESTS}")
    deadline = time.monotonic() + args.deadline

    work = Path(tempfile.mkdtemp(prefix="voxclass-serve-abuse-"))
    model_dir = args.model or fresh_model("tiny", work / "model")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = work / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, "-m", "voxclass", "serve", str(model_dir), "--port", str(port)]
    with open(log, "wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    stop = multiprocessing.Event()
    sent: multiprocessing.Queue = multiprocessing.Queue()
    try:
        wait_healthy(url, server, log)
        info = httpx.get(f"{url}/v1/model").json()
        clip = wav_clip(1.0, info["sampling_rate"])
        built = attacks(info["max_audio_seconds"], info["max_sample_rate"], 20.0, args.quick)
        good_client(url, clip, 5, deadline)  # warm-up: lazy imports, first forward
        memory = PeakRss(server.pid)
        idle_latencies, idle_errors = good_client(url, clip, args.requests, deadline)
        idle_rss = memory.peak

        memory.reset()
        attack = multiprocessing.Process(
            target=attacker, args=(url, built, stop, sent, deadline), daemon=True
        )
        attack.start()
        abuse_latencies, abuse_errors = good_client(url, clip, args.requests, deadline)
        abuse_rss = memory.peak
        stop.set()
        attack.join(180)
        memory.stop()
        alive = server.poll() is None
    finally:
        stop.set()
        server.terminate()
        server.wait(timeout=30)

    by_attack: dict[str, list[tuple[object, float]]] = defaultdict(list)
    while not sent.empty():
        name, status, seconds = sent.get()
        by_attack[name].append((status, seconds))
    title = str(args.model) if args.model else "fresh tiny model, random weights"
    print(
        f"\n{title}; limits {info['max_audio_seconds']:g} s, {info['max_sample_rate']} Hz, "
        f"20 MB; server torch threads {args.threads}; {args.requests} good 1 s WAV requests "
        "per phase, one after another, on 127.0.0.1\n"
    )
    print(f"{'attack':62} {'size':>10} {'sent':>5} {'answer':>8} {'p50':>9}")
    for name, data in built.items():
        answers = by_attack.get(name, [])
        statuses = ",".join(sorted({str(s) for s, _ in answers})) or "-"
        p50 = f"{1000 * np.median([t for _, t in answers]):.0f} ms" if answers else "-"
        print(f"{name:62} {len(data):>10,} {len(answers):>5} {statuses:>8} {p50:>9}")

    def p50_ms(latencies: list[float]) -> float:
        return 1000 * float(np.median(latencies)) if latencies else float("nan")

    idle_p50, abuse_p50 = p50_ms(idle_latencies), p50_ms(abuse_latencies)
    rss_ratio, p50_ratio = abuse_rss / idle_rss, abuse_p50 / idle_p50
    mb = 1024 * 1024
    print(f"\n{'':24} {'idle':>10} {'abuse':>10} {'ratio':>7}")
    rows = [
        ("server RSS (peak)", f"{idle_rss / mb:.0f} MB", f"{abuse_rss / mb:.0f} MB", rss_ratio),
        ("good p50", f"{idle_p50:.1f} ms", f"{abuse_p50:.1f} ms", p50_ratio),
        (
            "good p99",
            f"{1000 * np.percentile(idle_latencies or [np.nan], 99):.1f} ms",
            f"{1000 * np.percentile(abuse_latencies or [np.nan], 99):.1f} ms",
            None,
        ),
    ]
    for name, idle, abuse, ratio in rows:
        shown = f"{ratio:.2f}x" if ratio is not None else ""
        print(f"{name:24} {idle:>10} {abuse:>10} {shown:>7}")
    print(f"{'good errors':24} {idle_errors:>10} {abuse_errors:>10}")
    print(f"{'attacks sent':24} {'':>10} {sum(map(len, by_attack.values())):>10}")
    print(f"{'server alive after':24} {'':>10} {'yes' if alive else 'NO':>10}")
    print(f"\nmemory goal (abuse <= 2x idle RSS): {'met' if rss_ratio <= 2 else 'NOT met'}")
    print(f"latency goal (abuse p50 <= 2x idle p50): {'met' if p50_ratio <= 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
