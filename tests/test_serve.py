"""`voxclass serve`: every route and error through FastAPI's TestClient, hostile uploads refused
from their header, per-clip errors inside a batch, the Host allow-list, inference off the event
loop with concurrent requests batched (gated, no sleeps), the CLI command, an exported ONNX
model, offline /docs, the abuse benchmark's quick run, and the web page driven in headless
Debian chromium (marker `browser`)."""

from __future__ import annotations

import asyncio
import io
import re
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from conftest import TONES, burst, free_port
from fastapi.testclient import TestClient

from voxclass import Classifier, cli
from voxclass.classifier import Prediction
from voxclass.config import ConfigError
from voxclass.serve import STATIC, Batcher, create_app

RATE = 8000  # the tone model's rate (tiny preset)
ROOT = Path(__file__).resolve().parents[1]


def local(app, **kwargs) -> TestClient:
    """A TestClient addressing the app as `localhost` (the default allow-list has no
    `testserver`)."""
    return TestClient(app, base_url="http://localhost", **kwargs)


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


async def async_wait_until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def wav_bytes(wave: np.ndarray, rate: int = RATE, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format=fmt)
    return buffer.getvalue()


def upload(name: str, data: bytes, **form: str) -> dict:
    return {"files": {"file": (name, data, "audio/wav")}, "data": form}


@pytest.fixture(scope="module")
def clf(trained_tone_model) -> Classifier:
    return Classifier.load(trained_tone_model)


@pytest.fixture(scope="module")
def client(clf) -> TestClient:
    with local(create_app(clf)) as test_client:
        yield test_client


def test_health_and_model_description(client, clf):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/v1/model").json()
    assert info == {
        "labels": sorted(TONES),
        "sampling_rate": RATE,
        "max_seconds": clf.max_seconds,
        "backend": "torch",
        "max_audio_seconds": max(60.0, 10 * clf.max_seconds),
        "max_sample_rate": 48000,
    }


def same_as_classifier(answer: dict, expected: Prediction) -> None:
    """The server answers exactly what `Classifier.predict` answers for the same bytes."""
    assert answer["labels"] == expected.labels
    np.testing.assert_allclose(answer["scores"], expected.scores, atol=1e-5)
    assert answer["duration"] == pytest.approx(expected.duration)


@pytest.mark.parametrize("label", list(TONES))
def test_classify_answers_like_the_classifier_best_first(client, clf, label):
    clip = wav_bytes(burst(TONES[label], 1.2, RATE, seed=0))
    answer = client.post("/v1/classify", **upload(f"{label}.wav", clip)).json()
    assert answer["source"] == f"{label}.wav" and answer["windows"] is None
    assert sorted(answer["labels"]) == sorted(TONES)  # default top_k 5 > 3 labels: all of them
    assert answer["scores"] == sorted(answer["scores"], reverse=True)
    assert answer["duration"] == pytest.approx(1.2, abs=1e-3)
    same_as_classifier(answer, clf.predict(clip))


def test_top_k_limits_the_labels(client, clf):
    clip = wav_bytes(burst(TONES["high"], 1.0, RATE))
    answer = client.post("/v1/classify", **upload("h.wav", clip, top_k="1")).json()
    assert len(answer["labels"]) == len(answer["scores"]) == 1
    same_as_classifier(answer, clf.predict(clip, top_k=1))


def test_other_formats_and_rates_are_decoded_and_resampled(client, clf):
    clip = wav_bytes(burst(TONES["low"], 1.0, 44100), 44100, fmt="FLAC")
    answer = client.post("/v1/classify", **upload("low.flac", clip)).json()
    assert answer["duration"] == pytest.approx(1.0, abs=1e-3)
    same_as_classifier(answer, clf.predict(clip))


def test_long_upload_returns_the_window_timeline(client, clf):
    seconds = 3 * clf.max_seconds
    parts = [burst(TONES[label], seconds / 3, RATE, seed=i) for i, label in enumerate(TONES)]
    clip = wav_bytes(np.concatenate(parts))
    answer = client.post("/v1/classify", **upload("long.wav", clip, top_k="2")).json()
    assert answer["duration"] == pytest.approx(seconds, abs=1e-2)
    windows = answer["windows"]
    assert len(windows) >= 3 and windows[0]["start"] == 0
    assert windows[-1]["end"] == pytest.approx(seconds, abs=1e-2)
    expected = clf.predict(clip, top_k=2)
    same_as_classifier(answer, expected)
    for got, want in zip(windows, expected.windows, strict=True):
        assert (got["start"], got["end"], got["labels"]) == (want.start, want.end, want.labels)
        np.testing.assert_allclose(got["scores"], want.scores, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("notes.wav", b"this is text, not audio at all\n" * 4, "the file holds text"),
        ("cut.wav", wav_bytes(burst(500, 1.0, RATE))[:30], "No 'data' chunk"),
        ("empty.wav", b"", "empty file"),
    ],
)
def test_undecodable_upload_is_415_naming_the_file(client, name, data, reason):
    response = client.post("/v1/classify", **upload(name, data))
    assert response.status_code == 415
    detail = response.json()["detail"]
    assert detail.startswith(f"{name}: ") and reason in detail


