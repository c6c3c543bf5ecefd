"""`fastdia serve` as a user runs it: a real server process, spoken to with the official `openai` client.

The tiny random presets make noise; what is checked is the API contract (formats, rates, lengths,
streaming, errors in OpenAI's shape and status), not the sound.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
av = pytest.importorskip("av")

from fastdia.text import MAX_SCRIPT_BYTES  # noqa: E402
from fastdia.serve.engine import BUILTIN_VOICES

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "[S1] Hi. [S2] Hello."
DIA1, DIA2 = "tiny-random", "dia2-tiny-random"
RATES = {DIA1: 44100, DIA2: 24000}
SHORT = {DIA1: {"max_tokens": 60, "seed": 3}, DIA2: {"max_steps": 24, "seed": 3}}
STARTUP_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m fastdia serve ...` on a free port, stopped by its own PID."""

    def __init__(self, *args: str, env: dict | None = None, tmp: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr_path = tmp / f"server-{self.port}.err"
        self._stderr = open(self.stderr_path, "wb")
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "fastdia", "serve", "--host", "127.0.0.1",
                                      "--port", str(self.port), *args], cwd=ROOT, env=full_env,
                                     stdout=subprocess.DEVNULL, stderr=self._stderr)
        self.first_health: int | None = None

    def wait_ready(self, on_first=None) -> None:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.stderr()}")
            try:
                r = httpx.get(self.url + "/health", timeout=2)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            if self.first_health is None:
                self.first_health = r.status_code
                if on_first is not None:
                    on_first(r)
            if r.status_code == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"server not ready after {STARTUP_S} s: {self.stderr()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._stderr.close()
        return self.proc.returncode

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def served(tmp: Path, *args: str, env: dict | None = None):
    """A ready server with both tiny models (and `args`), stopped by its PID on the way out."""
    srv = ServerProcess("--model", DIA1, "--model", DIA2, "--voices-dir", str(tmp / "voices"), *args,
                        env=env, tmp=tmp)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with served(tmp_path_factory.mktemp("serve")) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def speech(client, model=DIA1, **kw):
    kw.setdefault("voice", "alloy")
    extra = {**SHORT[model], **kw.pop("extra_body", {})}
    return client.audio.speech.create(model=model, input=kw.pop("input", SCRIPT), extra_body=extra, **kw)


@pytest.fixture(scope="module")
def reference(client):
    """Each model's wav for the fixed seed: the length every other format must match."""
    out = {}
    for model in (DIA1, DIA2):
        wave, rate = sf.read(io.BytesIO(speech(client, model, response_format="wav").content), dtype="float32")
        assert rate == RATES[model] and len(wave) > 0
        out[model] = len(wave)
    return out


def _decode_av(data: bytes) -> tuple[int, int]:
    with av.open(io.BytesIO(data)) as c:
        n, rate = 0, None
        for frame in c.decode(audio=0):
            n, rate = n + frame.samples, frame.sample_rate
    return n, rate


