"""`voxclass serve`: an HTTP API and a web page over one loaded `Classifier`.

Routes: `GET /` (the page in `static/`), `GET /health`, `GET /v1/model`, `POST /v1/classify`,
`WS /v1/stream` (live classification: `run_stream`, `stream.py`), OpenAPI docs at `/docs`
(Swagger UI served from the fastapi-offline package: no CDN). Every HTTP error is JSON
`{"detail": "<what went wrong and what to do>"}`: 400 a Host header not allowed, 401
missing/wrong token, 413 upload over the limit, 415 audio that cannot be decoded, 422 audio
outside the server's limits or bad form fields, 500 a failure of the server (logged there).

Each upload is checked against the server's `AudioLimits` from its header before any sample is
decoded, then decoded in a small pool of threads (never on the event loop, never more than
`DECODE_THREADS` at once). Inference runs off the event loop too, and the clips of concurrent
requests share one forward pass (`Batcher`), so the server keeps answering while the model works.
`voxclass serve` runs that forward in a process of its own (`worker.ModelProcess`), so HTTP and
the model do not take turns under one GIL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import secrets
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .audio import AudioError, AudioLimitError, AudioLimits, load_audio
from .classifier import Classifier, Prediction
from .config import ConfigError
from .stream import (
    MIN_SILENCE,
    MIN_SILENCE_RANGE,
    StreamSession,
    StreamSettings,
    StreamSettingsError,
)
from .worker import ModelProcess, score_pieces

STATIC = Path(__file__).parent / "static"
log = logging.getLogger(__name__)

Scorer = Callable[[list[np.ndarray]], list[np.ndarray | Exception]]
"""One forward over waves at the model's rate: a row of probabilities per wave, or the error
of that wave alone (`worker.score_pieces`)."""

DEFAULT_MAX_SAMPLE_RATE = 48_000
"""Highest upload rate accepted unless `--max-sample-rate` says otherwise: what browsers and
phones record at. Models listen at 8-16 kHz, so higher rates only cost decoding time."""
MAX_CHANNELS = 2
"""Most channels accepted in an upload: decoding cost grows with channels, and a classifier
hears them mixed to mono anyway."""
DECODE_THREADS = 2
"""Uploads decoded at once; more wait their turn, so no number of clients can take every core
from the model."""
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
"""Host header values accepted by default: this machine's own names."""
MAX_STREAM_MESSAGE_BYTES = 1 << 20
"""Largest binary message on `/v1/stream` (1 MiB: over 5 s of f32 audio at 48 kHz); clients
send small chunks, tens of milliseconds each."""
DEFAULT_MAX_STREAM_SECONDS = 3600.0
"""Longest stream accepted unless `--max-stream-seconds` says otherwise: memory
stays bounded however long a stream runs, its CPU time does not."""


@dataclass
class ServeConfig:
    """How `voxclass serve` serves a model."""

    model: str
    """Trained (or exported) model directory."""
    host: str = "127.0.0.1"
    """Address to bind (0.0.0.0 exposes it to every network the machine is on)."""
    port: int = 8000
    """TCP port."""
    max_upload_mb: float = 20.0
    """Largest accepted upload (413 above)."""
    token: str | None = None
    """Require 'Authorization: Bearer TOKEN' on /v1/ (default: env VOXCLASS_TOKEN)."""
    max_audio_seconds: float | None = None
    """Longest accepted upload in seconds, checked from its header (422 above). Default: 10 of
    the model's windows, at least 60."""
    max_sample_rate: int = DEFAULT_MAX_SAMPLE_RATE
    """Highest accepted upload sample rate in Hz (422 above)."""
    allowed_hosts: list[str] | None = None
    """Host header values answered, comma-separated (400 otherwise; '*' for any). Default:
    localhost, 127.0.0.1, [::1] and --host unless it is 0.0.0.0."""
    max_stream_seconds: float = DEFAULT_MAX_STREAM_SECONDS
    """Longest /v1/stream in seconds of audio (closed with a reason above)."""
    stream_min_silence: float = MIN_SILENCE
    """Seconds of silence that end a /v1/stream segment (whole 32 ms detector frames): shorter
    gives segment events sooner and splits more words at a pause."""
    model_process: bool = True
    """Run the model's forwards in a child process of its own (false: in the server's
    process). Apart, HTTP and decoding run beside the forward instead of taking turns under
    Python's GIL."""


