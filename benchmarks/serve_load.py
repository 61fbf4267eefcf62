"""Load check for `voxclass serve`: what the server adds to the model's own cost.

Starts `voxclass serve` in a subprocess on a free 127.0.0.1 port, twice: with the model in the
server's process (`--model-process false`) and in a process of its own (the default). Each mode
is measured in `--rounds` paired rounds against the model called directly in this process on the
same clip, and each ratio is taken within its round: the machine's speed drifts over a run, and
a reference measured once at the start moved the ratios more than the server's own figures
moved. A round is two pairs, each reference measured just before its load:
- a bare `Classifier.predict` (median of `--bare-runs`), then one client sending `--requests`
  requests one after another: its p50 against the bare predict (goal <= 1.3x: the HTTP path
  adds little to one request);
- `Classifier.predict_batch` on `--clients` copies at batch `--clients` (clips/s), then
  `--clients` concurrent clients sending `--requests` each: their throughput against
  `predict_batch` (goal >= 0.8x: batching keeps the model as busy as a batch call would).
  Concurrent p50 is printed but not held to the bare predict: with N clients waiting on 2
  cores it is about N / throughput by construction.
The references run while the server is up but idle (no request in flight, its model process
waiting), on the same torch threads as the server. Each request is a multipart upload of the
clip to /v1/classify. Each client holds one keep-alive connection and sends a request built once
as bytes (as load generators such as wrk do), so the clients take next to no CPU from the cores
the server runs on; an HTTP library client took about 1 ms of CPU a request here, a third of the
tiny model's forward. The throughput reference is `predict_batch` on the server's threads and on
all cores, whichever is faster in that round.

Prints, per mode, a table of every round: the references, the server's figures and the two
ratios, each row with its median and min-max; the goals are judged on the median ratio. Then
each load's errors, latencies, throughput and the CPU time per request of the server (its model
process included) and of the clients (from /proc, so Linux only), over all rounds together.

    python benchmarks/serve_load.py [--model DIR | --preset tiny|small] [--clients 8]
                                    [--requests 200] [--rounds 5] [--seconds 1] [--threads N]
                                    [--quick]
    python benchmarks/serve_load.py --threads 1                           # README, tiny row
    python benchmarks/serve_load.py --preset small --requests 40 --threads 1  # README, small row

`--threads` sets torch's threads in this process and the server alike (default: torch's own
choice, one per core). On a machine whose cores are busy with other work, 1 thread is often
much faster: a multi-threaded forward waits for its slowest thread.

Without --model a fresh preset model (`--preset`, default `tiny`; random weights) is built in
a temp dir: the server's cost does not depend on what the weights learned. `--quick` (what the
test suite runs): 2 rounds of 5 bare runs, 1 client x 5 requests, then 2 clients x 5 requests,
per mode. Traffic goes to 127.0.0.1 only and is bounded: at most 20 rounds of 32 clients x 1000
requests, and each load stops after --deadline seconds.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
import torch

from voxclass import Classifier
from voxclass.model import build_model

MAX_CLIENTS, MAX_REQUESTS, MAX_ROUNDS = 32, 1000, 20
MODES = {"in-process": "false", "model process": "true"}
"""The server's two ways to run the model (`voxclass serve --model-process`), by name."""


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


def batch_clips_per_second(clf: Classifier, clip: bytes, batch: int, runs: int) -> float:
    """Clips/s of `Classifier.predict_batch` on `batch` copies of the clip at that batch size
    (median over runs; decoding included, as the server does it too)."""
    clf.predict_batch([clip] * batch, batch_size=batch)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        clf.predict_batch([clip] * batch, batch_size=batch)
        times.append(time.perf_counter() - start)
    return batch / float(np.median(times))


def batch_rates(
    clf: Classifier, clip: bytes, batch: int, runs: int, thread_counts: list[int]
) -> dict[int, float]:
    """`batch_clips_per_second` at each torch thread count; this process's threads are set back
    after, since the next bare predict must run on the server's threads."""
    server_threads = torch.get_num_threads()
    rates = {}
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            rates[threads] = batch_clips_per_second(clf, clip, batch, runs)
    finally:
        torch.set_num_threads(server_threads)
    return rates


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its children, such as the server's model
    process (Linux /proc)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # a process that ended meanwhile
            continue
        if int(stat.parent.name) == pid or int(fields[1]) == pid:  # fields[1]: its parent
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


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