def test_models_list(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [DIA1, DIA2]
    raw = httpx.get(client.base_url.__str__().rstrip("/") + "/models").json()
    assert raw["object"] == "list" and raw["data"][0]["owned_by"] == "fastdia"


@pytest.mark.parametrize("model", [DIA1, DIA2])
@pytest.mark.parametrize("fmt", ["wav", "flac", "pcm", "mp3", "opus", "aac"])
def test_every_format_decodes_at_the_right_rate_and_length(client, reference, model, fmt):
    data = speech(client, model, response_format=fmt).content
    rate, n_ref = RATES[model], reference[model]
    if fmt == "pcm":  # OpenAI's pcm: 24 kHz 16-bit little-endian mono
        assert len(data) % 2 == 0
        assert abs(len(data) // 2 - n_ref * 24000 / rate) <= 64
        return
    if fmt == "aac":
        n, got = _decode_av(data)
        assert got == rate
    else:
        wave, got = sf.read(io.BytesIO(data), dtype="float32")
        n = len(wave)
        assert got == (48000 if fmt == "opus" and rate == 44100 else rate)  # Opus has no 44.1 kHz
    expected = n_ref * got / rate
    if fmt in ("wav", "flac"):
        assert n == n_ref
    else:  # lossy codecs add their encoder delay/padding (well under 0.1 s)
        assert expected - 64 <= n <= expected + 0.1 * got, (n, expected)


def test_streamed_bytes_equal_the_whole_response(client):
    whole = speech(client, DIA1, response_format="wav").content
    assert whole[4:8] == b"\xff\xff\xff\xff" and whole[40:44] == b"\xff\xff\xff\xff"  # a streaming WAV header
    pieces = []
    with client.audio.speech.with_streaming_response.create(
            model=DIA1, input=SCRIPT, voice="alloy", response_format="wav", extra_body=SHORT[DIA1]) as r:
        assert r.headers["content-type"].startswith("audio/wav")
        for chunk in r.iter_bytes():
            pieces.append(chunk)
    assert b"".join(pieces) == whole


@pytest.mark.parametrize("model", [DIA1, DIA2])
def test_sse_events(client, model):
    pcm = speech(client, model, response_format="pcm").content
    r = speech(client, model, response_format="pcm", stream_format="sse")
    events = [json.loads(line[len("data: "):]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert events and all(e["type"] == "speech.audio.delta" for e in events[:-1])
    done = events[-1]
    assert done["type"] == "speech.audio.done"
    assert set(done["usage"]) == {"input_tokens", "output_tokens", "total_tokens"}
    assert done["usage"]["total_tokens"] == done["usage"]["input_tokens"] + done["usage"]["output_tokens"]
    assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == pcm


def test_voices_upload_use_delete(server, client):
    listed = httpx.get(server.url + "/v1/audio/voices").json()
    builtin = {v["id"] for v in listed["data"] if v["builtin"]}
    assert {"alloy", "nova", "cedar"} <= builtin and listed["object"] == "list"

    buf = io.BytesIO()
    t = np.arange(24000) / 24000
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 24000, format="WAV")
    files = {"audio": ("me.wav", buf.getvalue(), "audio/wav")}
    r = httpx.post(server.url + "/v1/audio/voices", data={"name": "me", "transcript": "[S1] A test voice."},
                   files=files, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "me" and r.json()["builtin"] is False
    saved = [v for v in httpx.get(server.url + "/v1/audio/voices").json()["data"] if not v["builtin"]]
    assert [v["id"] for v in saved] == ["me"]

    for model in (DIA1, DIA2):
        # The 1 s voice is a prompt: Dia-1 needs room for it plus new audio within max_tokens.
        room = {"max_tokens": 200} if model == DIA1 else {}
        data = speech(client, model, voice={"id": "me"}, response_format="wav", extra_body=room).content
        assert sf.info(io.BytesIO(data)).samplerate == RATES[model]

    r = httpx.post(server.url + "/v1/audio/voices", data={"name": "me", "transcript": "[S1] Again."}, files=files)
    assert r.status_code == 400 and "exists" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/audio/voices", data={"name": "junk", "transcript": "[S1] Hi."},
                   files={"audio": ("x.wav", b"not audio", "audio/wav")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "audio"

    assert httpx.delete(server.url + "/v1/audio/voices/me").json()["deleted"] is True
    r = httpx.delete(server.url + "/v1/audio/voices/me")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    with pytest.raises(openai.BadRequestError):
        speech(client, DIA1, voice="me")


@pytest.mark.parametrize("kw, param", [
    ({"input": ""}, "input"),
    ({"input": "no speaker tag"}, "input"),
    ({"response_format": "ogg"}, "response_format"),
    ({"model": "no-such-model"}, "model"),
    ({"voice": "nobody"}, "voice"),
    ({"speed": 2.0}, "speed"),
    ({"extra_body": {"not_an_option": 1}}, "not_an_option"),
    ({"extra_body": {"max_steps": 5}}, "max_steps"),  # a Dia2 option for a Dia-1 model
])
def test_bad_requests_are_400_in_openai_shape(client, kw, param):
    model = kw.pop("model", DIA1)
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.speech.create(model=model, input=kw.pop("input", SCRIPT), voice=kw.pop("voice", "alloy"),
                                   extra_body={**SHORT[DIA1], **kw.pop("extra_body", {})}, **kw)
    err = info.value.body
    assert info.value.status_code == 400
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["param"] == param and err["message"]


def test_too_large_is_413(server, client):
    with pytest.raises(openai.APIStatusError) as info:
        speech(client, DIA1, input="[S1] " + "a" * MAX_SCRIPT_BYTES)
    assert info.value.status_code == 413 and info.value.body["param"] == "input"
    r = httpx.post(server.url + "/v1/audio/speech", content=b"x" * (8 * MAX_SCRIPT_BYTES + 1),
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_unknown_route_is_404_and_bad_json_is_400(server):
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(server.url + "/v1/audio/speech", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_health_metrics_and_access_log(server, client):
    speech(client, DIA1, response_format="pcm")
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok"
    assert health["models"][DIA1]["state"] == "ready" and health["models"][DIA2]["sample_rate"] == 24000
    text = httpx.get(server.url + "/metrics").text
    for name in ("fastdia_queue_depth", "fastdia_active_rows", "fastdia_batch_occupancy_bucket",
                 "fastdia_decode_steps_total", "fastdia_time_to_first_audio_seconds_bucket",
                 "fastdia_request_duration_seconds_count", "fastdia_errors_total"):
        assert name in text, name
    assert f'fastdia_requests_total{{model="{DIA1}",status="200"}}' in text
    lines = [json.loads(ln) for ln in server.stderr().splitlines() if ln.startswith('{"method"')]
    assert any(ln["path"] == "/v1/audio/speech" and ln["status"] == 200 and ln["model"] == DIA1 and ln["bytes"] > 0
               for ln in lines)


def test_live_text_websocket(server):
    from websockets.sync.client import connect

    ws_url = server.url.replace("http", "ws") + "/v1/audio/speech/stream"
    with connect(ws_url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "session.update", "model": DIA2, "voice": "alloy", "seed": 1, "max_steps": 30}))
        for piece in ("[S1] Hel", "lo there. ", "[S2] Hi."):
            ws.send(json.dumps({"type": "input_text.append", "text": piece}))
        ws.send(json.dumps({"type": "input_text.done"}))
        audio, kinds = b"", []
        while True:
            event = json.loads(ws.recv(timeout=60))
            kinds.append(event["type"])
            if event["type"] == "audio.delta":
                assert event["sample_rate"] == 24000
                audio += base64.b64decode(event["audio"])
            if event["type"] in ("done", "error"):
                break
    assert kinds[-1] == "done", kinds
    assert len(audio) > 0 and len(audio) % 2 == 0

    with connect(ws_url, open_timeout=10) as ws:  # Dia-1 cannot take live text
        ws.send(json.dumps({"type": "session.update", "model": DIA1}))
        ws.send(json.dumps({"type": "input_text.append", "text": "[S1] Hi."}))
        event = json.loads(ws.recv(timeout=30))
        assert event["type"] == "error" and event["error"]["param"] == "model"


# --- a second server: an API key from the environment, one row and one queue place ---------------

@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-small")
    srv = ServerProcess("--model", DIA1, "--max-batch", "1", "--max-queue", "1", "--voices-dir", str(tmp),
                        env={"FASTDIA_API_KEY": "sekret"}, tmp=tmp)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_api_key(small_server):
    for key in ("wrong", ""):
        bad = openai.OpenAI(base_url=small_server.url + "/v1", api_key=key or "x", max_retries=0)
        if not key:
            r = httpx.get(small_server.url + "/v1/models")
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            continue
        with pytest.raises(openai.AuthenticationError) as info:
            speech(bad, DIA1)
        assert info.value.body["code"] == "invalid_api_key" and info.value.body["type"] == "invalid_request_error"
    good = openai.OpenAI(base_url=small_server.url + "/v1", api_key="sekret", max_retries=0)
    assert [m.id for m in good.models.list().data] == [DIA1]
    assert httpx.get(small_server.url + "/health").status_code == 200  # health stays open for probes


def test_503_while_loading_and_draining():
    # The app in-process, so the states are certain: before its lifespan starts nothing has loaded;
    # once the server drains, nothing new is taken.
    from fastapi.testclient import TestClient

    from fastdia.serve.app import ServerConfig, create_app

    app = create_app(ServerConfig(models=[DIA1]))
    body = {"model": DIA1, "input": SCRIPT, "voice": "alloy", **SHORT[DIA1]}
    loading = TestClient(app)  # no `with`: the lifespan (which loads the models) has not run
    r = loading.post("/v1/audio/speech", json=body)
    assert r.status_code == 503 and r.headers["retry-after"]
    assert r.json()["error"]["type"] == "server_error" and "loading" in r.json()["error"]["message"]
    assert loading.get("/health").status_code == 503

    with TestClient(app) as running:
        deadline = time.monotonic() + STARTUP_S
        while running.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running.post("/v1/audio/speech", json=body).status_code == 200
        app.state.server.draining = True
        r = running.post("/v1/audio/speech", json=body)
        assert r.status_code == 503 and r.headers["retry-after"] and "shutting down" in r.json()["error"]["message"]
        app.state.server.draining = False


def test_full_queue_is_429_with_retry_after(small_server):
    c = openai.OpenAI(base_url=small_server.url + "/v1", api_key="sekret", max_retries=0, timeout=120)
    results: list = []

    def one():
        try:
            speech(c, DIA1, response_format="pcm", extra_body={"max_tokens": 400})
            results.append("ok")
        except openai.RateLimitError as exc:
            results.append(exc)
        except Exception as exc:  # reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=one) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(results) == 5 and "ok" in results, results
    assert limited, results
    assert all(r == "ok" or isinstance(r, openai.RateLimitError) for r in results), results
    err = limited[0]
    assert int(err.response.headers["retry-after"]) >= 1
    assert set(err.body) == {"message", "type", "param", "code"}


def test_ctrl_c_stops_cleanly(small_server):
    assert small_server.stop() == 0
    assert "stopped" in small_server.stderr() and "Traceback" not in small_server.stderr()



@pytest.mark.parametrize("model", [DIA1, DIA2])
def test_every_response_says_its_seed(client, model):
    """x-seed: a request's own seed as given, else its built-in voice's fixed seed (the engine
    draws a fresh one for a saved voice without a seed: tests/test_engine.py)."""
    own = speech(client, model, response_format="wav")
    assert int(own.response.headers["x-seed"]) == SHORT[model]["seed"]
    unseeded = {k: v for k, v in SHORT[model].items() if k != "seed"}
    r = speech(client, model, voice="nova", response_format="wav", extra_body={"seed": None, **unseeded})
    assert int(r.response.headers["x-seed"]) == BUILTIN_VOICES["nova"]
