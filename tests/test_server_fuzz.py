"""`fastdia serve` against bad and odd input, as an attacker or a careless client sends it.

A real server process with both tiny models and an API key. Every case below must be answered
without a 5xx: an HTTP error in OpenAI's JSON shape, or on the WebSocket an error event and one of
the documented close codes. Meanwhile valid streams run beside the bad clients (one of them a live
session holding its slot while bad live text arrives), and each must give exactly the bytes it gives
alone. Afterwards the server log holds no traceback and the server still answers correctly.
"""

from __future__ import annotations

import base64
import io
import json
import time
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.test_server_openai import DIA1, DIA2, served

pytest.importorskip("websockets")
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ERROR_FIELDS = {"message", "type", "param", "code"}
WS_CLOSE_CODES = {1001, 1003, 1008, 1009, 1011, 1013}
SHORT = {DIA1: {"max_tokens": 40}, DIA2: {"max_steps": 12}}
LIVE = {"type": "session.update", "model": DIA2, "seed": 7, "max_steps": 60}
LIVE_TEXT = ("[S1] Good ", "morning to ", "you. [S2] And to you.")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with served(tmp_path_factory.mktemp("fuzz"), "--max-batch", "4", "--max-queue", "64",
                env={"FASTDIA_API_KEY": KEY}) as srv:
        yield srv


# ------------------------------------------------------------------------------ clients

def post_speech(url: str, body=None, raw: bytes | None = None, headers: dict | None = None) -> httpx.Response:
    head = {**AUTH, "content-type": "application/json", **(headers or {})}
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(url + "/v1/audio/speech", content=content, headers=head, timeout=120)


def ws_url(server) -> str:
    return server.url.replace("http", "ws") + "/v1/audio/speech/stream"


def live_session(server, frames, auth: bool = True, hold: threading.Event | None = None, split: int = 1):
    """Send `frames` (str / bytes / dict) on a live session; returns (pcm bytes, last event, close code).

    With `hold`, the frames from index `split` on wait for it: the session sits in its slot, waiting
    for text, while other clients come and go."""
    pcm, last = b"", None
    with connect(ws_url(server), additional_headers=AUTH if auth else {}, open_timeout=30,
                 max_size=None) as ws:
        for i, frame in enumerate(frames):
            if hold is not None and i == split:
                assert hold.wait(timeout=300)
            try:
                ws.send(json.dumps(frame) if isinstance(frame, dict) else frame)
            except ConnectionClosed:  # the server refused an earlier frame; its events are still to read
                break
        try:
            while True:
                event = json.loads(ws.recv(timeout=120))
                last = event
                if event["type"] == "audio.delta":
                    pcm += base64.b64decode(event["audio"])
                if event["type"] in ("done", "error"):
                    break
            ws.recv(timeout=30)  # the close frame
        except Exception:  # noqa: BLE001 - the close itself ends the loop
            pass
        code = ws.close_code
    return pcm, last, code


def good_live(server, hold=None):
    frames = [LIVE] + [{"type": "input_text.append", "text": t} for t in LIVE_TEXT] + [{"type": "input_text.done"}]
    pcm, last, _ = live_session(server, frames, hold=hold, split=2)
    assert last["type"] == "done", last
    return pcm


def good_http(server, model):
    body = {"model": model, "input": "[S1] The weather is fine. [S2] Is it?", "voice": "alloy",
            "response_format": "pcm", "seed": 11, **({"max_tokens": 120} if model == DIA1 else {"max_steps": 60})}
    r = post_speech(server.url, body)
    assert r.status_code == 200, r.text
    return r.content


def _is_error_shape(data) -> bool:
    return isinstance(data, dict) and set(data) == {"error"} and set(data["error"]) == ERROR_FIELDS \
        and isinstance(data["error"]["message"], str) and data["error"]["message"]


# ------------------------------------------------------------------------------ the cases

def _speech(family=DIA1, **fields):
    body = {"model": family, "input": "[S1] Hello there.", "voice": "alloy", **SHORT[family]}
    body.update(fields)
    return {k: v for k, v in body.items() if v is not _DROP}


_DROP = object()


