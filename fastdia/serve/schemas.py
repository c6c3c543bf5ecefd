"""The server's request and response models, and the OpenAPI document built from them.

Routes return plain dicts (their shapes are OpenAI's); these models describe them for
`/openapi.json` (`responses=...` documents without filtering what a route returns) and the speech
body is validated with `SpeechBody`. `tests/test_server_schema.py` checks real responses against
the published schema, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .audio_formats import MEDIA_TYPES

API_KEY_SCHEME = "APIKey"


class SpeechBody(BaseModel):
    """POST /v1/audio/speech. Unknown fields are refused, so a typo in `extra_body` is not silently ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="a served model's id, or tts-1 / tts-1-hd / gpt-4o-mini-tts* for the first one")
    input: str = Field(description="a Dia script with [S1]/[S2] speaker tags; at most 100,000 UTF-8 bytes (413)")
    voice: str | dict = Field(description="a built-in name (alloy, ...: a fixed seed) or a saved voice, by name "
                                          "or as {\"id\": name}")
    instructions: str | None = Field(None, description="accepted and ignored: Dia is steered by the script itself")
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, description="only 1.0: Dia speaks at its own pace (anything else is a 400)")
    stream_format: Literal["audio", "sse"] = Field("audio", description="sse: speech.audio.delta events, then "
                                                                         "speech.audio.done (or an error event)")
    seed: int | None = Field(None, description="fastdia: the same seed, script and voice give the same audio")
    max_tokens: int | None = Field(None, description="fastdia, Dia-1: most audio frames per chunk (86 per second)")
    cfg_scale: float | None = Field(None, description="fastdia: classifier-free guidance scale")
    temperature: float | None = Field(None, description="fastdia: audio sampling temperature")
    top_p: float | None = Field(None, description="fastdia, Dia-1: nucleus sampling")
    cfg_filter_top_k: int | None = Field(None, description="fastdia, Dia-1: CFG filter top-k")
    text_temperature: float | None = Field(None, description="fastdia, Dia2: text stream temperature")
    top_k: int | None = Field(None, description="fastdia, Dia2: top-k sampling")
    cfg_filter_k: int | None = Field(None, description="fastdia, Dia2: CFG filter k")
    max_steps: int | None = Field(None, description="fastdia, Dia2: most decoder steps (12.5 per second)")


class ErrorDetail(BaseModel):
    message: str = Field(description="what went wrong and how to fix it")
    type: str = Field(description="invalid_request_error, rate_limit_error, timeout_error or server_error")
    param: str | None = Field(description="the request field at fault, if one is")
    code: str | None = Field(description="a short machine-readable code, e.g. invalid_input, queue_full")


class ErrorResponse(BaseModel):
    """OpenAI's error shape; every error status has it."""

    error: ErrorDetail


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class VoiceObject(BaseModel):
    """A voice; the built-in ones have only id, name, object and builtin."""

    id: str
    name: str
    object: Literal["voice"] = "voice"
    builtin: bool
    seconds: float | None = None
    transcript: str | None = None
    codec: str | None = None
    created: str | None = None
    source: str | None = None


class VoiceList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VoiceObject]


class VoiceDeleted(BaseModel):
    id: str
    object: Literal["voice.deleted"] = "voice.deleted"
    deleted: bool


class ModelHealth(BaseModel):
    model_config = ConfigDict(extra="allow")

    state: str = Field(description="loading, ready, failed, draining or stopped")
    family: str | None = None
    sample_rate: int | None = None
    queued: int | None = None
    active: int | None = None
    slots: int | None = None
    error: str | None = Field(None, description="why the model failed to load")


class Health(BaseModel):
    status: Literal["ok", "loading", "failed", "draining"]
    models: dict[str, ModelHealth]
    uptime: float


class Usage(BaseModel):
    input_tokens: int = Field(description="the script's UTF-8 bytes")
    output_tokens: int = Field(description="codec frames generated")
    total_tokens: int


class SpeechAudioDelta(BaseModel):
    """An SSE event: base64 bytes of the requested format's stream."""

    type: Literal["speech.audio.delta"]
    audio: str


class SpeechAudioDone(BaseModel):
    type: Literal["speech.audio.done"]
    usage: Usage


class ErrorEvent(BaseModel):
    """The last SSE or WebSocket event of a request that failed after it started."""

    type: Literal["error"]
    error: ErrorDetail


