"""`voxclass serve`: every route and error through FastAPI's TestClient, inference off the event
loop with concurrent requests batched, the CLI command, an exported ONNX model, and the web
page driven in headless Debian chromium (marker `browser`)."""

from __future__ import annotations

import asyncio
import io
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
from voxclass.serve import STATIC, create_app

RATE = 8000  # the tone model's rate (tiny preset)


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
    with TestClient(create_app(clf)) as test_client:
        yield test_client


def test_health_and_model_description(client, clf):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/v1/model").json()
    assert info == {
        "labels": sorted(TONES),
        "sampling_rate": RATE,
        "max_seconds": clf.max_seconds,
        "backend": "torch",
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
    limited = TestClient(create_app(clf, max_upload_mb=0.01))  # 10,485 bytes
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
            (b"host", b"testserver"),
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
    limited = TestClient(create_app(clf, max_upload_mb=0.01))

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
    guarded = TestClient(create_app(clf, token="s3cret"))
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
    assert "413" in schema["paths"]["/v1/classify"]["post"]["responses"]
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
    onnx_client = TestClient(create_app(tmp_path / "onnx"))
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
    served = TestClient(create_app(trained_tone_model))
    clip = wav_bytes(burst(TONES["low"], 1.0, RATE))
    for _ in range(3):
        assert served.post("/v1/classify", **upload("l.wav", clip)).status_code == 200
    assert served.get("/v1/model").status_code == 200
    assert loads == [trained_tone_model]


class GatedClassifier(Classifier):
    """The real tone classifier, but each batch waits for `gate` and its size is recorded."""

    def __init__(self, clf: Classifier):
        super().__init__(clf.model, clf.extractor)
        self.gate = threading.Event()
        self.batch_sizes: list[int] = []

    def predict_batch(self, sources, *args, **kwargs):
        self.batch_sizes.append(len(sources))
        assert self.gate.wait(30), "test never opened the gate"
        return super().predict_batch(sources, *args, **kwargs)


def test_inference_runs_off_the_event_loop_and_concurrent_requests_share_a_batch(clf):
    gated = GatedClassifier(clf)
    app = create_app(gated)
    clips = {label: wav_bytes(burst(freq, 1.0, RATE, seed=9)) for label, freq in TONES.items()}

    async def scenario() -> tuple[list[dict], int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:

            async def classify(label: str) -> dict:
                files = {"file": (f"{label}.wav", clips[label], "audio/wav")}
                response = await http.post("/v1/classify", files=files)
                return response.json()

            first = asyncio.create_task(classify("low"))
            while not gated.batch_sizes:  # the first request is now inside the model
                await asyncio.sleep(0.01)
            # The loop is free while the model works: health answers at once.
            health = await asyncio.wait_for(http.get("/health"), 5)
            rest = [asyncio.create_task(classify(label)) for label in ("mid", "high", "low")]
            await asyncio.sleep(0.3)  # let them queue behind the running batch
            gated.gate.set()
            return [await first] + [await task for task in rest], health.status_code

    answers, health_status = asyncio.run(scenario())
    assert health_status == 200
    assert gated.batch_sizes == [1, 3]  # the three waiting requests ran as one batch
    assert [a["source"] for a in answers] == ["low.wav", "mid.wav", "high.wav", "low.wav"]
    for answer in answers:  # batching changed no answer
        same_as_classifier(answer, clf.predict(clips[answer["source"][:-4]]))


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
    served = TestClient(calls[0]["app"])
    assert served.get("/v1/model").json()["labels"] == sorted(TONES)

    options = ["--host", "0.0.0.0", "--port", "9001", "--token", "t", "--max-upload-mb", "0.01"]
    assert run_cli(monkeypatch, capsys, "serve", trained_tone_model, *options)[0] == 0
    assert calls[1]["host"] == "0.0.0.0" and calls[1]["port"] == 9001
    guarded = TestClient(calls[1]["app"])
    assert guarded.get("/v1/model").status_code == 401
    big = {"Authorization": "Bearer t", "Content-Length": "20000"}
    assert guarded.post("/v1/classify", headers=big, content=b"0" * 20000).status_code == 413


def test_cli_serve_with_a_bad_model_dir_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    code, err = run_cli(monkeypatch, capsys, "serve", tmp_path)
    assert code == 2 and err.startswith("error: ") and str(tmp_path) in err
    assert err.strip().count("\n") == 0


# ---------------------------------------------------------------------------- real browser


class ListeningClassifier(Classifier):
    """The real tone classifier, keeping every wave the server decoded for it."""

    def __init__(self, clf: Classifier):
        super().__init__(clf.model, clf.extractor)
        self.heard: list[np.ndarray] = []

    def predict_batch(self, sources, *args, **kwargs):
        self.heard.extend(sources)
        return super().predict_batch(sources, *args, **kwargs)


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
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{config.port}"
    server.should_exit = True
    thread.join(10)


MIC_TONE = TONES["high"]  # what chromium's fake microphone plays (see `chromium`)


@pytest.fixture
def chromium(tmp_path):
    """Headless Debian chromium through chromedriver. Missing browser = failure, not a skip:
    `make test` installs both (target browser-deps). Its microphone is a fake device that plays
    MIC_TONE bursts in a loop, with permission granted, so recording can be tested too."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for binary in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        assert Path(binary).is_file(), f"{binary} missing: run `make browser-deps` (as root)"
    mic = tmp_path / "microphone.wav"  # chromium reads 16-bit PCM WAV for a fake capture device
    sf.write(mic, burst(MIC_TONE, 1.2, 48000), 48000, subtype="PCM_16")
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
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
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
    wait.until(lambda d: "Recording" in d.find_element(By.ID, "status").text)
    time.sleep(1.5)
    record.click()  # stop: the page decodes the recording, sends it as WAV, shows the answer
    wait.until(lambda d: d.find_element(By.ID, "result").is_displayed())
    assert not chromium.find_element(By.ID, "error").is_displayed()
    assert record.text == "Record from microphone"
    assert chromium.find_element(By.ID, "source").text == "recording"

    # The server heard the microphone: about 1.5 s, loudest at the fake device's tone.
    (wave,) = served.heard
    seconds = len(wave) / served.sampling_rate
    assert 1.0 <= seconds <= 3.0
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