def http_cases() -> list[tuple[str, dict]]:
    """(name, request) pairs: method, path and body/raw/headers/files for httpx."""
    cases = []

    def add(name, **request):
        cases.append((name, request))

    # wrong types
    for model in (DIA1, DIA2):
        for field, value in [("input", 123), ("input", None), ("input", ["[S1] hi"]), ("voice", 5), ("voice", []),
                             ("voice", {"id": 5}), ("voice", {}), ("model", None), ("model", 1), ("model", ["x"]),
                             ("seed", "x"), ("seed", 1.5), ("seed", True), ("temperature", "hot"),
                             ("response_format", 7), ("stream_format", "ws"), ("speed", "fast"),
                             ("instructions", {"a": 1})]:
            add(f"{model} {field}={value!r}", json=_speech(model, **{field: value}))
    # bad numbers
    numbers = {DIA1: [("temperature", -1), ("temperature", 1e308), ("max_tokens", 0), ("max_tokens", -5),
                      ("max_tokens", 10 ** 9), ("top_p", 2), ("top_p", -0.5), ("cfg_scale", 0), ("cfg_scale", -3),
                      ("cfg_filter_top_k", 0), ("cfg_filter_top_k", 10 ** 12), ("seed", -1), ("seed", 2 ** 64),
                      ("seed", 10 ** 40), ("speed", 0), ("speed", -1), ("speed", 1e309)],
               DIA2: [("max_steps", 0), ("max_steps", 10 ** 9), ("top_k", 0), ("top_k", -1), ("cfg_filter_k", -1),
                      ("text_temperature", -2), ("temperature", -1e-9), ("seed", -(2 ** 70)), ("cfg_scale", 0)]}
    for model, pairs in numbers.items():
        for field, value in pairs:
            add(f"{model} {field}={value!r}", json=_speech(model, **{field: value}))
    for token in (b"NaN", b"Infinity", b"-Infinity", b"1e999", b"9" * 5000):
        add(f"raw temperature {token[:12]!r}", raw=b'{"model": "%s", "input": "[S1] Hi.", "voice": "alloy", '
                                                 b'"max_tokens": 30, "temperature": %s}' % (DIA1.encode(), token))
    # scripts: tags only, empty, untagged, unknown tags, unicode oddities (valid ones may be spoken)
    for model in (DIA1, DIA2):
        for text in ("[S1]", "[S1][S2][S1]", "[S1]   [S2]", "", "   ", "no tag", "[S3] who?", "[S1] a [laughs]",
                     "[S1] \x00 nul", "[S1] \x01 ctl", "[S1] \u202eevil\u202c text", "[S1] zero\u200bwidth",
                     "[S1] \U0001F600 emoji \U0001F469\u200D\U0001F4BB", "\ufeff[S1] bom", "[S1] e\u0301 nfd",
                     "[S1] " + "\u0300" * 50, "[S1] \uffff\ufffe", "[S1] <break time=\"x\"/>", "[S1]" + "(" * 40,
                     "[S1][S2]", "[S2] " + "a" * 1200):
            add(f"{model} input={text[:24]!r}", json=_speech(model, input=text))
        add(f"{model} lone surrogate", raw=b'{"model": "%s", "input": "[S1] \\ud800 x", "voice": "alloy"}'
            % model.encode())
    # oversize fields and bodies
    add("input over 100 kB", json=_speech(DIA1, input="[S1] " + "a" * 100_001))
    add("body over 800 kB", raw=b'{"model": "' + b"m" * 900_000 + b'"}')
    add("model name 50 kB", json=_speech(DIA1, model="m" * 50_000))
    add("voice name 10 kB", json=_speech(DIA1, voice="v" * 10_000))
    add("instructions 500 kB", json=_speech(DIA1, instructions="x" * 500_000, input="[S1]"))
    # unknown models, voices, formats, fields
    for model in (DIA1, DIA2):
        add(f"{model} unknown voice", json=_speech(model, voice="nobody"))
        add(f"{model} traversal voice", json=_speech(model, voice="../../etc/passwd"))
        add(f"{model} traversal voice id", json=_speech(model, voice={"id": "../voices/x"}))
        add(f"{model} format ogg", json=_speech(model, response_format="ogg"))
        add(f"{model} unknown field", json=_speech(model, nope=1))
        add(f"{model} other family's option", json=_speech(model, **({"max_steps": 5} if model == DIA1
                                                                       else {"max_tokens": 5})))
    add("unknown model", json=_speech(DIA1, model="no-such-model"))
    add("missing input", json=_speech(DIA1, input=_DROP))
    # bodies that are not JSON objects
    deep = 100_000
    for name, raw in [("nested list", b"[" * deep + b"]" * deep), ("nested object", b'{"a":' * deep + b"1" + b"}" * deep),
                      ("nested voice", b'{"model": "tiny-random", "input": "[S1] Hi.", "voice": ' + b"[" * 900
                       + b"]" * 900 + b"}"), ("not json", b"{nope"), ("array", b"[1, 2]"), ("string", b'"hi"'),
                      ("empty", b""), ("invalid utf-8", b'{"input": "\xff\xfe"}'), ("null", b"null")]:
        add(f"body {name}", raw=raw)
    add("form instead of json", raw=b"model=tiny-random&input=hi",
        headers={"content-type": "application/x-www-form-urlencoded"})
    # auth
    add("no key", json=_speech(DIA1), headers={"Authorization": ""})
    add("wrong key", json=_speech(DIA1), headers={"Authorization": "Bearer nope"})
    add("basic auth", json=_speech(DIA1), headers={"Authorization": "Basic eDp5"})
    # other routes
    for method, path in [("GET", "/v1/models/%2e%2e%2fetc"), ("GET", "/v1/models/" + "x" * 5000),
                         ("DELETE", "/v1/audio/voices/..%2f..%2fetc"), ("DELETE", "/v1/audio/voices/alloy"),
                         ("DELETE", "/v1/audio/voices/nobody"), ("DELETE", "/v1/audio/voices/" + "n" * 300),
                         ("GET", "/v1/nothing"), ("PUT", "/v1/audio/speech"), ("GET", "/v1/audio/speech"),
                         ("GET", "/static/../app.py"), ("GET", "/static/%2e%2e/app.py")]:
        add(f"{method} {path[:40]}", method=method, path=path)
    wav = io.BytesIO()
    sf.write(wav, np.zeros(4800, np.float32), 24000, format="WAV")
    for name, data, files in [
        ("voice no fields", {}, None),
        ("voice long extension", {"name": "v1", "transcript": "[S1] Hi."}, {"audio": ("a." + "x" * 300, wav.getvalue())}),
        ("voice not audio", {"name": "v2", "transcript": "[S1] Hi."}, {"audio": ("a.wav", b"junk" * 100)}),
        ("voice bad name", {"name": "../x", "transcript": "[S1] Hi."}, {"audio": ("a.wav", wav.getvalue())}),
        ("voice builtin name", {"name": "alloy", "transcript": "[S1] Hi."}, {"audio": ("a.wav", wav.getvalue())}),
        ("voice tags-only transcript", {"name": "v3", "transcript": "[S1][S2]"}, {"audio": ("a.wav", wav.getvalue())}),
        ("voice audio as text", {"name": "v4", "transcript": "[S1] Hi.", "audio": "text"}, None),
        ("voice empty audio", {"name": "v5", "transcript": "[S1] Hi."}, {"audio": ("a.wav", b"")}),
    ]:
        add(name, method="POST", path="/v1/audio/voices", data=data, files=files)
    return cases


