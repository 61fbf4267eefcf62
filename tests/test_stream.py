"""Live classification (`voxclass.stream`, `WS /v1/stream`, `voxclass stream`): two real spoken
digits with silence around them give two segment events where they were spoken, silence costs
no model call, a segment's labels are `voxclass predict`'s on that stretch cut out as a file,
and every protocol error closes the socket with its own code and a reason."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf
from conftest import run_cli
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from voxclass import Classifier
from voxclass.audio import Resampler, load_audio
from voxclass.config import ConfigError
from voxclass.serve import create_app
from voxclass.stream import (
    StreamSession,
    StreamSettings,
    _Pending,
    classify_steps,
    print_events,
)

GAP = 1.2  # seconds of silence before, between and after the two digits


class CountingClassifier(Classifier):
    """The tone classifier, counting the waves it is asked to score."""

    def __init__(self, clf: Classifier):
        super().__init__(clf.runtime)
        self.scored = 0

    def probabilities(self, waves, batch_size=16):
        self.scored += len(waves)
        return super().probabilities(waves, batch_size)


@pytest.fixture(scope="module")
def clf(trained_tone_model) -> CountingClassifier:
    return CountingClassifier(Classifier.load(trained_tone_model))


@pytest.fixture(scope="module")
def two_digits(fsdd, clf) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Silence, a spoken 3, silence, a spoken 7, silence (at the model's rate), and where the
    two recordings sit in it (seconds)."""
    rate = clf.sampling_rate
    gap = np.zeros(int(GAP * rate), np.float32)
    parts, spans, at = [gap], [], len(gap)
    for path in ("3/3_theo_0.wav", "7/7_george_1.wav"):
        digit = load_audio(fsdd / path, rate)
        spans.append((at / rate, (at + len(digit)) / rate))
        parts += [digit, gap]
        at += len(digit) + len(gap)
    return np.concatenate(parts), spans


def stream_events(clf: Classifier, wave: np.ndarray, hop: float = 0.25) -> list[dict]:
    session = StreamSession(clf, StreamSettings(sampling_rate=clf.sampling_rate, hop=hop))
    chunk = int(0.1 * clf.sampling_rate)
    events = []
    for at in range(0, len(wave), chunk):
        events += classify_steps(clf, session.feed_samples(wave[at : at + chunk]), 5)
    return events + classify_steps(clf, session.finish(), 5)


def test_two_utterances_give_two_segments_where_they_were_spoken(clf, two_digits):
    wave, spans = two_digits
    events = stream_events(clf, wave)
    segments = [e for e in events if e["type"] == "segment"]
    assert len(segments) == 2, segments
    for segment, (start, end) in zip(segments, spans, strict=True):
        # Inside the recording (plus the 30 ms pad and the detector's decay after the last
        # word), covering most of it.
        assert start - 0.05 <= segment["start"] < segment["end"] <= end + 0.2, (segment, start)
        overlap = min(end, segment["end"]) - max(start, segment["start"])
        assert overlap >= 0.6 * (end - start), (segment, start, end)
        assert segment["labels"] and sorted(segment["labels"]) == sorted(clf.labels)
    hops = [e for e in events if e["type"] == "hop"]
    assert [h["end"] for h in hops] == pytest.approx(
        [0.25 * (i + 1) for i in range(int(len(wave) / clf.sampling_rate / 0.25))]
    )
    assert events[-1] == {"type": "end", "duration": pytest.approx(len(wave) / clf.sampling_rate)}
    # Hops away from the digits are silent and have no labels; each digit has speech hops.
    for hop in hops:
        near = any(start < hop["end"] < end + 0.5 for start, end in spans)
        assert hop["speech"] <= near, hop
        assert bool(hop["labels"]) == hop["speech"]
    for start, end in spans:
        assert any(h["speech"] for h in hops if start < h["end"] < end + 0.5), (start, hops)
    assert sum(not h["speech"] for h in hops) >= 10