def default_max_audio_seconds(model_max_seconds: float) -> float:
    """Longest upload accepted unless `--max-audio-seconds` says otherwise: ten of the model's
    windows, and at least a minute. Cost grows with duration (decoding, and one forward per
    window), and a silent FLAC of any length fits in a few kilobytes, so the upload size alone
    bounds nothing."""
    return max(60.0, 10 * model_max_seconds)


def default_allowed_hosts(host: str) -> list[str]:
    """The loopback names, plus the address the server binds when it is one address (not all
    of them: 0.0.0.0 or ::)."""
    hosts = list(LOOPBACK_HOSTS)
    if host not in ("0.0.0.0", "::", ""):
        name = f"[{host}]" if ":" in host else host
        if name not in hosts:
            hosts.append(name)
    return hosts


def is_loopback(host: str) -> bool:
    """True for a bind address only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ModelInfo:
    """Answer of `GET /v1/model`."""

    labels: list[str]
    """Every label the model can answer, in the model's order."""
    sampling_rate: int
    """Rate (Hz) the model listens at; uploads at other rates are resampled."""
    max_seconds: float
    """Longest clip classified in one piece; longer audio gets a window timeline."""
    backend: str
    """`torch` or `onnx` (an exported model directory)."""
    max_audio_seconds: float
    """Longest upload this server accepts (422 above)."""
    max_sample_rate: int
    """Highest upload sample rate this server accepts (422 above)."""


@dataclass
class Health:
    """Answer of `GET /health`."""

    status: str
    """`ok` once the model is loaded."""


@dataclass(eq=False)
class Clip:
    """One request's wave in the `Batcher`: its windows are scored one forward at a time."""

    name: str
    wave: np.ndarray
    spans: list[tuple[int, int]]
    """The model's windows over `wave` (`Classifier.windows_of`); one for a short clip."""
    top_k: int
    future: asyncio.Future
    """Settled on its event loop with the Prediction or the error; cancelled if the client hung
    up."""
    probs: np.ndarray
    """One row of probabilities per span, filled as they are scored."""
    done: int = 0
    """Spans scored so far."""
    answered: bool = False
    """The Batcher's thread has sent the answer (the future settles a moment later)."""

    def answer(self, result: Prediction | None = None, error: Exception | None = None) -> None:
        """Settle the future from the Batcher's thread, on the future's own loop."""
        self.answered = True

        def settle() -> None:
            if self.future.done():  # hung up meanwhile
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        with suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            self.future.get_loop().call_soon_threadsafe(settle)