def run_http(server, request: dict) -> tuple[int, object]:
    method, path = request.get("method", "POST"), request.get("path", "/v1/audio/speech")
    headers = {**AUTH, **request.get("headers", {})}
    headers = {k: v for k, v in headers.items() if v}
    if path == "/v1/audio/speech" and method == "POST":
        raw = request["raw"] if "raw" in request else json.dumps(request["json"]).encode()
        headers.setdefault("content-type", "application/json")
        r = httpx.request(method, server.url + path, content=raw, headers=headers, timeout=120)
    else:
        r = httpx.request(method, server.url + path, headers=headers, data=request.get("data"),
                          files=request.get("files"), timeout=120)
    if r.status_code == 200 or r.headers.get("content-type", "").startswith(("audio/", "text/html")):
        return r.status_code, None
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text[:200]


def ws_cases() -> list[tuple[str, list, bool]]:
    """(name, frames, authorized): sessions a careless or hostile client opens."""
    text = lambda t: {"type": "input_text.append", "text": t}  # noqa: E731
    done = {"type": "input_text.done"}
    cases = [
        ("binary frame", [b'{"type": "input_text.done"}'], True),
        ("binary after text", [text("[S1] Hi"), b"\x00\x01"], True),
        ("not json", ["{nope"], True),
        ("array", ["[1]"], True),
        ("no type", ['{"text": "hi"}'], True),
        ("type not a string", ['{"type": 5}'], True),
        ("deep nesting", ["[" * 100_000 + "]" * 100_000], True),
        ("deep nesting in text", ['{"type": "input_text.append", "text": ' + "[" * 500 + "]" * 500 + "}"], True),
        ("unknown type", [{"type": "hello"}], True),
        ("unknown session field", [{"type": "session.update", "nope": 1}], True),
        ("session model list", [{"type": "session.update", "model": []}, text("[S1] Hi"), done], True),
        ("session voice int", [{"type": "session.update", "voice": 5}, text("[S1] Hi"), done], True),
        ("session voice traversal", [{"type": "session.update", "voice": "../x"}, text("[S1] Hi"), done], True),
        ("session seed string", [{"type": "session.update", "seed": "x"}, text("[S1] Hi"), done], True),
        ("session huge max_steps", [{"type": "session.update", "max_steps": 10 ** 9}, text("[S1] Hi"), done], True),
        ("session bad temperature", [{"type": "session.update", "temperature": -1}, text("[S1] Hi"), done], True),
        ("session Dia-1 model", [{"type": "session.update", "model": DIA1}, text("[S1] Hi"), done], True),
        ("session unknown model", [{"type": "session.update", "model": "nope"}, text("[S1] Hi"), done], True),
        ("text not a string", [text(5)], True),
        ("tags only", [text("[S1][S2][S1]"), done], True),
        ("tags only, spaced", [text("[S1]   [S2]"), done], True),
        ("one tag", [text("[S1]"), done], True),
        ("empty", [text(""), done], True),
        ("done at once", [done], True),
        ("unknown tag", [text("[S1] Hi [S3] there"), done], True),
        ("tag stuck in a later piece", [text("[S1] Hello "), text("there[S2]"), done], True),
        ("control character", [text("[S1] a\x01b"), done], True),
        ("lone surrogate", ['{"type": "input_text.append", "text": "[S1] \\ud800"}', done], True),
        ("text over the limit", [text("[S1] ")] + [text("a" * 50_000)] * 3 + [done], True),
        ("one frame over the frame limit", [text("a" * 900_000)], True),
        ("no key", [text("[S1] Hi"), done], False),
    ]
    return cases


