"""One JSON line per request on the `fastdia.access` logger, and the per-request metrics.

A pure ASGI middleware, because a streamed response's status is known at its first message and its
size and duration only after its last, long after a `call_next` middleware has returned.
"""

from __future__ import annotations

import json
import logging
import time

from .metrics import Metrics

access_logger = logging.getLogger("fastdia.access")

# Requests that make speech; their duration and status are also metrics, labelled by model.
SPEECH_PATHS = ("/v1/audio/speech", "/v1/audio/speech/stream")


class AccessLogMiddleware:
    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        scope.setdefault("state", {})
        seen = {"status": None, "bytes": 0}

        async def counting_send(message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                seen["status"] = message["status"]
            elif kind == "http.response.body":
                seen["bytes"] += len(message.get("body", b""))
            elif kind == "websocket.accept":
                seen["status"] = 101
            elif kind == "websocket.send":
                seen["bytes"] += len(message.get("bytes") or b"") + len((message.get("text") or "").encode())
            elif kind == "websocket.close" and seen["status"] is None:
                seen["status"] = 403  # closed before accepting
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except BaseException:
            seen["status"] = seen["status"] or 500
            raise
        finally:
            self._record(scope, seen, time.perf_counter() - start)

    def _record(self, scope, seen: dict, seconds: float) -> None:
        state = scope.get("state") or {}
        status = seen["status"] or 500
        model = state.get("model")
        line = {"method": scope.get("method", "WS"), "path": scope.get("path"), "status": status,
                "duration": round(seconds, 4), "model": model, "bytes": seen["bytes"]}
        if state.get("error"):
            line["error"] = state["error"]
        access_logger.info(json.dumps(line, ensure_ascii=False))
        if scope.get("path") in SPEECH_PATHS:
            label = model or "none"
            self.metrics.requests.labels(model=label, status=str(status)).inc()
            self.metrics.request_duration.labels(model=label, status=str(status)).observe(seconds)
