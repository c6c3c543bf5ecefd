"""One JSON line per request on the `fastdia.access` logger, and the per-request metrics.

A pure ASGI middleware, because a streamed response's status is known at its first message and its
size and duration only after its last, long after a `call_next` middleware has returned.

Each request gets an id, sent back as `X-Request-Id` and written in its line: a client's `X-Request-Id`
(up to 64 letters, digits, '-', '_', '.') is kept so that logs can be joined across services, else a
fresh one. A failed request's line also says its error code and reason: a client's mistake is that one
line; a traceback in the log means a bug in fastdia.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time

from .metrics import Metrics
from .openai_errors import StreamCut

access_logger = logging.getLogger("fastdia.access")

# Requests that make speech; their duration and status are also metrics, labelled by model.
SPEECH_PATHS = ("/v1/audio/speech", "/v1/audio/speech/stream")
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")


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
        given = dict(scope.get("headers") or ()).get(b"x-request-id", b"")
        request_id = given.decode() if _CLIENT_ID.fullmatch(given) else secrets.token_hex(8)
        scope["state"]["request_id"] = request_id
        seen = {"status": None, "bytes": 0}

        async def counting_send(message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                seen["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), (b"x-request-id", request_id.encode())]}
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
        except StreamCut:
            # Returning with the body unfinished makes uvicorn close the connection: the client sees
            # an incomplete response, which is the signal, and the reason is in this request's line.
            pass
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
                "duration": round(seconds, 4), "model": model, "bytes": seen["bytes"], "id": state.get("request_id")}
        if state.get("error"):
            line["error"] = state["error"]
            if state.get("reason"):
                line["reason"] = str(state["reason"])[:300]
        access_logger.info(json.dumps(line, ensure_ascii=False))
        if scope.get("path") in SPEECH_PATHS:
            label = model or "none"
            self.metrics.requests.labels(model=label, status=str(status)).inc()
            self.metrics.request_duration.labels(model=label, status=str(status)).observe(seconds)
