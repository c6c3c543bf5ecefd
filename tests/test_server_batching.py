"""Continuous batching under load, through a real server and the official `openai` client.

Requests join and leave one running batch; what is checked is what a user relies on: with a seed,
a request's audio is byte-identical alone or with 15 others; requests did share decode steps; a
client that goes away frees its rows; many requests in a row leave memory flat; live text over the
WebSocket gives what the whole script gives.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time

import httpx
import openai
import pytest

from tests.test_server_openai import DIA1, DIA2, served

SLOTS = 16
TEXTS = [f"[S1] Request {i} says hi. [S2] Hello {i}!" for i in range(SLOTS)]
SHORT = {DIA1: {"max_tokens": 120}, DIA2: {"max_steps": 40}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with served(tmp_path_factory.mktemp("batching"), "--max-batch", str(SLOTS), "--max-queue", "64") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _stream(client, model, i, out, errors):
    try:
        with client.audio.speech.with_streaming_response.create(
                model=model, input=TEXTS[i], voice="alloy", response_format="pcm",
                extra_body={**SHORT[model], "seed": 500 + i}) as r:
            out[i] = b"".join(r.iter_bytes())
    except Exception as exc:  # reported by the test, not lost in a thread
        errors.append(exc)


def _metric(server, name: str, model: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    found = re.search(rf'^{re.escape(name)}{{[^}}]*model="{re.escape(model)}"[^}}]*}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def _concurrent(client, model, n):
    out, errors = {}, []
    threads = [threading.Thread(target=_stream, args=(client, model, i, out, errors)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert sorted(out) == list(range(n))
    return out


@pytest.mark.parametrize("model, n", [(DIA1, SLOTS), (DIA2, 8)])
def test_concurrent_streams_equal_solo_runs(server, client, model, n):
    solo = {}
    for i in (0, n // 2, n - 1):  # alone in the batch
        _stream(client, model, i, solo, [])
    count0 = _metric(server, "fastdia_batch_occupancy_count", model)
    sum0 = _metric(server, "fastdia_batch_occupancy_sum", model)

    together = _concurrent(client, model, n)

    for i, audio in solo.items():
        assert len(audio) > 0
        assert together[i] == audio, f"request {i}: batched audio differs from its solo run"
    steps = _metric(server, "fastdia_batch_occupancy_count", model) - count0
    mean_rows = (_metric(server, "fastdia_batch_occupancy_sum", model) - sum0) / steps * SLOTS
    # Run one after another, the mean would be 1 request per step.
    assert mean_rows > 2, f"requests did not share decode steps (mean {mean_rows:.2f} per step)"


def test_disconnected_clients_free_their_rows(server):
    def long_request():
        body = {"model": DIA1, "input": TEXTS[0], "voice": "alloy", "response_format": "pcm",
                "max_tokens": 3000, "seed": 1}
        with httpx.stream("POST", server.url + "/v1/audio/speech", json=body, timeout=60) as r:
            assert r.status_code == 200
            for _ in r.iter_bytes():
                break  # first audio, then hang up

    threads = [threading.Thread(target=long_request) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _metric(server, "fastdia_active_rows", DIA1) == 0:
            break
        time.sleep(0.1)
    assert _metric(server, "fastdia_active_rows", DIA1) == 0, "rows of gone clients were not freed"
    health = httpx.get(server.url + "/health").json()
    assert "active" in json.dumps(health)


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


def test_sequential_requests_leave_memory_flat(server, client):
    def one(i):
        client.audio.speech.create(model=DIA1, input=TEXTS[i % SLOTS], voice="alloy", response_format="pcm",
                                   extra_body={"max_tokens": 40, "seed": i})

    for i in range(20):  # warm-up: caches, allocator pools, first-use imports
        one(i)
    before = _rss_kb(server.proc.pid)
    for i in range(200):
        one(i)
    after = _rss_kb(server.proc.pid)
    assert after <= before * 1.05, f"RSS grew from {before} kB to {after} kB over 200 requests"


def test_long_script_runs_chunk_after_chunk_in_one_request(client):
    script = " ".join(f"[S{1 + i % 2}] This is turn {i} of a script that is longer than one chunk." for i in range(8))
    assert len(script.encode()) > 300  # over the 160-token chunk budget: several generations
    audio = client.audio.speech.create(model=DIA1, input=script, voice="alloy", response_format="pcm",
                                       extra_body={"max_tokens": 300, "seed": 9}).content
    assert len(audio) > 0 and len(audio) % 2 == 0


def test_live_text_equals_whole_script(server, client):
    from websockets.sync.client import connect

    script = "[S1] Live text arrives in pieces. [S2] And is spoken the same."
    whole = client.audio.speech.create(model=DIA2, input=script, voice="alloy", response_format="pcm",
                                       extra_body={"max_steps": 60, "seed": 77}).content
    pieces, words = [], []
    with connect(server.url.replace("http", "ws") + "/v1/audio/speech/stream", open_timeout=30) as ws:
        ws.send(json.dumps({"type": "session.update", "model": DIA2, "voice": "alloy", "seed": 77, "max_steps": 60}))
        for k in range(0, len(script), 7):  # odd splits, mid-word
            ws.send(json.dumps({"type": "input_text.append", "text": script[k:k + 7]}))
        ws.send(json.dumps({"type": "input_text.done"}))
        while True:
            event = json.loads(ws.recv(timeout=120))
            if event["type"] == "audio.delta":
                pieces.append(base64.b64decode(event["audio"]))
            elif event["type"] == "word":
                words.append(event["word"])
            elif event["type"] == "done":
                break
            else:
                raise AssertionError(event)
    live = b"".join(pieces)
    assert live == whole  # pcm of the whole script is 24 kHz s16le, as the socket's deltas
