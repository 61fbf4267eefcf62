"""Load check for `voxclass serve`: concurrent clients on one clip against a local server.

Starts `voxclass serve` in a subprocess on a free 127.0.0.1 port, measures the bare
`Classifier.predict` time on the same clip in this process first (server idle), then runs
`--clients` concurrent clients that each send `--requests` classify requests one after another.
Prints errors, p50/p99 latency, throughput, p50 relative to the bare predict, and the CPU
time per request of the server and of the clients (from /proc, so Linux only).
Goal: 0 errors and p50 <= 1.3x the bare predict.

    python benchmarks/serve_load.py [--model DIR | --preset tiny|small] [--clients 8]
                                    [--requests 200] [--seconds 1] [--threads N] [--quick]
    python benchmarks/serve_load.py --threads 1                           # README, tiny row
    python benchmarks/serve_load.py --preset small --requests 40 --threads 1  # README, small row

`--threads` sets torch's threads in this process and the server alike (default: torch's own
choice, one per core). On a machine whose cores are busy with other work, 1 thread is often
much faster: a multi-threaded forward waits for its slowest thread.

Without --model a fresh preset model (`--preset`, default `tiny`; random weights) is built in
a temp dir: the server's cost does not depend on what the weights learned. `--quick` (what the
test suite runs): 2 clients x 5 requests, 5 bare predicts. Traffic goes to 127.0.0.1 only and
is bounded: at most 32 clients x 1000 requests, and the run stops after --deadline seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
import torch

from voxclass import Classifier
from voxclass.model import build_model

MAX_CLIENTS, MAX_REQUESTS = 32, 1000


def fresh_model(preset: str, path: Path) -> Path:
    model, extractor = build_model(preset, ["low", "mid", "high"])
    model.save_pretrained(path)
    extractor.save_pretrained(path)
    return path


def wav_clip(seconds: float, rate: int) -> bytes:
    """A 16-bit WAV of a noisy tone, like a short recording."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.02 * rng.standard_normal(t.size)
    buffer = io.BytesIO()
    sf.write(buffer, wave.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def bare_predict_seconds(clf: Classifier, clip: bytes, runs: int) -> float:
    """Median wall time of `Classifier.predict` on the clip (decode + forward + top-k)."""
    clf.predict(clip)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        clf.predict(clip)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited with code {server.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server not healthy after {timeout:g} s:\n{log.read_text()}")


async def run_clients(
    url: str, clip: bytes, clients: int, requests: int, deadline: float
) -> tuple[list[float], list[str]]:
    """Latencies (s) of successful requests and a description of each failed one."""
    latencies: list[float] = []
    errors: list[str] = []
    stop_at = time.monotonic() + deadline

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30.0) as http:
            for _ in range(requests):
                if time.monotonic() > stop_at:
                    errors.append("deadline reached before this request")
                    continue
                start = time.perf_counter()
                try:
                    response = await http.post(
                        "/v1/classify", files={"file": ("clip.wav", clip, "audio/wav")}
                    )
                except httpx.HTTPError as err:
                    errors.append(f"{type(err).__name__}: {err}")
                    continue
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors.append(f"HTTP {response.status_code}: {response.text[:200]}")

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="trained or exported model dir")
    parser.add_argument(
        "--preset", choices=["tiny", "small"], default="tiny", help="model without --model"
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="per client")
    parser.add_argument("--seconds", type=float, default=1.0, help="clip length")
    parser.add_argument("--bare-runs", type=int, default=100)
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds for the load")
    parser.add_argument("--threads", type=int, help="torch threads, here and in the server")
    parser.add_argument("--quick", action="store_true", help="2 clients x 5 requests (seconds)")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.requests, args.bare_runs = 2, 5, 5
    if not (1 <= args.clients <= MAX_CLIENTS and 1 <= args.requests <= MAX_REQUESTS):
        parser.error(f"--clients must be 1-{MAX_CLIENTS} and --requests 1-{MAX_REQUESTS}")

    env = dict(os.environ)
    if args.threads:
        torch.set_num_threads(args.threads)
        env["OMP_NUM_THREADS"] = str(args.threads)  # read by torch when the server starts
    work = Path(tempfile.mkdtemp(prefix="voxclass-serve-load-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # models, data: all temporary
    model_dir = args.model or fresh_model(args.preset, work / "model")
    clf = Classifier.load(model_dir)
    clip = wav_clip(args.seconds, clf.sampling_rate)
    bare = bare_predict_seconds(clf, clip, args.bare_runs)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = work / "server.log"
    command = [sys.executable, "-m", "voxclass", "serve", str(model_dir), "--port", str(port)]
    with open(log, "wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_healthy(url, server, log)
        # Warm-up outside the measurement: the first requests pay for lazy imports.
        asyncio.run(run_clients(url, clip, args.clients, 2, args.deadline))
        start, server_cpu, client_cpu = time.perf_counter(), cpu_seconds(server.pid), os.times()
        latencies, errors = asyncio.run(
            run_clients(url, clip, args.clients, args.requests, args.deadline)
        )
        wall = time.perf_counter() - start
        server_cpu = cpu_seconds(server.pid) - server_cpu
        client_cpu = sum(os.times()[:2]) - sum(client_cpu[:2])
    finally:
        server.terminate()
        server.wait(timeout=30)

    total = args.clients * args.requests
    ms = 1000 * np.asarray(latencies or [np.nan])
    p50, p99 = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
    title = str(args.model) if args.model else f"fresh {args.preset} model, random weights"
    print(
        f"\n{title} ({clf.backend}); {args.seconds:g} s WAV clip at {clf.sampling_rate} Hz; "
        f"{args.clients} clients x {args.requests} requests on 127.0.0.1; "
        f"torch threads {torch.get_num_threads()}\n"
    )
    rows = [
        ("requests", f"{total}"),
        ("errors", f"{len(errors)}"),
        ("throughput", f"{len(latencies) / wall:.1f} req/s"),
        ("latency p50", f"{p50:.1f} ms"),
        ("latency p99", f"{p99:.1f} ms"),
        ("bare Classifier.predict", f"{1000 * bare:.1f} ms"),
        ("p50 / bare", f"{p50 / (1000 * bare):.2f}x (goal <= 1.3x)"),
        ("server CPU / request", f"{1000 * server_cpu / total:.1f} ms"),
        ("client CPU / request", f"{1000 * client_cpu / total:.1f} ms"),
    ]
    for name, value in rows:
        print(f"{name:24} {value}")
    for error in sorted(set(errors))[:5]:
        print(f"  error: {error}")


if __name__ == "__main__":
    main()
