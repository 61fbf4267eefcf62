"""`voxclass serve`: an HTTP API and a web page over one loaded `Classifier`.

Routes: `GET /` (the page in `static/`), `GET /health`, `GET /v1/model`, `POST /v1/classify`,
OpenAPI docs at `/docs`. Every error is JSON `{"detail": "<what went wrong and what to do>"}`:
401 missing/wrong token, 413 upload over the limit, 415 audio that cannot be decoded, 422 bad
form fields.

Inference runs off the event loop, and the clips of concurrent requests share one forward pass
(`Batcher`), so the server keeps answering while the model works.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .audio import AudioError
from .classifier import Classifier, Prediction

STATIC = Path(__file__).parent / "static"


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


@dataclass
class Health:
    """Answer of `GET /health`."""

    status: str
    """`ok` once the model is loaded."""


class Batcher:
    """Runs the clips of concurrent requests through the model together.

    On a CPU a forward pass on eight short clips costs little more than on one (tiny preset, 1 s
    clips, one thread: 3.2 ms for one, 5.6 ms for eight), so under load a request waits about
    one batched forward instead of queueing behind every other request. Requests
    that arrive while a batch runs form the next batch; nothing waits on a timer. One batch runs
    at a time: torch already spreads a forward over all cores.
    """

    def __init__(self, clf: Classifier, max_batch: int = 16):
        self.clf = clf
        self.max_batch = max_batch
        self.pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self.worker: asyncio.Task | None = None

    async def predict(self, wave: np.ndarray) -> Prediction:
        """All labels for one wave (already at the model's rate), best first."""
        future = asyncio.get_running_loop().create_future()
        self.pending.append((wave, future))
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
            try:
                results = await run_in_threadpool(
                    self.clf.predict_batch,
                    [wave for wave, _ in batch],
                    self.clf.sampling_rate,
                    len(self.clf.labels),
                )
            except Exception as err:  # reaches every waiting request as its own error
                for _, future in batch:
                    if not future.done():  # a client that hung up cancels its future
                        future.set_exception(err)
            else:
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)


def top_k_of(prediction: Prediction, k: int, source: str) -> Prediction:
    """The first `k` labels of a prediction (and of each window), renamed to `source`."""
    windows = None
    if prediction.windows is not None:
        windows = [replace(w, labels=w.labels[:k], scores=w.scores[:k]) for w in prediction.windows]
    return replace(
        prediction,
        source=source,
        labels=prediction.labels[:k],
        scores=prediction.scores[:k],
        windows=windows,
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


def create_app(
    model: str | Path | Classifier, max_upload_mb: float = 20.0, token: str | None = None
) -> FastAPI:
    """The app over one classifier, loaded here once (a trained or exported model dir).

    `max_upload_mb` bounds the whole request body (the file plus a little multipart framing).
    `token`: when set, `/v1/` routes need `Authorization: Bearer <token>`.
    """
    clf = model if isinstance(model, Classifier) else Classifier.load(model)
    batcher = Batcher(clf)
    app = FastAPI(
        title="voxclass",
        version=__version__,
        description="Audio classification: upload a clip to `/v1/classify`. Web page at `/`.",
    )
    too_large = (
        f"upload over the {max_upload_mb:g} MB limit: send a shorter clip, or start the server "
        "with a larger --max-upload-mb"
    )
    app.add_middleware(UploadLimit, max_bytes=int(max_upload_mb * 1024 * 1024), detail=too_large)
    if token:  # added last, so it runs first: no token, no upload read
        app.add_middleware(BearerToken, token=token)

    @app.exception_handler(RequestValidationError)
    async def bad_form(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(part) for part in e['loc'][1:]) or 'request'}: {e['msg']}"
            for e in err.errors()
        ]
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

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
        """What the loaded model answers and how it listens."""
        return ModelInfo(clf.labels, clf.sampling_rate, clf.max_seconds, clf.backend)

    @app.post(
        "/v1/classify",
        responses={
            401: {"description": "Missing or wrong bearer token"},
            413: {"description": "Upload over --max-upload-mb"},
            415: {"description": "The file is not audio the server can decode"},
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
        try:
            wave = await run_in_threadpool(clf.load_wave, data)
        except AudioError as err:
            raise HTTPException(415, f"{name}: {err.reason}") from None
        return top_k_of(await batcher.predict(wave), top_k, name)

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


def serve(
    model: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: float = 20.0,
    token: str | None = None,
) -> None:
    """Load the model once and serve until interrupted."""
    import uvicorn

    uvicorn.run(create_app(model, max_upload_mb, token), host=host, port=port)