def test_silence_costs_no_model_call(clf, two_digits):
    wave, spans = two_digits
    session = StreamSession(clf, StreamSettings(sampling_rate=clf.sampling_rate, hop=0.25))
    rate = clf.sampling_rate
    before = clf.scored
    silence = wave[: int((spans[0][0] - 0.05) * rate)]  # the leading silence, 4 hops of it
    steps = session.feed_samples(silence)
    events = classify_steps(clf, steps, 5)
    assert [e["speech"] for e in events] == [False] * 4 and clf.scored == before
    events += classify_steps(clf, session.feed_samples(wave[len(silence) :]), 5)
    events += classify_steps(clf, session.finish(), 5)
    # One model call per speech hop and per segment, none for anything else.
    calls = sum(e["type"] == "segment" or (e["type"] == "hop" and e["speech"]) for e in events)
    assert clf.scored - before == calls == session.model_calls
    assert calls < len(events) / 2


def test_a_segment_is_handed_out_once_min_silence_is_heard_not_behind_a_hop(clf, two_digits):
    # Sent at twice the model's rate, so the model's audio lags the detector's through the
    # resampler (about 64 ms), with hops every 50 ms waiting for that audio.
    wave, _ = two_digits
    rate = 2 * clf.sampling_rate
    up = Resampler(clf.sampling_rate, rate)
    sent_wave = np.concatenate([up.push(wave), up.flush()])
    settings = StreamSettings(sampling_rate=rate, hop=0.05)
    session = StreamSession(clf, settings)
    chunk = int(0.02 * rate)
    lags = []
    for at in range(0, len(sent_wave), chunk):
        for step in session.feed_samples(sent_wave[at : at + chunk]):
            if step.event["type"] == "segment":
                speech_end = step.event["end"] - settings.speech_pad
                lags.append((at + chunk) / rate - speech_end)
    frame = 0.032
    wait = np.ceil(settings.min_silence / frame - 1e-9) * frame  # whole detector frames
    assert len(lags) == 2
    # The detector decides at the end of the wait's last frame (the detector's audio is not
    # delayed at this rate); the segment comes out with the 20 ms message holding that frame.
    assert max(lags) <= wait + 0.02 + 1e-3, lags


def test_an_event_whose_audio_has_arrived_is_not_held_behind_one_still_waiting(clf):
    # A segment is decided min_silence after its end; the hop queued just before it may still
    # wait for the model's resampler. Released in queue order, the segment waited for it
    # (80 ms in benchmarks/stream_latency.py).
    session = StreamSession(clf, StreamSettings(sampling_rate=2 * clf.sampling_rate))
    session.feed_samples(np.zeros(2 * clf.sampling_rate, np.float32))
    arrived = session.received
    session.waiting = [_Pending("hop", 0, arrived + 100), _Pending("segment", 0, arrived - 100)]
    assert [step.event["type"] for step in session._release()] == ["segment"]
    later = session.feed_samples(np.zeros(clf.sampling_rate, np.float32))
    assert later[0].event["type"] == "hop"  # its audio arrived: out first (it ends first)
    assert later[0].event["end"] == round((arrived + 100) / clf.sampling_rate, 6)


def test_min_silence_out_of_bounds_is_one_error_line(tmp_path, trained_tone_model):
    with pytest.raises(ConfigError, match="min_silence 0.001"):
        StreamSettings(sampling_rate=16000, min_silence=0.001).check()
    with pytest.raises(ConfigError, match="--stream-min-silence"):
        create_app(trained_tone_model, stream_min_silence=9)


def test_segment_labels_are_predicts_on_the_segment_cut_out_as_a_file(
    clf, two_digits, trained_tone_model, tmp_path, monkeypatch, capsys
):
    wave, _ = two_digits
    rate = clf.sampling_rate
    segments = [e for e in stream_events(clf, wave) if e["type"] == "segment"]
    files = []
    for i, segment in enumerate(segments):
        path = tmp_path / f"segment{i}.wav"
        cut = wave[round(segment["start"] * rate) : round(segment["end"] * rate)]
        sf.write(path, cut, rate, subtype="FLOAT")
        files.append(path)
    code, out, _ = run_cli(
        monkeypatch, capsys, "predict", trained_tone_model, *files, "--format", "json"
    )
    assert code == 0
    predicted = json.loads(out)
    for segment, prediction in zip(segments, predicted, strict=True):
        assert segment["labels"] == prediction["labels"]
        np.testing.assert_allclose(segment["scores"], prediction["scores"], atol=1e-6)