# ------------------------------------------------------------------------------ the test

def test_bad_clients_fail_alone_and_cleanly(server):
    reference = {"live": good_live(server), DIA1: good_http(server, DIA1), DIA2: good_http(server, DIA2)}
    assert all(len(v) > 0 for v in reference.values())

    hold = threading.Event()
    results: dict = {}

    def held_live():
        results["held"] = good_live(server, hold=hold)

    held = threading.Thread(target=held_live)
    held.start()
    failures = []
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            # Valid streams beside the bad ones, a bounded number of times.
            good = [pool.submit(good_http, server, m) for m in (DIA1, DIA2, DIA2)]
            for name, frames, authorized in ws_cases():
                pcm, last, code = live_session(server, frames, auth=authorized)
                if last is None and code == 1009:  # a frame over the limit: uvicorn closes before fastdia reads it
                    continue
                if not (last and last["type"] == "error" and set(last["error"]) == ERROR_FIELDS
                        and code in WS_CLOSE_CODES and code != 1011):
                    failures.append(("ws", name, last, code))
            for name, request in http_cases():
                status, body = run_http(server, request)
                if status >= 500 or (status != 200 and not _is_error_shape(body)):
                    failures.append(("http", name, status, body))
            good_outputs = [f.result(timeout=300) for f in good]
    finally:
        hold.set()
        held.join(timeout=300)
    assert not failures, failures
    assert results.get("held") == reference["live"], "the live session beside the bad clients changed"
    assert good_outputs[0] == reference[DIA1] and good_outputs[1] == good_outputs[2] == reference[DIA2]

    # Alive and correct afterwards; no traceback for anything the clients did.
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    assert good_http(server, DIA2) == reference[DIA2]
    log = server.stderr_path.read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 2000:][:6000]


def test_ws_error_events_name_their_close_codes(server):
    """The documented codes: 1003 binary frame, 1008 bad input, 1009 too much text, and a bad
    session's error reaches only that session."""
    _, last, code = live_session(server, [b"\x00"])
    assert code == 1003 and last["error"]["code"] == "binary_frame"
    _, last, code = live_session(server, [{"type": "input_text.append", "text": "[S1] " + "a" * 60_000}] * 2)
    assert code == 1009 and last["error"]["code"] == "request_too_large" and last["error"]["param"] == "text"
    _, last, code = live_session(server, [{"type": "input_text.append", "text": "[S1][S2][S1]"},
                                          {"type": "input_text.done"}])
    assert code == 1008 and last["error"]["param"] == "text" and "[S1]" in last["error"]["message"]
    _, last, code = live_session(server, [{"type": "input_text.append", "text": "[S1]"}, {"type": "input_text.done"}])
    assert code == 1008 and "nothing to say" in last["error"]["message"]


def test_client_mistakes_are_one_access_line_with_id_and_reason(server):
    r = post_speech(server.url, _speech(DIA1, input="[S1]"), headers={"X-Request-Id": "fuzz-line-1"})
    assert r.status_code == 400 and r.headers["x-request-id"] == "fuzz-line-1"
    deadline = time.monotonic() + 10  # the access line is written as the response ends, maybe just after
    while True:
        lines = [json.loads(ln) for ln in server.stderr_path.read_text().splitlines() if '"fuzz-line-1"' in ln]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(lines) == 1 and lines[0]["status"] == 400 and lines[0]["error"] == "invalid_input"
    assert "nothing to say" in lines[0]["reason"]
    assert post_speech(server.url, _speech(DIA1), headers={"X-Request-Id": "bad id!"}).headers["x-request-id"] != "bad id!"
