"""`fastdia serve --ray`: a local Ray Serve cluster with 2 replicas of tiny-random, spoken to with `openai`.

The server runs as the user runs it (a subprocess, stopped with Ctrl-C), so the test covers the CLI
hook, `build_app` and the replica app. Each replica's engine is tiny (1 row + 1 waiting), so a burst of
requests overflows it and must come back as OpenAI's 429, not as Ray's own plain-text answer.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from fastdia.serve.ray_app import OVERFLOW_ROOM, REPLICA_HEADER, deployment_options  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "[S1] Hi. [S2] Hello."
SHORT = {"max_tokens": 60, "seed": 3}
STARTUP_S = 240  # Ray's own start (~10 s) plus two replicas loading torch on 2 cores (~10 s), with margin


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_deployment_options_put_ray_limit_above_the_engine_queue():
    opts = deployment_options(max_batch=8, max_queue=64, min_replicas=1, max_replicas=4, num_cpus=2, num_gpus=1)
    assert opts["max_ongoing_requests"] == 8 + 64 + OVERFLOW_ROOM  # overload reaches the engine's 429
    assert opts["max_queued_requests"] == -1
    assert opts["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 1,
                                          "target_ongoing_requests": 6.0}
    assert opts["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1}
    with pytest.raises(ValueError):
        deployment_options(min_replicas=3, max_replicas=2)


class RayServer:
    """`python -m fastdia serve --ray ...` on a free port; stopped by its own PID."""

    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr_path = tmp / "ray-serve.err"
        self._stderr = open(self.stderr_path, "wb")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        # CI's box has 2 cores: Ray gets both, each replica reserves half of one.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastdia", "serve", "--ray", "--model", "tiny-random", "--replicas", "2",
             "--ray-cpus", "2", "--replica-cpus", "0.5", "--max-batch", "1", "--max-queue", "1",
             "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self._stderr)
        self.started_s: float | None = None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        # "listening" is printed after serve.run returns, i.e. once both replicas have loaded the model.
        t0 = time.monotonic()
        while time.monotonic() - t0 < STARTUP_S:
            if self.proc.poll() is not None:
                raise AssertionError(f"fastdia serve --ray exited with {self.proc.returncode}: {self.stderr()}")
            if "listening on" in self.stderr():
                self.started_s = time.monotonic() - t0
                return
            time.sleep(0.2)
        raise AssertionError(f"fastdia serve --ray not ready after {STARTUP_S} s: {self.stderr()}")

    def stop(self, timeout: float = 90) -> int | None:
        """Ctrl-C, as a user stops it; a kill only if that hangs (Ray's reaper then ends its processes)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
                self._stderr.close()
                return None
        self._stderr.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory):
    pytest.importorskip("ray.serve", reason='Ray Serve is not installed: pip install "fastdia[ray]"')
    server = RayServer(tmp_path_factory.mktemp("ray"))
    try:
        server.wait_ready()
        print(f"\nfastdia serve --ray ready in {server.started_s:.1f} s")
        yield server
    finally:
        server.stop()


def _client(server: RayServer, **kw):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", **kw)


def test_streams_audio_from_both_replicas(ray_server):
    client = _client(ray_server)
    replicas = set()
    # The router picks replicas at random among the least loaded, so a few requests reach both.
    for _ in range(20):
        with client.audio.speech.with_streaming_response.create(
                model="tiny-random", input=SCRIPT, voice="alloy", response_format="pcm", extra_body=SHORT) as resp:
            assert resp.headers["content-type"].startswith("audio/pcm")
            assert resp.headers["x-sample-rate"] == "24000"  # OpenAI's pcm: 24 kHz, 16-bit mono
            chunks = [c for c in resp.iter_bytes() if c]
            replicas.add(resp.headers[REPLICA_HEADER])
        audio = b"".join(chunks)
        assert len(audio) > 0 and len(audio) % 2 == 0  # 16-bit samples, streamed through Ray's proxy
        if len(replicas) == 2:
            break
    assert len(replicas) == 2, f"every request went to one replica: {replicas}"


def test_errors_keep_openai_shape(ray_server):
    client = _client(ray_server, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.speech.create(model="tiny-random", input="no speaker tag", voice="alloy", extra_body=SHORT)
    err = info.value.response.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "input" and err["code"] == "invalid_input"
    r = httpx.get(ray_server.url + "/v1/nothing-here", timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"  # the app's 404, not Ray's


def test_overload_is_openai_429_from_the_engines(ray_server):
    # 2 replicas x (1 generating + 1 waiting) hold 4; Ray admits 4 + OVERFLOW_ROOM per replica, so the
    # other requests of this burst reach an engine and get its 429 in OpenAI's shape.
    client = _client(ray_server, max_retries=0)

    def one(_):
        try:
            with client.audio.speech.with_streaming_response.create(
                    model="tiny-random", input=SCRIPT, voice="alloy", response_format="pcm",
                    extra_body={"max_tokens": 800, "seed": 3}) as resp:
                return 200, len(resp.read())
        except openai.RateLimitError as exc:
            return 429, exc.response

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(12)))
    ok = [r for s, r in results if s == 200]
    limited = [r for s, r in results if s == 429]
    assert ok and all(n > 0 for n in ok)
    assert limited, "a burst of 12 on 4 slots got no 429"
    for resp in limited:
        assert resp.headers["content-type"] == "application/json"
        assert int(resp.headers["retry-after"]) >= 1
        err = resp.json()["error"]
        assert err["type"] == "rate_limit_error" and err["code"] == "queue_full"
        assert REPLICA_HEADER.lower() in resp.headers  # answered by a replica's engine, not by Ray's proxy


def test_ctrl_c_stops_ray_and_the_replicas(ray_server):
    t0 = time.monotonic()
    rc = ray_server.stop()
    took = time.monotonic() - t0
    assert rc == 0, ray_server.stderr()
    assert "fastdia serve: stopped" in ray_server.stderr()
    print(f"\nstopped in {took:.1f} s")
    with pytest.raises(httpx.TransportError):
        httpx.get(ray_server.url + "/health", timeout=5)
