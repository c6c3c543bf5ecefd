"""Through HTTP, as a user would: `fastdia serve`, then N concurrent OpenAI-client requests.

Starts `python -m fastdia serve --model MODEL --max-batch N` on 127.0.0.1 (a free port; stopped by
the PID this script started), then with the official `openai` client:

* one after another: N requests (seeds 0..N-1), each waiting for the previous one;
* concurrently: the same N requests at once, one thread each;

and reports both wall times, their ratio, and whether each request's bytes are the same alone
and in the crowd (they must be: a seed fixes the audio). Audio is WAV, decoded by the server's codec.

    python benchmarks/http_load.py --model tiny-random --n 16 --out benchmarks/results/http-load-tiny.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "[S1] Batching lets many voices speak at once. [S2] And every one of them hears the same model."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=None, help="Dia-1 max_tokens / Dia2 max_steps (model default)")
    ap.add_argument("--max-chunk-seconds", type=float, default=None,
                    help="passed to `fastdia serve` (growing pieces; default: the server's)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "fastdia", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--model", args.model, "--max-batch", str(args.n),
                             *([] if args.max_chunk_seconds is None else ["--max-chunk-seconds", str(args.max_chunk_seconds)])],
                            cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
        extra = {} if args.max_tokens is None else (
            {"max_steps": args.max_tokens} if "dia2" in args.model else {"max_tokens": args.max_tokens})

        def speak(i: int) -> bytes:
            r = client.audio.speech.create(model=args.model, voice="alloy", input=SCRIPT, response_format="wav",
                                           extra_body={"seed": i, **extra})
            return r.content

        speak(0)  # warm-up (first request prepares the batch's views)
        t0 = time.perf_counter()
        alone = [speak(i) for i in range(args.n)]
        sequential = time.perf_counter() - t0

        crowd: list[bytes | None] = [None] * args.n
        errors = []

        def worker(i):
            try:
                crowd[i] = speak(i)
            except Exception as exc:  # reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        concurrent = time.perf_counter() - t0
        same = [a == b for a, b in zip(alone, crowd)]
        info = httpx.get(url + "/v1/models", timeout=10).json()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    from fastdia.bench.runner import _machine

    result = {"machine": _machine(), "model": args.model, "n": args.n, "max_chunk_seconds": args.max_chunk_seconds,
              "sequential_s": sequential, "concurrent_s": concurrent, "speedup": sequential / concurrent, "same_bytes": same, "errors": errors,
              "audio_sha256": [hashlib.sha256(a).hexdigest()[:16] for a in alone], "models": info}
    print(f"{args.model}: {args.n} requests one after another {sequential:.1f} s, concurrently {concurrent:.1f} s: "
          f"x{result['speedup']:.2f}; same bytes alone and in the crowd: {sum(same)}/{len(same)}; errors: {len(errors)}")
    print(f"CPU: {result['machine']['cpu']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