def classify_request(host: str, clip: bytes) -> bytes:
    """One keep-alive HTTP/1.1 POST of the clip to /v1/classify as a multipart upload, as
    bytes: built once, so the clients spend next to no CPU of the cores the server runs on."""
    boundary = "voxclass-serve-load"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="clip.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode() + clip + f"\r\n--{boundary}--\r\n".encode()
    head = (
        f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def run_clients(
    url: str, clip: bytes, clients: int, requests: int, deadline: float
) -> tuple[list[float], list[str]]:
    """Latencies (s) of successful requests and a description of each failed one. Each client
    keeps one connection and sends its requests one after another."""
    latencies: list[float] = []
    errors: list[str] = []
    stop_at = time.monotonic() + deadline
    host, port = url.removeprefix("http://").split(":")
    request = classify_request(f"{host}:{port}", clip)

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for _ in range(requests):
                if time.monotonic() > stop_at:
                    errors.append("deadline reached before this request")
                    continue
                start = time.perf_counter()
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30.0)
                status = head.split(b" ", 2)[1].decode()
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                if status == "200":
                    latencies.append(time.perf_counter() - start)
                else:
                    errors.append(f"HTTP {status}: {body[:200].decode(errors='replace')}")
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as err:
            errors.append(f"{type(err).__name__}: {err}")
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="trained or exported model dir")
    parser.add_argument(
        "--preset", choices=["tiny", "small"], default="tiny", help="model without --model"
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="per client and round")
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds per mode")
    parser.add_argument("--seconds", type=float, default=1.0, help="clip length")
    parser.add_argument("--bare-runs", type=int, default=100, help="per round")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds for each load")
    parser.add_argument("--threads", type=int, help="torch threads, here and in the server")
    parser.add_argument(
        "--quick", action="store_true", help="2 rounds of 1, then 2 clients x 5 requests"
    )
    args = parser.parse_args()
    if args.quick:
        args.clients, args.requests, args.bare_runs, args.rounds = 2, 5, 5, 2
    if not (
        1 <= args.clients <= MAX_CLIENTS
        and 1 <= args.requests <= MAX_REQUESTS
        and 1 <= args.rounds <= MAX_ROUNDS
    ):
        parser.error(
            f"--clients must be 1-{MAX_CLIENTS}, --requests 1-{MAX_REQUESTS}"
            f" and --rounds 1-{MAX_ROUNDS}"
        )

    env = dict(os.environ)
    all_cores = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
        env["OMP_NUM_THREADS"] = str(args.threads)  # read by torch when the server starts
    env["PYTHONUNBUFFERED"] = "1"  # a server that never gets healthy has its log shown whole
    # The reference for the server's throughput is the model called directly at its best:
    # predict_batch on the server's thread count and on all cores, whichever is faster.
    thread_counts = sorted({torch.get_num_threads(), all_cores})
    work = Path(tempfile.mkdtemp(prefix="voxclass-serve-load-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # models, data: all temporary
    model_dir = args.model or fresh_model(args.preset, work / "model")
    clf = Classifier.load(model_dir)
    clip = wav_clip(args.seconds, clf.sampling_rate)

    rounds: dict[str, list[Round]] = {}
    for mode, flag in MODES.items():
        with running_server(model_dir, flag, env, work / f"{flag}.log") as (url, pid):
            # Warm-up outside the measurement: the first requests pay for lazy imports.
            asyncio.run(run_clients(url, clip, args.clients, 2, args.deadline))
            rounds[mode] = [
                measure_round(clf, clip, url, pid, args, thread_counts) for _ in range(args.rounds)
            ]

    title = str(args.model) if args.model else f"fresh {args.preset} model, random weights"
    print(
        f"\n{title} ({clf.backend}); {args.seconds:g} s WAV clip at {clf.sampling_rate} Hz; "
        f"{args.rounds} rounds of {args.requests} requests per client on 127.0.0.1; "
        f"torch threads {torch.get_num_threads()}"
    )
    for mode, mode_rounds in rounds.items():
        print_rounds(mode, mode_rounds, args.clients, thread_counts)

    print("\nEach load, all rounds together:\n")
    loads = [(mode, n) for mode in MODES for n in (1, args.clients)]
    figures = {
        (mode, n): load_figures([r.single if n == 1 else r.concurrent for r in rounds[mode]])
        for mode, n in loads
    }
    print(f"{'':24}" + "".join(f"{f'{mode}, {n}':>22}" for mode, n in loads))
    for name in figures[loads[0]]:
        print(f"{name:24}" + "".join(f"{figures[load][name]:>22}" for load in loads))
    for mode, mode_rounds in rounds.items():
        errors = {e for r in mode_rounds for e in r.single.errors + r.concurrent.errors}
        for error in sorted(errors)[:5]:
            print(f"  error ({mode}): {error}")


@contextmanager
def running_server(
    model_dir: Path, model_process: str, env: dict, log: Path
) -> Iterator[tuple[str, int]]:
    """`voxclass serve --model-process MODEL_PROCESS`, healthy: its URL and pid. Stopped after."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "voxclass", "serve", str(model_dir), "--port", str(port)]
    command += ["--model-process", model_process]
    with open(log, "wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_healthy(url, server, log)
        yield url, server.pid
    finally:
        server.terminate()
        server.wait(timeout=30)


@dataclass
class Load:
    """One load on the server: its clients' measurements and the CPU time it took."""

    requests: int
    latencies: list[float]  # seconds, of the successful requests
    errors: list[str]
    wall: float
    server_cpu: float
    client_cpu: float

    @property
    def p50_ms(self) -> float:
        return 1000 * float(np.median(self.latencies)) if self.latencies else float("nan")

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall


@dataclass
class Round:
    """Two pairs, each reference measured in this process just before its load on the server."""

    bare_ms: float
    single: Load
    batch_rates: dict[int, float]  # clips/s by torch thread count
    concurrent: Load

    @property
    def p50_ratio(self) -> float:
        return self.single.p50_ms / self.bare_ms

    @property
    def throughput_ratio(self) -> float:
        return self.concurrent.throughput / max(self.batch_rates.values())


def measure_round(
    clf: Classifier, clip: bytes, url: str, pid: int, args, thread_counts: list[int]
) -> Round:
    """Reference, load, reference, load. The references run while the server is idle: no
    request is in flight between loads, so the two never compete for the cores."""
    bare_ms = 1000 * bare_predict_seconds(clf, clip, args.bare_runs)
    single = measure_load(url, clip, 1, args.requests, args.deadline, pid)
    batch_runs = max(3, args.bare_runs // 10)
    rates = batch_rates(clf, clip, args.clients, batch_runs, thread_counts)
    concurrent = measure_load(url, clip, args.clients, args.requests, args.deadline, pid)
    return Round(bare_ms, single, rates, concurrent)


def print_rounds(mode: str, rounds: list[Round], clients: int, thread_counts: list[int]) -> None:
    """One row per figure, one column per round, then the median and min-max of the row."""
    rows: list[tuple[str, list[float], str]] = [
        ("bare Classifier.predict, ms", [r.bare_ms for r in rounds], "{:.1f}"),
        ("1-client p50, ms", [r.single.p50_ms for r in rounds], "{:.1f}"),
        ("1-client p50 / bare (goal <= 1.3x)", [r.p50_ratio for r in rounds], "{:.2f}x"),
    ]
    for threads in thread_counts:
        name = f"predict_batch at batch {clients}, {threads} thread{'s' * (threads > 1)}, clips/s"
        rows.append((name, [r.batch_rates[threads] for r in rounds], "{:.1f}"))
    rows += [
        (f"{clients}-client req/s", [r.concurrent.throughput for r in rounds], "{:.1f}"),
        (
            f"{clients}-client req/s / predict_batch (goal >= 0.8x)",
            [r.throughput_ratio for r in rounds],
            "{:.2f}x",
        ),
    ]
    columns = [f"round {i}" for i in range(1, len(rounds) + 1)]
    print(f"\n{mode:52}" + "".join(f"{c:>10}" for c in [*columns, "median"]) + f"{'min-max':>14}")
    for name, values, fmt in rows:
        cells = [fmt.format(v) for v in [*values, float(np.median(values))]]
        spread = f"{fmt.format(min(values)).rstrip('x')}-{fmt.format(max(values))}"
        print(f"{name:52}" + "".join(f"{c:>10}" for c in cells) + f"{spread:>14}")


def measure_load(
    url: str, clip: bytes, clients: int, requests: int, deadline: float, server_pid: int
) -> Load:
    start, server_cpu, client_cpu = time.perf_counter(), cpu_seconds(server_pid), os.times()
    latencies, errors = asyncio.run(run_clients(url, clip, clients, requests, deadline))
    wall = time.perf_counter() - start
    server_cpu = cpu_seconds(server_pid) - server_cpu
    client_cpu = sum(os.times()[:2]) - sum(client_cpu[:2])
    return Load(clients * requests, latencies, errors, wall, server_cpu, client_cpu)


def load_figures(loads: list[Load]) -> dict[str, str]:
    """The printed figures of the same load over all rounds, as one load: latencies pooled,
    throughput and CPU per request over the summed time and requests."""
    total = sum(load.requests for load in loads)
    latencies = [t for load in loads for t in load.latencies]
    ms = 1000 * np.asarray(latencies or [np.nan])
    server_cpu = sum(load.server_cpu for load in loads)
    client_cpu = sum(load.client_cpu for load in loads)
    return {
        "requests": f"{total}",
        "errors": f"{sum(len(load.errors) for load in loads)}",
        "throughput": f"{len(latencies) / sum(load.wall for load in loads):.1f} req/s",
        "latency p50": f"{np.percentile(ms, 50):.1f} ms",
        "latency p99": f"{np.percentile(ms, 99):.1f} ms",
        "server CPU / request": f"{1000 * server_cpu / total:.1f} ms",
        "client CPU / request": f"{1000 * client_cpu / total:.1f} ms",
    }


if __name__ == "__main__":
    main()