class LiveSessionUpdate(BaseModel):
    """WebSocket /v1/audio/speech/stream, optional first message."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["session.update"]
    model: str | None = None
    voice: str | dict | None = None
    seed: int | None = None
    cfg_scale: float | None = None
    temperature: float | None = None
    text_temperature: float | None = None
    top_k: int | None = None
    cfg_filter_k: int | None = None
    max_steps: int | None = None


class LiveTextAppend(BaseModel):
    type: Literal["input_text.append"]
    text: str = Field(description="the next piece of the script, any split; a session's text is at most "
                                  "100,000 bytes (error event, close 1009)")


class LiveTextDone(BaseModel):
    type: Literal["input_text.done"]


class LiveAudioDelta(BaseModel):
    type: Literal["audio.delta"]
    audio: str = Field(description="base64 16-bit little-endian mono PCM")
    sample_rate: int


class LiveWord(BaseModel):
    type: Literal["word"]
    word: str
    start: float


class LiveDone(BaseModel):
    type: Literal["done"]
    usage: Usage


# Extra models published under components/schemas: the SSE and WebSocket messages, which OpenAPI
# cannot attach to a route of their own.
EVENT_MODELS = (SpeechBody, SpeechAudioDelta, SpeechAudioDone, ErrorEvent, LiveSessionUpdate, LiveTextAppend,
                LiveTextDone, LiveAudioDelta, LiveWord, LiveDone)

_ERROR_TEXT = {
    400: "bad input: a script, option, field, voice, model or format that cannot be used",
    401: "missing or wrong API key",
    404: "no such route, model or voice",
    413: "the body or a field is over its limit",
    429: "the model's queue is full; retry after Retry-After seconds",
    503: "models are loading or the server is draining; retry after Retry-After seconds",
    504: "the request ran past --timeout and was cancelled",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these error statuses, each in OpenAI's error shape."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        out[status] = {"model": ErrorResponse, "description": _ERROR_TEXT[status]}
        if status in (429, 503):
            out[status]["headers"] = _RETRY_AFTER
    return out


SPEECH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the audio, streamed as it becomes final (headers X-Seed, X-Sample-Rate); with "
                         "stream_format sse, speech.audio.delta events then speech.audio.done (or an error event). "
                         "A failure after the headers left ends the body unfinished (or with an error event).",
          "content": {**{media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES.values()},
                      "text/event-stream": {"schema": {"type": "string",
                                                       "description": "data: lines, each a SpeechAudioDelta, "
                                                                      "SpeechAudioDone or ErrorEvent"}}},
          "headers": {"X-Seed": {"description": "the seed the request drew with", "schema": {"type": "integer"}}}},
    **errors(400, 401, 413, 429, 503, 504),
}

VOICE_UPLOAD_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["name", "audio", "transcript"],
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
            "audio": {"type": "string", "format": "binary", "description": "5-10 s of the voice alone (wav, flac, "
                                                                           "ogg, mp3); at most 50 MB"},
            "transcript": {"type": "string", "description": "the exact words, with speaker tags ([S1] ...)"},
            "force": {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no"],
                      "description": "replace a voice of the same name"},
        }}}},
}


def speech_body_schema() -> dict:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SpeechBody"}}}}


def finish_openapi(spec: dict, api_key: bool) -> dict:
    """Add what FastAPI cannot infer: the extra models, the API key scheme and where it applies.

    Args:
        spec: FastAPI's generated document.
        api_key: whether this server requires a key (without one, the /v1 routes are open, which the
            empty alternative in their `security` says).
    """
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in EVENT_MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    spec["components"]["securitySchemes"] = {API_KEY_SCHEME: {
        "type": "http", "scheme": "bearer",
        "description": "the server's --api-key as 'Authorization: Bearer KEY' (WebSocket: also ?api_key=KEY); "
                       "/health, /metrics, /openapi.json, /docs and the web page need none"}}
    requirement = [{API_KEY_SCHEME: []}] if api_key else [{API_KEY_SCHEME: []}, {}]
    # FastAPI documents a 422 for routes with parameters; this server answers bad input with OpenAI's 400.
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            if operation.get("responses", {}).pop("422", None) is not None:
                operation["responses"].setdefault("400", {
                    "description": _ERROR_TEXT[400],
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}})
    for path, operations in spec.get("paths", {}).items():
        if path.startswith("/v1/"):
            for operation in operations.values():
                operation["security"] = requirement
                operation.setdefault("responses", {}).setdefault("401", {
                    "description": _ERROR_TEXT[401],
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}})
    return spec