class Batcher:
    """Scores the clips of concurrent requests together; each request gets its own answer or
    its own error.

    Clips that fit in one model window go first, up to `max_batch` of them in one forward: on a
    CPU a forward on eight short clips costs little more than on one. A longer clip is scored
    one window per forward in between (long windows gain little from batching), so a long
    upload delays a short request by one window's forward at most, never by the whole clip.
    Requests that arrive while a forward runs join the next one. With `gather`, for a model in
    the server's own process: clients whose requests the last forward answered usually send
    their next one a moment later, and while such clients are still to come back a batch that
    is not full waits for them a little (a quarter of the last forward's time, 50 ms at most);
    otherwise concurrent clients settle into small alternating batches, each paying for a
    forward while the HTTP work and the model take turns under the GIL. A lone client is never
    waited for: its next request is the one that arrives. With a model in a process of its
    own, the next forward starts at once instead: the child computes one batch while the
    server parses the next, and waiting would idle both. One forward runs at a time: torch
    already spreads it over all cores. A forward that fails is retried piece by piece, so one
    bad clip fails only its own request.

    Forwards run on a thread of the Batcher's own, which starts the next forward once one ends
    (after the wait above, in-process) and hands answers to the event loop: the model never
    waits for the loop to finish parsing other requests first.
    """

    def __init__(
        self,
        clf: Classifier,
        score: Scorer | None = None,
        max_batch: int = 16,
        gather: bool = True,
    ):
        self.clf = clf
        self.score: Scorer = score or partial(score_pieces, clf)
        """Runs one forward: `worker.score_pieces` here, or `ModelProcess.score` there."""
        self.max_batch = max_batch
        self.gather = gather
        """Wait a little for clients coming back from the last forward (see above)."""
        self.pending: list[Clip] = []
        """Clips accepted and not yet answered, in arrival order (guarded by `work`)."""
        self.work = threading.Condition()
        """Notified when a clip arrives or `close` is called."""
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.returning = 0
        """Requests answered by the last forward minus requests that arrived since: clients
        likely to send their next request a moment from now (guarded by `work`)."""
        self.last_forward = 0.0
        """Seconds the last forward took."""

    async def predict(self, wave: np.ndarray, name: str, top_k: int) -> Prediction:
        """The top `top_k` labels of one wave (already at the model's rate), best first, with
        the window timeline when it is longer than the model's window."""
        spans = self.clf.windows_of(wave, None, None)
        probs = np.zeros((len(spans), len(self.clf.labels)), np.float32)
        future = asyncio.get_running_loop().create_future()
        with self.work:
            self.pending.append(Clip(name, wave, spans, top_k, future, probs))
            self.returning = max(0, self.returning - 1)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="voxclass-batcher")
                self.thread.daemon = True
                self.thread.start()
            self.work.notify()
        return await future

    def close(self) -> None:
        """Stop the thread once its forward ends; clips still waiting get an error. A later
        `predict` starts a new thread."""
        with self.work:
            self.stopping = True
            self.work.notify()
            waiting, self.pending, thread = self.pending, [], self.thread
        for clip in waiting:
            clip.answer(error=RuntimeError("the server is shutting down"))
        if thread is not None:
            thread.join()
        with self.work:
            self.thread, self.stopping = None, False

    def _next_batch(self) -> list[tuple[Clip, tuple[int, int]]]:
        """(clip, span) pairs for the next forward: waiting short clips, else the next window of
        the long clip with the fewest windows left. Called holding `work`."""
        # A client that hung up cancelled its future: its clip costs nothing more.
        self.pending = [c for c in self.pending if not (c.answered or c.future.cancelled())]
        short = [clip for clip in self.pending if len(clip.spans) == 1]
        if short:
            return [(clip, clip.spans[0]) for clip in short[: self.max_batch]]
        if not self.pending:
            return []
        clip = min(self.pending, key=lambda c: len(c.spans) - c.done)
        return [(clip, clip.spans[clip.done])]

    def _gather(self, batch: list) -> list:
        """The batch, grown by the clients coming back from the last forward (see the class
        docstring). Called holding `work`."""
        deadline = time.monotonic() + min(self.last_forward / 4, 0.05)
        while (
            self.gather
            and not self.stopping
            and self.returning > 0
            and len(batch) < self.max_batch
            and len(batch[0][0].spans) == 1  # short clips: a long clip's window goes alone
            and (left := deadline - time.monotonic()) > 0
        ):
            self.work.wait(left)
            batch = self._next_batch() or batch
        return batch

    def _run(self) -> None:
        while True:
            with self.work:
                while not self.stopping and not (batch := self._next_batch()):
                    self.work.wait()
                batch = self._gather(batch)
                if self.stopping:
                    return
            pieces = [clip.wave[a:b] for clip, (a, b) in batch]
            start = time.monotonic()
            try:
                rows = self.score(pieces)
            except Exception as err:  # a scorer's own failure fails its batch, not the server
                rows = [err] * len(pieces)
            self.last_forward = time.monotonic() - start
            finished = []
            for (clip, _), row in zip(batch, rows, strict=True):
                if isinstance(row, Exception):
                    finished.append((clip, row))
                    continue
                clip.probs[clip.done] = row
                clip.done += 1
                if clip.done == len(clip.spans):
                    finished.append((clip, None))
            with self.work:  # before the answers: a client may be back before the last is sent
                self.returning = len(finished)
            for clip, error in finished:
                if error is not None:
                    clip.answer(error=error)
                else:
                    clip.answer(
                        self.clf.prediction_of(
                            clip.name, clip.wave, clip.spans, clip.probs, clip.top_k
                        )
                    )