@pytest.mark.parametrize(
    ("request_kwargs", "culprit"),
    [
        ({"data": {"top_k": "2"}}, "file: Field required"),
        (upload("a.wav", wav_bytes(burst(500, 1.0, RATE)), top_k="0"), "top_k: "),
        (upload("a.wav", wav_bytes(burst(500, 1.0, RATE)), top_k="many"), "top_k: "),
    ],
)
def test_bad_form_fields_are_422_in_words(client, request_kwargs, culprit):
    response = client.post("/v1/classify", **request_kwargs)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], str) and culprit in response.json()["detail"]


def test_upload_over_the_limit_is_413_before_the_body_is_read(clf):
    limited = local(create_app(clf, max_upload_mb=0.01))  # 10,485 bytes
    small = wav_bytes(burst(500, 0.5, RATE))  # 8 kB
    assert limited.post("/v1/classify", **upload("ok.wav", small)).status_code == 200
    big = wav_bytes(burst(500, 1.0, RATE))  # 16 kB
    response = limited.post("/v1/classify", **upload("big.wav", big))
    assert response.status_code == 413
    assert "0.01 MB limit" in response.json()["detail"]
    assert "--max-upload-mb" in response.json()["detail"]


def test_chunked_upload_is_cut_off_at_the_limit_while_streaming(clf):
    """No Content-Length: the body is counted as it arrives, and reading stops at the limit
    (the ASGI receive channel is pulled only a little past it, never to the end)."""
    app = create_app(clf, max_upload_mb=0.01)
    boundary = "voxclassboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    chunks = [head] + [b"\0" * 1000] * 200  # 200 kB in all
    pulled = 0

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": chunks[pulled - 1], "more_body": pulled < 200}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/classify",
        "raw_path": b"/v1/classify",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"localhost"),
            (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
            (b"transfer-encoding", b"chunked"),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert b"MB limit" in b"".join(m.get("body", b"") for m in sent[1:])
    assert pulled <= 12  # 10.5 kB limit, 1 kB chunks: stopped right after the limit


def test_chunked_upload_over_the_limit_through_the_client_is_413(clf):
    limited = local(create_app(clf, max_upload_mb=0.01))

    def body():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.wav"\r\n\r\n'
        yield from [b"\0" * 4096] * 10

    response = limited.post(
        "/v1/classify",
        content=body(),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_token_is_required_on_the_api_but_not_on_health_docs_or_page(clf):
    guarded = local(create_app(clf, token="s3cret"))
    clip = wav_bytes(burst(TONES["mid"], 1.0, RATE))

    missing = guarded.post("/v1/classify", **upload("m.wav", clip))
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer <token>" in missing.json()["detail"]
    wrong = guarded.get("/v1/model", headers={"Authorization": "Bearer guess"})
    assert wrong.status_code == 401 and "wrong token" in wrong.json()["detail"]
    assert guarded.get("/v1/model", headers={"Authorization": "s3cret"}).status_code == 401

    right = {"Authorization": "Bearer s3cret"}
    answer = guarded.post("/v1/classify", headers=right, **upload("m.wav", clip))
    assert answer.status_code == 200 and answer.json()["labels"][0] == "mid"
    assert guarded.get("/v1/model", headers=right).json()["labels"] == sorted(TONES)
    for path in ("/health", "/", "/docs", "/openapi.json", "/static/app.js"):
        assert guarded.get(path).status_code == 200, path
    # /docs offers the token ("Authorize") for the /v1/ routes.
    schema = guarded.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["paths"]["/v1/classify"]["post"]["security"] == [{"bearer": []}]


def test_openapi_docs_describe_the_routes(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = client.get("/openapi.json").json()
    assert {"/health", "/v1/model", "/v1/classify"} <= set(schema["paths"])
    answers = schema["paths"]["/v1/classify"]["post"]["responses"]
    assert "413" in answers
    ok = answers["200"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    fields = schema["components"]["schemas"][ok]["properties"]
    assert {"source", "labels", "scores", "duration", "windows"} <= set(fields)
    assert "securitySchemes" not in schema.get("components", {})  # no token, no Authorize


def test_page_is_served_with_its_assets_and_needs_no_network(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="file"' in page.text and 'id="record"' in page.text
    for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        response = client.get(f"/static/{asset}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    for path in STATIC.iterdir():  # works offline: nothing is fetched from another host
        text = path.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path


def test_exported_onnx_model_serves_the_same_labels(trained_tone_model, clf, tmp_path):
    from voxclass.export import export

    export(trained_tone_model, tmp_path / "onnx")
    onnx_client = local(create_app(tmp_path / "onnx"))
    assert onnx_client.get("/v1/model").json()["backend"] == "onnx"
    for freq in TONES.values():
        clip = wav_bytes(burst(freq, 1.2, RATE, seed=5))
        answer = onnx_client.post("/v1/classify", **upload("c.wav", clip)).json()
        expected = clf.predict(clip)  # the torch model it was exported from
        assert answer["labels"] == expected.labels
        np.testing.assert_allclose(answer["scores"], expected.scores, atol=1e-3)


def test_the_model_is_loaded_once_for_all_requests(trained_tone_model, monkeypatch):
    loads: list[Path] = []
    real_load = Classifier.load.__func__

    def counted_load(cls, path):
        loads.append(path)
        return real_load(cls, path)

    monkeypatch.setattr(Classifier, "load", classmethod(counted_load))
    served = local(create_app(trained_tone_model))
    clip = wav_bytes(burst(TONES["low"], 1.0, RATE))
    for _ in range(3):
        assert served.post("/v1/classify", **upload("l.wav", clip)).status_code == 200
    assert served.get("/v1/model").status_code == 200
    assert loads == [trained_tone_model]


class GatedClassifier(Classifier):
    """The real tone classifier, but each forward waits for `gate`, its pieces' lengths are
    recorded, and a forward holding a piece of length `poison` raises."""

    def __init__(self, clf: Classifier, poison: int = -1):
        super().__init__(clf.runtime)
        self.gate = threading.Event()
        self.batches: list[list[int]] = []
        self.poison = poison

    def probabilities(self, waves, batch_size=16):
        self.batches.append([len(w) for w in waves])
        assert self.gate.wait(30), "test never opened the gate"
        if self.poison in self.batches[-1]:
            raise RuntimeError("poisoned clip")
        return super().probabilities(waves, batch_size)


async def post_all(app, uploads: list[tuple[str, bytes]], wait_for) -> list[httpx.Response]:
    """Send the first upload, wait until its forward is running (gated), send the rest, wait
    until `wait_for(batcher)` holds, then let the model run: every later upload queued while
    the first one ran. Returns the responses in upload order."""
    transport = httpx.ASGITransport(app=app)
    batcher, gated = app.state.batcher, app.state.batcher.clf
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:

        async def classify(name: str, data: bytes) -> httpx.Response:
            return await http.post("/v1/classify", files={"file": (name, data, "audio/wav")})

        first = asyncio.create_task(classify(*uploads[0]))
        await async_wait_until(lambda: gated.batches, "the first forward")
        rest = [asyncio.create_task(classify(*upload)) for upload in uploads[1:]]
        await async_wait_until(lambda: wait_for(batcher), "the requests to queue")
        gated.gate.set()
        return [await first] + [await task for task in rest]


def test_inference_runs_off_the_event_loop_and_concurrent_requests_share_a_batch(clf):
    gated = GatedClassifier(clf)
    app = create_app(gated)
    clips = {label: wav_bytes(burst(freq, 1.0, RATE, seed=9)) for label, freq in TONES.items()}

    async def scenario() -> tuple[list[httpx.Response], int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            waiting = asyncio.create_task(
                post_all(
                    app,
                    [(f"{label}.wav", clips[label]) for label in ("low", "mid", "high", "low")],
                    lambda batcher: len(batcher.pending) == 4,
                )
            )
            await async_wait_until(lambda: gated.batches, "the first forward")
            # The loop is free while the model works: health answers at once.
            health = await asyncio.wait_for(http.get("/health"), 10)
            return await waiting, health.status_code

    responses, health_status = asyncio.run(scenario())
    assert health_status == 200
    # The three requests that waited ran as one forward.
    assert [len(batch) for batch in gated.batches] == [1, 3]
    answers = [r.json() for r in responses]
    assert [a["source"] for a in answers] == ["low.wav", "mid.wav", "high.wav", "low.wav"]
    for answer in answers:  # batching changed no answer
        same_as_classifier(answer, clf.predict(clips[answer["source"][:-4]]))


def test_one_bad_clip_fails_only_its_own_request_in_a_batch(clf, caplog):
    """Four good clips batched with one the model fails on: four answers and one JSON 500
    naming the bad clip (its traceback in the server's log, not in the answer)."""
    good = {f"{k}.wav": wav_bytes(burst(freq, 1.0, RATE, seed=3)) for k, freq in TONES.items()}
    good["low2.wav"] = wav_bytes(burst(TONES["low"], 1.1, RATE, seed=4))
    bad = wav_bytes(burst(TONES["mid"], 0.7, RATE))
    app = create_app(GatedClassifier(clf, poison=int(0.7 * RATE)))
    uploads = [("first.wav", good["low.wav"]), *good.items()]
    uploads.insert(3, ("bad.wav", bad))
    responses = asyncio.run(post_all(app, uploads, lambda batcher: len(batcher.pending) == 6))

    by_name = dict(zip([name for name, _ in uploads], responses, strict=True))
    failed = by_name.pop("bad.wav")
    assert failed.status_code == 500
    assert failed.json() == {
        "detail": "bad.wav: the model failed on this clip (the server's log has the details)"
    }
    assert "poisoned clip" in caplog.text and "bad.wav" in caplog.text
    for name, response in by_name.items():
        assert response.status_code == 200, response.text
        data = good["low.wav"] if name == "first.wav" else good[name]
        same_as_classifier(response.json(), clf.predict(data))
    batches = app.state.batcher.clf.batches
    assert [len(batch) for batch in batches[:2]] == [1, 5]  # the failed forward held all five
    assert sorted(len(b) for b in batches[2:]) == [1] * 5  # then each clip alone


def closed_loop_batches(
    clf: Classifier, clients: int, requests: int
) -> tuple[list[int], list[int]]:
    """The batch sizes a Batcher runs for `clients` that each send their next request as soon
    as the last is answered, `requests` each (every forward takes 100 ms), and how many clients
    it still expected back as each forward started."""
    sizes: list[int] = []
    expected: list[int] = []

    def score(pieces):
        sizes.append(len(pieces))
        expected.append(batcher.returning)
        time.sleep(0.1)  # a client's turn-around is far shorter than the wait (25 ms)
        return [np.full(len(clf.labels), 1 / len(clf.labels), np.float32)] * len(pieces)

    batcher = Batcher(clf, score)
    wave = burst(TONES["low"], 0.5, RATE)

    async def client(i: int) -> None:
        for _ in range(requests):
            await batcher.predict(wave, f"{i}.wav", 1)

    async def everyone() -> None:
        await asyncio.gather(*(client(i) for i in range(clients)))

    try:
        asyncio.run(everyone())
    finally:
        batcher.close()
    return sizes, expected


def test_clients_coming_back_from_a_forward_are_waited_for_and_a_lone_one_is_not(clf):
    """Closed-loop clients fill whole batches: without waiting for those the last forward
    answered, the first request goes alone and the rest alternate in two smaller batches."""
    sizes, _ = closed_loop_batches(clf, clients=8, requests=6)
    assert sum(sizes) == 48
    # The first forward may start before every client has sent; the last is short when the
    # client that started first is done first.
    assert len(sizes) <= 8 and sizes.count(8) >= len(sizes) - 2, sizes
    # A lone client's next request is the one the Batcher expected: nobody else is waited for.
    assert closed_loop_batches(clf, clients=1, requests=5) == ([1] * 5, [0] * 5)


def test_a_long_clip_delays_a_short_one_by_one_window_at_most(clf):
    """A clip of many windows is scored one window per forward, and a short clip that arrives
    meanwhile goes into the next forward instead of waiting for the whole long clip."""
    gated = GatedClassifier(clf)
    app = create_app(gated)
    long_clip = wav_bytes(burst(TONES["low"], 6 * clf.max_seconds, RATE))
    short_clip = wav_bytes(burst(TONES["high"], 0.5 * clf.max_seconds, RATE))
    long_answer, short_answer = asyncio.run(
        post_all(
            app,
            [("long.wav", long_clip), ("short.wav", short_clip)],
            lambda batcher: len(batcher.pending) == 2,
        )
    )
    window = int(clf.max_seconds * RATE)
    short_length = len(clf.load_wave(short_clip))
    assert gated.batches[:2] == [[window], [short_length]]
    assert all(batch == [window] for batch in gated.batches[2:])
    assert len(gated.batches) == 1 + len(long_answer.json()["windows"])
    same_as_classifier(short_answer.json(), clf.predict(short_clip))
    same_as_classifier(long_answer.json(), clf.predict(long_clip))


def flac_claiming(data: bytes, frames: int) -> bytes:
    """A FLAC whose STREAMINFO header claims `frames` frames (36-bit field at byte 18)."""
    field = int.from_bytes(data[18:26], "big")
    field = (field & ~((1 << 36) - 1)) | frames
    return data[:18] + field.to_bytes(8, "big") + data[26:]


def silent_flac(seconds: float, rate: int, channels: int = 1) -> bytes:
    return wav_bytes(np.zeros((int(seconds * rate), channels), np.int16), rate, fmt="FLAC")


def wav_claiming_rate(rate: int) -> bytes:
    """A real 1 s WAV at 8 kHz whose header says `rate` Hz (bytes 24-31: rate, bytes/s)."""
    data = bytearray(wav_bytes(burst(500, 1.0, RATE)))
    data[24:28] = rate.to_bytes(4, "little")
    data[28:32] = (2 * rate).to_bytes(4, "little")
    return bytes(data)


@pytest.fixture(scope="module")
def limited(clf) -> TestClient:
    """A server accepting at most 5 s and 16 kHz per upload."""
    with local(create_app(clf, max_audio_seconds=5, max_sample_rate=16000)) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("1hz.wav", wav_claiming_rate(1), "sample rate 1 Hz is outside the accepted 4000-16000 Hz"),
        ("2ghz.wav", wav_claiming_rate(2_000_000_000), "outside the accepted 4000-16000 Hz"),
        ("384k.flac", silent_flac(0.5, 384_000, 2), "384000 Hz is outside the accepted"),
        ("hours.flac", silent_flac(3 * 3600, 4000), "10800.0 s long, over the 5 s limit"),
        ("claims.flac", flac_claiming(silent_flac(1, RATE), 2**36 - 1), "over the 5 s limit"),
        ("3ch.wav", wav_bytes(np.zeros((800, 3), np.float32)), "3 channels, over the 2 accepted"),
    ],
)
def test_audio_outside_the_limits_is_422_naming_the_file_and_the_limit(
    limited, name, data, reason
):
    assert len(data) < 300_000  # all small uploads, far under --max-upload-mb
    response = limited.post("/v1/classify", **upload(name, data))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith(f"{name}: ") and reason in detail
    if "limit" in reason:
        assert "--max-audio-seconds" in detail  # the server's option, not the CLI's


def test_a_flac_lying_short_is_decoded_only_as_far_as_it_claims(limited):
    """The header says 1 s; the stream holds 20 s: the decoder stops at the claimed length, so
    a short claim cannot slip long audio past the duration limit."""
    lying = flac_claiming(silent_flac(20, RATE), RATE)
    response = limited.post("/v1/classify", **upload("liar.flac", lying))
    assert response.status_code == 200 and response.json()["duration"] == 1.0


def test_audio_within_the_limits_is_classified(limited, clf):
    longest = silent_flac(5, 16000, 2)  # at every limit: duration, rate, channels
    answer = limited.post("/v1/classify", **upload("edge.flac", longest))
    assert answer.status_code == 200 and answer.json()["duration"] == pytest.approx(5.0)
    same_as_classifier(answer.json(), clf.predict(longest))
    assert limited.get("/v1/model").json()["max_audio_seconds"] == 5


def test_decoding_runs_off_the_event_loop(clf, monkeypatch):
    """While an upload is being decoded, the server still answers."""
    import voxclass.serve

    gate, entered = threading.Event(), threading.Event()
    real_load = voxclass.serve.load_audio

    def gated_load(*args):
        entered.set()
        assert gate.wait(30), "test never opened the gate"
        return real_load(*args)

    monkeypatch.setattr(voxclass.serve, "load_audio", gated_load)
    app = create_app(clf)
    clip = wav_bytes(burst(TONES["mid"], 1.0, RATE))

    async def scenario() -> tuple[int, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            files = {"file": ("m.wav", clip, "audio/wav")}
            decoding = asyncio.create_task(http.post("/v1/classify", files=files))
            await async_wait_until(entered.is_set, "the decoder")
            health = await asyncio.wait_for(http.get("/health"), 10)
            gate.set()
            return health.status_code, (await decoding).status_code

    assert asyncio.run(scenario()) == (200, 200)


def test_every_error_is_json_with_a_one_line_detail_even_a_crash(clf):
    app = create_app(clf)

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError("internal secret: /srv/models/x")

    client = local(app, raise_server_exceptions=False)
    response = client.get("/crash")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error (the server's log has the details)"}
    assert client.get("/nowhere").json() == {"detail": "Not Found"}
    assert client.post("/health").status_code == 405 and "detail" in client.post("/health").json()


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("localhost:8000", 200),
        ("127.0.0.1", 200),
        ("[::1]:8000", 200),
        ("rebound.attacker.example", 400),
        ("127.0.0.1.nip.io", 400),
        ("", 400),
    ],
)
def test_only_allowed_host_headers_are_answered(clf, host, status):
    client = local(create_app(clf))
    for path in ("/health", "/v1/model", "/"):
        response = client.get(path, headers={"host": host})
        assert response.status_code == status, (path, response.text)
    if status == 400:
        detail = response.json()["detail"]
        assert repr(host) in detail and "--allowed-hosts" in detail


def test_allowed_hosts_can_name_the_host_or_allow_any(clf):
    named = local(create_app(clf, allowed_hosts=["voice.example.org"]))
    assert named.get("/health", headers={"host": "voice.example.org"}).status_code == 200
    assert named.get("/health", headers={"host": "localhost"}).status_code == 400
    anything = local(create_app(clf, allowed_hosts=["*"]))
    assert anything.get("/health", headers={"host": "whatever.example"}).status_code == 200
    with pytest.raises(ConfigError, match="--allowed-hosts"):
        create_app(clf, allowed_hosts=["bad*.pattern"])


@pytest.mark.parametrize("token", ["", "  "])
def test_an_empty_token_is_refused_not_taken_as_no_auth(clf, token):
    with pytest.raises(ConfigError, match="--token is empty"):
        create_app(clf, token=token)


def test_docs_work_offline_with_their_assets_served_here(client):
    import re

    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "http://" not in docs.text and "https://" not in docs.text and "//cdn" not in docs.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    kinds = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
    assert sorted(Path(a).suffix for a in assets) == [".css", ".js", ".png"]
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200 and kinds[Path(asset).suffix] in response.headers[
            "content-type"
        ], asset
    bundle = client.get(next(a for a in assets if a.endswith(".js"))).text
    assert "SwaggerUIBundle" in bundle and len(bundle) > 500_000  # the real Swagger UI
    assert '"validatorUrl": null' in docs.text  # its badge would call a web service


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run the console-script entry point in-process; return (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["voxclass", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code or 0, capsys.readouterr().err


def test_cli_serve_loads_the_model_and_binds_loopback_by_default(
    trained_tone_model, monkeypatch, capsys
):
    import uvicorn

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    assert run_cli(monkeypatch, capsys, "serve", trained_tone_model)[0] == 0
    assert calls[0]["host"] == "127.0.0.1" and calls[0]["port"] == 8000
    with local(calls[0]["app"]) as served:  # the app's lifespan stops the model's process
        assert served.get("/v1/model").json()["labels"] == sorted(TONES)
        clip = wav_bytes(burst(TONES["low"], 1.0, RATE))
        answer = served.post("/v1/classify", **upload("l.wav", clip))
        assert answer.status_code == 200 and answer.json()["labels"][0] == "low"
    assert calls[0]["app"].state.batcher.score.__self__.process is None

    options = ["--host", "0.0.0.0", "--port", "9001", "--token", "t", "--max-upload-mb", "0.01"]
    options += ["--model-process", "false"]
    assert run_cli(monkeypatch, capsys, "serve", trained_tone_model, *options)[0] == 0
    assert calls[1]["host"] == "0.0.0.0" and calls[1]["port"] == 9001
    guarded = local(calls[1]["app"])
    assert guarded.get("/v1/model").status_code == 401
    big = {"Authorization": "Bearer t", "Content-Length": "20000"}
    assert guarded.post("/v1/classify", headers=big, content=b"0" * 20000).status_code == 413


def test_cli_serve_with_a_bad_model_dir_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    code, err = run_cli(monkeypatch, capsys, "serve", tmp_path)
    assert code == 2 and err.startswith("error: ") and str(tmp_path) in err
    assert err.strip().count("\n") == 0


def test_cli_serve_passes_the_limits_and_allowed_hosts(trained_tone_model, monkeypatch, capsys):
    import uvicorn

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    options = ["--max-audio-seconds", "2", "--max-sample-rate", "8000", "--model-process", "false"]
    code, err = run_cli(monkeypatch, capsys, "serve", trained_tone_model, *options)
    assert code == 0 and err == ""  # loopback: no warning
    served = local(calls[0]["app"])
    info = served.get("/v1/model").json()
    assert (info["max_audio_seconds"], info["max_sample_rate"]) == (2, 8000)
    too_long = served.post("/v1/classify", **upload("l.wav", wav_bytes(burst(500, 3.0, RATE))))
    assert too_long.status_code == 422 and "over the 2 s limit" in too_long.json()["detail"]

    # A bind on one address is answered under that name too; --allowed-hosts replaces the list.
    in_process = ["--model-process", "false"]
    one_address = ["--host", "10.1.2.3", *in_process]
    assert run_cli(monkeypatch, capsys, "serve", trained_tone_model, *one_address)[0] == 0
    bound = local(calls[1]["app"])
    assert bound.get("/health", headers={"host": "10.1.2.3:8000"}).status_code == 200
    assert bound.get("/health", headers={"host": "10.9.9.9:8000"}).status_code == 400
    named = ["--allowed-hosts", "voice.example.org, 10.9.9.9", *in_process]
    assert run_cli(monkeypatch, capsys, "serve", trained_tone_model, *named)[0] == 0
    renamed = local(calls[2]["app"])
    assert renamed.get("/health", headers={"host": "10.9.9.9"}).status_code == 200
    assert renamed.get("/health", headers={"host": "localhost"}).status_code == 400


def test_cli_serve_warns_loudly_when_exposed_without_a_token(
    trained_tone_model, monkeypatch, capsys
):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    in_process = ["--model-process", "false"]
    exposed = ["--host", "0.0.0.0", *in_process]
    code, err = run_cli(monkeypatch, capsys, "serve", trained_tone_model, *exposed)
    assert code == 0
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("warning: serving on 0.0.0.0 without --token")
    assert "--allowed-hosts" in lines[1]
    options = ["--host", "0.0.0.0", "--token", "t", "--allowed-hosts", "box.lan", *in_process]
    assert run_cli(monkeypatch, capsys, "serve", trained_tone_model, *options) == (0, "")


def test_cli_serve_refuses_an_empty_token_in_one_line(trained_tone_model, monkeypatch, capsys):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("served without a token"))
    code, err = run_cli(monkeypatch, capsys, "serve", trained_tone_model, "--token", "")
    assert code == 2 and err.startswith("error: --token is empty") and err.count("\n") == 1
    monkeypatch.setenv("VOXCLASS_TOKEN", "")
    code, err = run_cli(monkeypatch, capsys, "serve", trained_tone_model)
    assert code == 2 and "VOXCLASS_TOKEN" in err


# ---------------------------------------------------------------------------- real browser


class ListeningClassifier(Classifier):
    """The real tone classifier, keeping every wave the server decoded for it (the server cuts
    each wave into the model's windows first)."""

    def __init__(self, clf: Classifier):
        super().__init__(clf.runtime)
        self.heard: list[np.ndarray] = []

    def windows_of(self, wave, window, hop):
        self.heard.append(wave)
        return super().windows_of(wave, window, hop)


@pytest.fixture
def served(clf) -> ListeningClassifier:
    return ListeningClassifier(clf)


@pytest.fixture
def live_server(served):
    """The app under uvicorn on a free 127.0.0.1 port, in a thread; stopped after the test."""
    import uvicorn

    config = uvicorn.Config(
        create_app(served), host="127.0.0.1", port=free_port(), log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), "uvicorn to start")
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{config.port}"
    server.should_exit = True
    thread.join(10)


MIC_TONE = TONES["high"]  # what chromium's fake microphone plays (see `chromium`)


def launch_chromium(tmp_path: Path, microphone: np.ndarray, rate: int):
    """Headless Debian chromium through chromedriver. Missing browser = failure, not a skip:
    `make test` installs both (target browser-deps). Its microphone is a fake device that plays
    `microphone` in a loop, with permission granted."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for binary in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        assert Path(binary).is_file(), f"{binary} missing: run `make browser-deps` (as root)"
    mic = tmp_path / "microphone.wav"  # chromium reads 16-bit PCM WAV for a fake capture device
    sf.write(mic, microphone, rate, subtype="PCM_16")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",  # tests run as root
        "--disable-gpu",
        "--window-size=1000,900",
        # No network but loopback here: stop chromium's own background connections.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


@pytest.fixture
def chromium(tmp_path):
    """Chromium whose microphone plays MIC_TONE bursts."""
    driver = launch_chromium(tmp_path, burst(MIC_TONE, 1.2, 48000), 48000)
    yield driver
    driver.quit()


@pytest.mark.browser
def test_page_uploads_a_clip_and_shows_the_models_label(live_server, chromium, clf, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    clip = tmp_path / "clip.wav"
    sf.write(clip, burst(TONES["high"], 1.2, RATE, seed=11), RATE)
    expected = clf.predict(clip)
    wait = WebDriverWait(chromium, 30)

    chromium.get(live_server + "/")
    wait.until(lambda d: "labels" in d.find_element(By.ID, "model-info").text)
    chromium.find_element(By.ID, "file").send_keys(str(clip))
    wait.until(lambda d: d.find_element(By.ID, "result").is_displayed())
    shown = [e.text for e in chromium.find_elements(By.CSS_SELECTOR, "#bars .label")]
    scores = [float(e.text) for e in chromium.find_elements(By.CSS_SELECTOR, "#bars .score")]
    assert shown == expected.labels  # the model's own answer for this clip, best first
    np.testing.assert_allclose(scores, expected.scores, atol=2e-3)  # 3 decimals on the page
    # Each bar is drawn as long as its score (of the full track).
    tracks = chromium.find_elements(By.CSS_SELECTOR, "#bars .track")
    fills = chromium.find_elements(By.CSS_SELECTOR, "#bars .fill")
    widths = [
        fill.size["width"] / track.size["width"] for fill, track in zip(fills, tracks, strict=True)
    ]
    np.testing.assert_allclose(widths, expected.scores, atol=0.02)
    assert chromium.find_element(By.ID, "player").get_attribute("src").startswith("blob:")
    screenshot = tmp_path / "page.png"
    assert chromium.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 10_000  # a rendered page, not a blank image

    # A file that is not audio: the person reads why, in words.
    text = tmp_path / "notes.wav"
    text.write_text("meeting notes, not a recording\n" * 10)
    chromium.find_element(By.ID, "file").send_keys(str(text))
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    error = chromium.find_element(By.ID, "error").text
    assert "could not read this audio" in error and "notes.wav" in error
    assert not chromium.find_element(By.ID, "result").is_displayed()


@pytest.mark.browser
def test_page_records_from_the_microphone_and_shows_the_models_answer(
    live_server, served, chromium
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(chromium, 30)
    chromium.get(live_server + "/")
    wait.until(lambda d: "labels" in d.find_element(By.ID, "model-info").text)
    record = chromium.find_element(By.ID, "record")
    record.click()

    def recorded_seconds(driver) -> float:  # what the page says it has recorded so far
        status = driver.find_element(By.ID, "status").text
        match = re.fullmatch(r"Recording… ([0-9.]+) s, press again to stop\.", status)
        return float(match.group(1)) if match else 0.0

    wait.until(lambda d: recorded_seconds(d) >= 1.2)
    record.click()  # stop: the page decodes the recording, sends it as WAV, shows the answer
    wait.until(lambda d: d.find_element(By.ID, "result").is_displayed())
    assert not chromium.find_element(By.ID, "error").is_displayed()
    assert record.text == "Record from microphone"
    assert chromium.find_element(By.ID, "source").text == "recording"

    # The server heard the microphone: what the page recorded, loudest at the device's tone.
    recorded = chromium.execute_script("return state.recordedSeconds")
    assert recorded >= 1.2
    (wave,) = served.heard
    seconds = len(wave) / served.sampling_rate
    assert 0.6 <= seconds <= recorded + 0.5  # no more than was recorded (plus codec padding)
    assert f"Classified {seconds:.2f} s of audio." == chromium.find_element(By.ID, "status").text
    spectrum = np.abs(np.fft.rfft(wave))
    peak = np.fft.rfftfreq(len(wave), 1 / served.sampling_rate)[spectrum.argmax()]
    assert abs(peak - MIC_TONE) < 20
    # ... and the page shows the model's answer for what it heard.
    expected = served.predict(wave, served.sampling_rate)
    shown = [e.text for e in chromium.find_elements(By.CSS_SELECTOR, "#bars .label")]
    scores = [float(e.text) for e in chromium.find_elements(By.CSS_SELECTOR, "#bars .score")]
    assert shown == expected.labels
    np.testing.assert_allclose(scores, expected.scores, atol=2e-3)


@pytest.fixture
def chromium_speaking(tmp_path, fsdd):
    """Chromium whose microphone says two FSDD digits (real speech) with silence around them,
    over and over."""
    from voxclass.audio import load_audio

    rate = 48000
    gap = np.zeros(rate, np.float32)
    digits = [load_audio(fsdd / path, rate) for path in ("3/3_theo_0.wav", "7/7_george_1.wav")]
    driver = launch_chromium(tmp_path, np.concatenate([gap, digits[0], gap, digits[1], gap]), rate)
    yield driver
    driver.quit()


@pytest.mark.browser
def test_live_mode_shows_the_models_labels_as_the_microphone_speaks(
    live_server, served, chromium_speaking
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = chromium_speaking
    wait = WebDriverWait(page, 60)
    page.get(live_server + "/")
    wait.until(lambda d: "labels" in d.find_element(By.ID, "model-info").text)
    live = page.find_element(By.ID, "live")
    live.click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#live-timeline .segment")) >= 2)
    live.click()  # stop: the server sends what is left, then closes the stream
    wait.until(lambda d: d.find_element(By.ID, "live-status").text == "stopped.")
    assert not page.find_element(By.ID, "error").is_displayed()
    assert live.text == "Live"

    events = page.execute_script("return state.liveEvents")
    assert events[0]["type"] == "ready" and events[-1]["type"] == "end"
    hops = [e for e in events if e["type"] == "hop"]
    segments = [e for e in events if e["type"] == "segment"]
    assert len(segments) >= 2 and any(not h["speech"] for h in hops)
    for segment in segments:  # one spoken digit each, not the silence around it
        assert 0.2 <= segment["end"] - segment["start"] <= 1.2, segment
    # The timeline shows every hop and segment, in order, with the labels the server sent ...
    rows = page.find_elements(By.CSS_SELECTOR, "#live-timeline li")
    shown = [e for e in events if e["type"] in ("hop", "segment")]
    assert len(rows) == len(shown)
    for row, event in zip(rows, shown, strict=True):
        text = row.find_element(By.CSS_SELECTOR, ".text").text
        if event["type"] == "segment":
            assert "segment" in row.get_attribute("class")
            assert row.find_element(By.CSS_SELECTOR, ".time").text == (
                f"{event['start']:.2f}–{event['end']:.2f} s"
            )
        assert text == (
            f"{event['labels'][0]} {event['scores'][0]:.3f}" if event["labels"] else "·"
        )
    # ... and those are the model's labels for the audio it heard: one wave per event with
    # labels (speech hops and segments), in order; silence was never sent to the model.
    heard = list(served.heard)
    labelled = [e for e in shown if e["labels"]]
    assert len(heard) == len(labelled)
    for wave, event in zip(heard, labelled, strict=True):
        expected = served.predict(wave, served.sampling_rate)
        assert event["labels"] == expected.labels
        np.testing.assert_allclose(event["scores"], expected.scores, atol=1e-5)