def test_cli_streams_a_file_and_stdin_as_json_lines(
    clf, two_digits, trained_tone_model, tmp_path, monkeypatch, capsys
):
    wave, _ = two_digits
    rate = clf.sampling_rate
    path = tmp_path / "two.wav"
    sf.write(path, wave, rate, subtype="FLOAT")
    code, out, err = run_cli(
        monkeypatch, capsys, "stream", trained_tone_model, path, "--hop", "0.25"
    )
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines == stream_events(clf, wave)  # the same events, as one JSON object per line
    assert sum(e["type"] == "segment" for e in lines) == 2

    # Raw 16-bit PCM at 16 kHz on stdin: resampled, still two segments.
    pcm = (np.clip(load_audio(path, 16000), -1, 1) * 32767).astype("<i2").tobytes()
    sink = io.StringIO()
    print_events(str(trained_tone_model), "-", stdin=io.BufferedReader(io.BytesIO(pcm)), out=sink)
    events = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert sum(e["type"] == "segment" for e in events) == 2
    assert events[-1]["type"] == "end"
    assert events[-1]["duration"] == pytest.approx(len(wave) / rate, abs=2e-3)


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (["FILE", "--rate", "8000"], "--rate and --format describe raw PCM on stdin"),
        (["-", "--realtime"], "--realtime paces a file"),
        (["-", "--format", "mp3"], "format 'mp3' unknown: send pcm16 or f32"),
        (["-", "--rate", "1"], "sampling_rate 1: give a whole number of Hz"),
        (["FILE", "--hop", "0"], "hop 0 s outside"),
        (["nothing.wav"], "nothing.wav: no such file"),
    ],
)
def test_cli_stream_bad_options_are_one_line_and_exit_2(
    trained_tone_model, tmp_path, monkeypatch, capsys, args, culprit
):
    path = tmp_path / "clip.wav"
    sf.write(path, np.zeros(800, np.float32), 8000)
    args = [str(path) if a == "FILE" else a for a in args]
    code, out, err = run_cli(monkeypatch, capsys, "stream", trained_tone_model, *args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and culprit in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- WebSocket


def open_stream(app, host: str = "localhost", **headers: str):
    """A `/v1/stream` connection to the app in-process, addressed to `host`."""
    return TestClient(app).websocket_connect(f"ws://{host}/v1/stream", headers=headers)


@pytest.fixture(scope="module")
def app(clf):
    return create_app(clf, max_stream_seconds=5)


def closed_with(ws, *messages) -> tuple[int, str]:
    """Send `messages` (text for str/dict, binary for bytes) and read until the server
    closes; its close code and reason."""
    for message in messages:
        if isinstance(message, bytes):
            ws.send_bytes(message)
        else:
            ws.send_text(message if isinstance(message, str) else json.dumps(message))
    with pytest.raises(WebSocketDisconnect) as closed:
        while True:
            ws.receive_json()
    return closed.value.code, closed.value.reason


def test_stream_over_the_websocket_gives_the_same_events_and_ends_cleanly(app, clf, two_digits):
    wave, _ = two_digits
    pcm = wave.astype("<f4").tobytes()
    with open_stream(app) as ws:
        ws.send_json({"sampling_rate": clf.sampling_rate, "format": "f32", "hop": 0.25})
        ready = ws.receive_json()
        assert ready == {
            "type": "ready",
            "labels": clf.labels,
            "sampling_rate": clf.sampling_rate,
            "window": clf.max_seconds,
            "hop": 0.25,
        }
        for at in range(0, len(pcm), 3001):  # chunks that split samples
            ws.send_bytes(pcm[at : at + 3001])
        ws.send_json({"type": "end"})
        events = []
        while not events or events[-1]["type"] != "end":
            events.append(ws.receive_json())
        code, reason = closed_with(ws)
    assert (code, reason) == (1000, "end of stream")
    expected = stream_events(clf, wave)
    assert [{**e, "scores": None} for e in events] == [{**e, "scores": None} for e in expected]
    for got, want in zip(events, expected, strict=True):
        np.testing.assert_allclose(got.get("scores", []), want.get("scores", []), atol=1e-6)


@pytest.mark.parametrize(
    ("messages", "code", "reason"),
    [
        ([b"\x00\x01"], 1007, "first message must be JSON text"),
        (["hello"], 1007, "first message must be JSON text"),
        (["[16000]"], 1007, "first message must be a JSON object"),
        ([{"format": "f32"}], 1007, "first message needs sampling_rate"),
        ([{"sampling_rate": 16000, "rate": 8000}], 1007, "unknown keys rate"),
        ([{"sampling_rate": 16000, "format": "mp3"}], 1003, "format 'mp3' unknown"),
        ([{"sampling_rate": 1}], 1007, "sampling_rate 1: give a whole number of Hz"),
        ([{"sampling_rate": "16k"}], 1007, "sampling_rate '16k': give a whole number"),
        ([{"sampling_rate": 16000, "hop": 0}], 1007, "hop 0 s outside"),
        ([{"sampling_rate": 16000, "top_k": 0}], 1007, "top_k 0: give at least 1"),
        ([{"sampling_rate": 16000}, "more"], 1003, "after the first message: audio bytes"),
        ([{"sampling_rate": 16000}, b"\x00" * (1 << 20 | 2)], 1009, "message over 1048576 bytes"),
        ([{"sampling_rate": 8000}, b"\x00" * 81_000], 1008, "stream over the 5 s limit"),
        (
            [{"sampling_rate": 8000, "format": "f32"}, np.full(10, np.nan, "<f4").tobytes()],
            1007,
            "audio holds NaN or infinite samples",
        ),
    ],
)
def test_protocol_errors_close_with_their_code_and_reason(app, messages, code, reason):
    with open_stream(app) as ws:
        got_code, got_reason = closed_with(ws, *messages)
    assert got_code == code and got_reason.startswith(reason), (got_code, got_reason)
    assert len(got_reason.encode()) <= 123  # what a close frame can carry


def test_token_in_the_first_message_or_the_header(clf):
    app = create_app(clf, token="s3cret")
    first = {"sampling_rate": 8000}
    for headers, message, reason in [
        ({}, first, "this server needs a token: put it in the first message"),
        ({}, {**first, "token": "wrong"}, "wrong token"),
        ({"Authorization": "Bearer wrong"}, first, "wrong token"),
        ({}, {**first, "token": 42}, "wrong token"),
    ]:
        with open_stream(app, **headers) as ws:
            assert closed_with(ws, message) == (1008, reason)
    right = [({}, {**first, "token": "s3cret"}), ({"Authorization": "Bearer s3cret"}, first)]
    for headers, message in right:
        with open_stream(app, **headers) as ws:
            ws.send_json(message)
            assert ws.receive_json()["type"] == "ready"


def test_other_hosts_and_other_sites_pages_are_refused(app):
    with pytest.raises(WebSocketDisconnect) as refused, open_stream(app, "evil.example"):
        pass  # DNS rebinding: another site's name for this machine
    assert refused.value.code == 1008  # at the handshake
    with (
        pytest.raises(WebSocketDisconnect) as refused,
        open_stream(app, Origin="http://evil.example"),
    ):
        pass
    assert refused.value.code == 1008 and "cross-origin" in refused.value.reason
    with open_stream(app, Origin="http://localhost") as ws:
        ws.send_json({"sampling_rate": 8000})
        assert ws.receive_json()["type"] == "ready"
