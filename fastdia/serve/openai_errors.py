"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with its HTTP status.

OpenAI clients read `error.message` and raise by status (openai-python: 400 BadRequestError, 401
AuthenticationError, 404 NotFoundError, 413/other APIStatusError, 429 RateLimitError, 503
InternalServerError), so every failure the server reports goes through `APIError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import FastDiaError


@dataclass
class APIError(Exception):
    """An error response.

    Attributes:
        status: HTTP status.
        message: what went wrong and how to fix it.
        type: OpenAI's error type (invalid_request_error, rate_limit_error, server_error, ...).
        param: the request field at fault, if one is.
        code: a short machine-readable code.
        headers: extra response headers (Retry-After on 429/503).
    """

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict:
        """The JSON body OpenAI sends."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamCut(Exception):
    """A streamed response failed after its headers left: the only honest signal left is to end the
    connection without the body's last chunk, so the client sees an incomplete response. Raised by
    the body's generator and caught by the access log middleware, which records `error` and ends
    the response without handing uvicorn a traceback (the client's mistake or an expected timeout
    is not a bug)."""

    def __init__(self, error: APIError) -> None:
        super().__init__(error.message)
        self.error = error


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 for input the client can fix."""
    return APIError(400, message, "invalid_request_error", param, code)


def too_large(message: str, param: str | None = None) -> APIError:
    return APIError(413, message, "invalid_request_error", param, "request_too_large")


def unauthorized(message: str) -> APIError:
    return APIError(401, message, "invalid_request_error", None, "invalid_api_key")


def not_found(message: str, param: str | None = None) -> APIError:
    return APIError(404, message, "invalid_request_error", param, "not_found")


def unavailable(message: str, retry_after: float = 5.0) -> APIError:
    return APIError(503, message, "server_error", None, "unavailable", {"Retry-After": _seconds(retry_after)})


def from_exception(exc: BaseException, param: str | None = None) -> APIError:
    """Map a library or engine exception to its response; anything unknown is a 500 (a bug).

    The engine's exception classes are matched by name so this module loads without the engine
    (and torch).
    """
    if isinstance(exc, APIError):
        return exc
    name = type(exc).__name__
    if name == "QueueFullError":
        retry = float(getattr(exc, "retry_after", 1.0) or 1.0)
        return APIError(429, str(exc) or "the server's queue is full; retry later", "rate_limit_error", None,
                        "queue_full", {"Retry-After": _seconds(retry)})
    if name == "RequestTimeoutError":
        return APIError(504, str(exc), "timeout_error", None, "timeout")
    if name == "EngineUnavailableError":
        return unavailable(str(exc) or "the model is not ready (loading or shutting down); retry later")
    if isinstance(exc, FastDiaError):
        code = {"ScriptError": "invalid_input", "VoiceError": "invalid_voice", "AudioError": "invalid_audio",
                "GenerationError": "invalid_options"}.get(name, "invalid_request")
        if param is None:
            param = {"ScriptError": "input", "VoiceError": "voice"}.get(name)
        return bad_request(str(exc), param, code)
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error", None, "internal_error")


def _seconds(value: float) -> str:
    # Retry-After takes whole seconds; never 0, which invites an immediate retry storm.
    return str(max(1, int(round(value))))