class BearerToken:
    """401 for `/v1/` requests without `Authorization: Bearer <token>`, decided from the
    headers alone so that nobody without the token gets an upload read."""

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = Headers(scope=scope).get("authorization")
            if given is None or not secrets.compare_digest(given.encode(), self.expected):
                detail = (
                    "this server needs a token: send the header 'Authorization: Bearer <token>'"
                    if given is None
                    else "wrong token in the Authorization header"
                )
                response = JSONResponse(
                    {"detail": detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class UploadLimit:
    """413 for request bodies over `max_bytes`: at once when Content-Length says so (nothing is
    read), else while the body streams in (chunked uploads), counting bytes as the app reads."""

    def __init__(self, app: ASGIApp, max_bytes: int, detail: str):
        self.app = app
        self.max_bytes = max_bytes
        self.detail = detail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = JSONResponse({"detail": self.detail}, status_code=413)
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await too_large(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                # Inside the route this becomes the 413 of the HTTPException handler.
                raise HTTPException(413, self.detail)
            return message

        await self.app(scope, counted, send)


class AllowedHosts:
    """400 for a request whose Host header names no allowed host, as starlette's
    TrustedHostMiddleware decides, answered in JSON like every other error. A web page on
    another site that re-points its name at 127.0.0.1 (DNS rebinding) still sends its own name
    as Host, so it cannot use a server on this machine."""

    def __init__(self, app: ASGIApp, hosts: list[str]):
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refused = False

        async def allowed(_: Scope, receive: Receive, __: Send) -> None:
            await self.app(scope, receive, send)

        async def refuse(message: Message) -> None:  # swallows the plain-text refusal
            nonlocal refused
            refused = True

        check = TrustedHostMiddleware(allowed, self.hosts, www_redirect=False)
        await check({**scope, "type": "http"}, receive, refuse)
        if refused and scope["type"] == "websocket":  # a handshake refused: HTTP 403
            await send({"type": "websocket.close", "code": 1008})
        elif refused:
            host = Headers(scope=scope).get("host", "")
            detail = (
                f"Host {host!r} is not one this server answers to ({', '.join(self.hosts)}): "
                "start it with --allowed-hosts NAME,... naming the host clients connect to"
            )
            await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)


STREAM_FIELDS = {"type", "token", "sampling_rate", "format", "hop", "top_k"}
"""Keys of `/v1/stream`'s first message."""
# WebSocket close codes (RFC 6455 section 7.4.1) that `/v1/stream` ends a connection with.
CLOSE_NORMAL = 1000  # the client sent {"type": "end"} and has every event
CLOSE_UNSUPPORTED = 1003  # an unknown sample format, or text where audio was expected
CLOSE_BAD_DATA = 1007  # a first message that is not the JSON asked for, a bad rate, NaN audio
CLOSE_POLICY = 1008  # a missing or wrong token, a stream over its length, another site's page
CLOSE_TOO_BIG = 1009  # one message over MAX_STREAM_MESSAGE_BYTES
CLOSE_ERROR = 1011  # the model failed


class StreamClosed(Exception):
    """Ends a `/v1/stream` connection with a WebSocket close code and a reason."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def stream_settings(
    message: dict,
    headers: Headers,
    token: str | None,
    limits: AudioLimits,
    min_silence: float = MIN_SILENCE,
) -> StreamSettings:
    """The settings of a `/v1/stream` first message (already parsed JSON), after the token
    check; StreamClosed naming the problem otherwise."""
    if not isinstance(message, dict):
        raise StreamClosed(CLOSE_BAD_DATA, "first message must be a JSON object")
    if token:
        given = message.get("token")
        header = headers.get("authorization")
        if given is None and header is None:
            raise StreamClosed(
                CLOSE_POLICY, "this server needs a token: put it in the first message"
            )
        expected = token.encode()
        if not (
            (isinstance(given, str) and secrets.compare_digest(given.encode(), expected))
            or (
                header is not None
                and secrets.compare_digest(header.encode(), b"Bearer " + expected)
            )
        ):
            raise StreamClosed(CLOSE_POLICY, "wrong token")
    unknown = sorted(set(message) - STREAM_FIELDS)
    if unknown:
        raise StreamClosed(
            CLOSE_BAD_DATA,
            f"unknown keys {', '.join(unknown)[:40]}: expected sampling_rate, "
            "format, hop, top_k, token",
        )
    if "sampling_rate" not in message:
        raise StreamClosed(CLOSE_BAD_DATA, "first message needs sampling_rate (Hz)")
    settings = StreamSettings(
        sampling_rate=message["sampling_rate"],
        sample_format=message.get("format", "pcm16"),
        hop=message.get("hop", 0.5),
        top_k=message.get("top_k", 5),
        min_silence=min_silence,
    )
    try:
        settings.check(limits)
    except StreamSettingsError as err:
        raise StreamClosed(
            CLOSE_UNSUPPORTED if err.setting == "format" else CLOSE_BAD_DATA, str(err)
        ) from None
    return settings


async def run_stream(
    ws: WebSocket,
    clf: Classifier,
    batcher: Batcher,
    token: str | None,
    limits: AudioLimits,
    max_stream_seconds: float,
    min_silence: float = MIN_SILENCE,
) -> None:
    """One `/v1/stream` connection: the first message, then audio until the client sends
    `{"type": "end"}` (the last events, then close 1000) or hangs up. A broken rule closes
    the connection with a code and a one-line reason."""
    origin = ws.headers.get("origin")
    if origin is not None and origin.split("://", 1)[-1] != ws.headers.get("host"):
        # Browsers let any site open a WebSocket to any address: only this server's own page.
        await ws.close(CLOSE_POLICY, "cross-origin stream refused: use this server's own page")
        return
    await ws.accept()
    try:
        first = await ws.receive()
        if first["type"] == "websocket.disconnect":
            return
        try:
            message = json.loads(first.get("text") or "")
        except ValueError:
            raise StreamClosed(
                CLOSE_BAD_DATA, 'first message must be JSON text, e.g. {"sampling_rate": 16000}'
            ) from None
        settings = stream_settings(message, ws.headers, token, limits, min_silence)
        session = StreamSession(clf, settings)
        await ws.send_json(
            {
                "type": "ready",
                "labels": clf.labels,
                "sampling_rate": clf.sampling_rate,
                "window": clf.max_seconds,
                "hop": settings.hop,
            }
        )
        max_bytes = max_stream_seconds * settings.sampling_rate * 4  # f32: the larger format
        if settings.sample_format == "pcm16":
            max_bytes /= 2
        received = 0
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                if (message.get("text") or "").replace(" ", "") != '{"type":"end"}':
                    raise StreamClosed(
                        CLOSE_UNSUPPORTED, 'after the first message: audio bytes or {"type": "end"}'
                    )
                steps = session.finish()
            elif len(data) > MAX_STREAM_MESSAGE_BYTES:
                raise StreamClosed(
                    CLOSE_TOO_BIG,
                    f"message over {MAX_STREAM_MESSAGE_BYTES} bytes: send smaller chunks",
                )
            elif received + len(data) > max_bytes:
                raise StreamClosed(
                    CLOSE_POLICY, f"stream over the {max_stream_seconds:g} s limit: open a new one"
                )
            else:
                received += len(data)
                try:
                    steps = await run_in_threadpool(session.feed, data)
                except AudioError as err:
                    raise StreamClosed(CLOSE_BAD_DATA, f"audio {err.reason}") from None
            # Every wave of these steps goes to the batcher at once: a segment released with
            # a hop shares its forward instead of waiting for the hop's own.
            predictions = [
                asyncio.ensure_future(batcher.predict(step.wave, "stream", settings.top_k))
                if step.wave is not None
                else None
                for step in steps
            ]
            try:
                for step, prediction in zip(steps, predictions, strict=True):
                    result = None
                    if prediction is not None:
                        try:
                            result = await prediction
                        except Exception as err:
                            log.error("classifying a stream failed", exc_info=err)
                            raise StreamClosed(
                                CLOSE_ERROR, "the model failed (see the server log)"
                            ) from None
                    await ws.send_json(step.done(result))
            finally:  # a hang-up or failure: the batcher skips the waves nobody awaits
                for prediction in predictions:
                    if prediction is not None:
                        prediction.cancel()
            if session.finished:
                await ws.close(CLOSE_NORMAL, "end of stream")
                return
    except StreamClosed as closed:
        await ws.close(closed.code, closed.reason.encode()[:123].decode(errors="ignore"))
    except WebSocketDisconnect:
        pass


def create_app(
    model: str | Path | Classifier,
    max_upload_mb: float = 20.0,
    token: str | None = None,
    max_audio_seconds: float | None = None,
    max_sample_rate: int = DEFAULT_MAX_SAMPLE_RATE,
    allowed_hosts: list[str] | None = None,
    max_stream_seconds: float = DEFAULT_MAX_STREAM_SECONDS,
    stream_min_silence: float = MIN_SILENCE,
    model_process: bool = False,
) -> FastAPI:
    """The app over one classifier, loaded here once (a trained or exported model dir).

    `max_upload_mb` bounds the whole request body (the file plus a little multipart framing).
    `token`: when set, `/v1/` routes need `Authorization: Bearer <token>`; an empty token is a
    ConfigError (it would mean no authentication). `max_audio_seconds` (default
    `default_max_audio_seconds` of the model) and `max_sample_rate` bound each upload, checked
    from its header before decoding. `allowed_hosts`: accepted Host header values (default the
    loopback names; `*` accepts any). `max_stream_seconds` bounds each `/v1/stream`, and
    `stream_min_silence` is the silence that ends its segments (`StreamSettings.min_silence`).
    `model_process`: forwards (/v1/classify and /v1/stream) run in a `ModelProcess` loaded
    from the model dir (ConfigError for a `Classifier` object), stopped when the app shuts
    down.
    """
    if token is not None and not token.strip():
        raise ConfigError(
            "--token is empty (is VOXCLASS_TOKEN set to nothing?): give a token, or leave it "
            "out to serve without authentication"
        )
    if max_audio_seconds is not None and not max_audio_seconds > 0:
        raise ConfigError(f"--max-audio-seconds must be positive, got {max_audio_seconds:g}")
    if max_sample_rate < AudioLimits.min_rate:
        raise ConfigError(
            f"--max-sample-rate must be at least {AudioLimits.min_rate} Hz, got {max_sample_rate}"
        )
    low, high = MIN_SILENCE_RANGE
    if not low <= stream_min_silence <= high:
        raise ConfigError(
            f"--stream-min-silence must be {low:g}-{high:g} seconds, got {stream_min_silence:g}"
        )
    hosts = list(LOOPBACK_HOSTS) if allowed_hosts is None else allowed_hosts
    try:
        TrustedHostMiddleware(None, hosts)  # type: ignore[arg-type]
    except AssertionError as err:
        raise ConfigError(f"--allowed-hosts {','.join(hosts)}: {err}") from None
    if model_process and isinstance(model, Classifier):
        raise ConfigError("model_process needs a model directory, not a loaded Classifier")
    worker = ModelProcess(model) if model_process else None  # type: ignore[arg-type]
    if worker:
        clf = worker.classifier
    else:
        clf = model if isinstance(model, Classifier) else Classifier.load(model)
    limits = AudioLimits(
        max_seconds=max_audio_seconds or default_max_audio_seconds(clf.max_seconds),
        max_rate=max_sample_rate,
        max_channels=MAX_CHANNELS,
        option="--max-audio-seconds",
    )
    batcher = Batcher(clf, worker.score if worker else None, gather=worker is None)
    decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="voxclass-decode")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.close()
        if worker:
            worker.close()

    app = FastAPIOffline(
        title="voxclass",
        version=__version__,
        description="Audio classification: upload a clip to `/v1/classify`. Web page at `/`.",
        redoc_url=None,
        swagger_ui_parameters={"validatorUrl": None},  # the validator badge calls a web service
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    too_large = (
        f"upload over the {max_upload_mb:g} MB limit: send a shorter clip, or start the server "
        "with a larger --max-upload-mb"
    )
    app.add_middleware(UploadLimit, max_bytes=int(max_upload_mb * 1024 * 1024), detail=too_large)
    if token:  # added after the upload limit, so it runs first: no token, no upload read
        app.add_middleware(BearerToken, token=token)
    if "*" not in hosts:
        app.add_middleware(AllowedHosts, hosts=hosts)  # runs first of all

    @app.exception_handler(RequestValidationError)
    async def bad_form(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(part) for part in e['loc'][1:]) or 'request'}: {e['msg']}"
            for e in err.errors()
        ]
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    @app.exception_handler(Exception)
    async def server_error(request: Request, err: Exception) -> JSONResponse:
        # Starlette logs the traceback after this answer; the client gets one line.
        return JSONResponse(
            {"detail": "internal server error (the server's log has the details)"},
            status_code=500,
        )

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health")
    async def health() -> Health:
        """Liveness: answers as soon as the model is loaded (never needs the token)."""
        return Health(status="ok")

    @app.get("/v1/model")
    async def model_info() -> ModelInfo:
        """What the loaded model answers, how it listens, and what uploads are accepted."""
        return ModelInfo(
            clf.labels,
            clf.sampling_rate,
            clf.max_seconds,
            clf.backend,
            limits.max_seconds,
            limits.max_rate,
        )

    @app.post(
        "/v1/classify",
        responses={
            401: {"description": "Missing or wrong bearer token"},
            413: {"description": "Upload over --max-upload-mb"},
            415: {"description": "The file is not audio the server can decode"},
            422: {
                "description": "Audio over --max-audio-seconds, outside the accepted sample "
                "rates or channels (checked from its header), or bad form fields"
            },
            500: {"description": "The server failed on this clip (details in its log)"},
        },
    )
    async def classify(
        file: UploadFile = File(..., description="An audio file (WAV, FLAC, OGG, MP3, ...)."),
        top_k: int = Form(5, ge=1, description="How many labels to return, best first."),
    ) -> Prediction:
        """Top-k labels and scores of one clip, and its duration in seconds. Audio longer than
        the model's `max_seconds` is classified in windows: `windows` holds the timeline and the
        top-level scores are the mean over windows."""
        name = file.filename or "upload"
        data = await file.read()
        loop = asyncio.get_running_loop()
        try:
            wave = await loop.run_in_executor(decoder, load_audio, data, clf.sampling_rate, limits)
        except AudioLimitError as err:
            raise HTTPException(422, f"{name}: {err.reason}") from None
        except AudioError as err:
            raise HTTPException(415, f"{name}: {err.reason}") from None
        try:
            return await batcher.predict(wave, name, top_k)
        except Exception as err:
            log.error("classifying %s failed", name, exc_info=err)
            raise HTTPException(
                500, f"{name}: the model failed on this clip (the server's log has the details)"
            ) from None

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        """Live classification (see `run_stream` and the README's Live streaming section)."""
        await run_stream(ws, clf, batcher, token, limits, max_stream_seconds, stream_min_silence)

    if token:  # show the scheme in /docs, so "Authorize" there sends the header
        schema = app.openapi()
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"}
        }
        for path, operations in schema["paths"].items():
            if path.startswith("/v1/"):
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
    return app


def exposure_warnings(host: str, token: str | None, allowed_hosts: list[str] | None) -> list[str]:
    """What to tell the person starting a server that other machines can reach."""
    if is_loopback(host):
        return []
    warnings = []
    if not token:
        warnings.append(
            f"warning: serving on {host} without --token: anyone who can reach this machine "
            "can use the API; set --token (or VOXCLASS_TOKEN)"
        )
    if allowed_hosts is None and host in ("0.0.0.0", "::"):
        warnings.append(
            f"warning: only requests addressed to {', '.join(LOOPBACK_HOSTS)} are answered; "
            "name the host clients connect to with --allowed-hosts"
        )
    return warnings


def serve(
    model: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: float = 20.0,
    token: str | None = None,
    max_audio_seconds: float | None = None,
    max_sample_rate: int = DEFAULT_MAX_SAMPLE_RATE,
    allowed_hosts: list[str] | None = None,
    max_stream_seconds: float = DEFAULT_MAX_STREAM_SECONDS,
    stream_min_silence: float = MIN_SILENCE,
    model_process: bool = True,
) -> None:
    """Load the model once and serve until interrupted. `allowed_hosts` defaults to
    `default_allowed_hosts(host)`; a bind other machines can reach without a token, or on all
    addresses with only the loopback names allowed, is warned about on stderr."""
    import uvicorn

    app = create_app(
        model,
        max_upload_mb,
        token,
        max_audio_seconds,
        max_sample_rate,
        default_allowed_hosts(host) if allowed_hosts is None else allowed_hosts,
        max_stream_seconds=max_stream_seconds,
        stream_min_silence=stream_min_silence,
        model_process=model_process,
    )
    for warning in exposure_warnings(host, token, allowed_hosts):
        print(warning, file=sys.stderr)
    uvicorn.run(app, host=host, port=port)
