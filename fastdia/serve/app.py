"""The HTTP server: OpenAI's speech API over fastdia engines, plus voices, health and metrics.

`create_app(config)` returns a FastAPI app whose models load in a background thread once it starts,
so /health answers (and speech requests get 503) while they load. OpenAI's openai-python API
reference is the contract for /v1/audio/speech, /v1/models and the error shape.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import FastDiaError, VoiceNotFoundError
from ..text import MAX_SCRIPT_BYTES
from .access_log import AccessLogMiddleware
from .audio_formats import MEDIA_TYPES, stream_encoder
from .metrics import Metrics
from .common import authorize, voice_name
from .json_body import parse_object
from .live import add_live_route
from .openapi import API_DESCRIPTION, publish_schema, package_version
from .schemas import (SPEECH_RESPONSES, VOICE_UPLOAD_BODY, Health, ModelList, ModelObject, SpeechBody, VoiceDeleted,
                      VoiceList, VoiceObject, errors, speech_body_schema)
from .openai_errors import APIError, StreamCut, bad_request, from_exception, not_found, too_large, unavailable

log = logging.getLogger("fastdia.serve")

STATIC_DIR = Path(__file__).parent / "static"
# JSON escapes can take 6 bytes per character of `input`; past this the body cannot hold a valid input.
MAX_BODY_BYTES = 8 * MAX_SCRIPT_BYTES
MAX_VOICE_UPLOAD_BYTES = 50 * 1024 * 1024
# OpenAI's model names, so that clients written for OpenAI work unchanged: they use the first model.
OPENAI_MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-03-20",
                        "gpt-4o-mini-tts-2025-12-15")

# Sampling options accepted as extra JSON fields (openai-python's `extra_body`), per family.
DIA1_OPTIONS = ("seed", "max_tokens", "cfg_scale", "temperature", "top_p", "cfg_filter_top_k")
DIA2_OPTIONS = ("seed", "cfg_scale", "temperature", "text_temperature", "top_k", "cfg_filter_k", "max_steps")


@dataclass
class ServerConfig:
    """What `fastdia serve` was asked to run (each field is a CLI flag)."""

    models: list[str]
    device: str | None = None
    dtype: str | None = None
    max_batch: int = 8
    max_queue: int = 64
    codec_batch: int | None = None
    # Pieces of a response's audio: 0.5 s each (the default), or, above 0.5, 0.5 s then as long as
    # all the audio before each, up to this (fastdia.audio.ramp_chunk): fewer, longer codec
    # windows, in time for a listener only while generation runs well above real time.
    max_chunk_seconds: float = 0.5
    timeout: float | None = None
    voices_dir: str | None = None
    api_key: str | None = None
    drain_timeout: float = 30.0
    on_load_failure: Callable[[str, BaseException], None] | None = field(default=None, repr=False)


class Server:
    """The engines and their loading state; shared by the routes."""

    def __init__(self, config: ServerConfig, metrics: Metrics) -> None:
        from ..voices import VoiceStore
        from .voices import VoiceEncoder

        if not config.models:
            raise FastDiaError("give at least one --model to serve")
        self.config = config
        self.metrics = metrics
        self.engines: dict[str, Any] = {}
        self.states: dict[str, str] = {m: "loading" for m in config.models}
        self.failures: dict[str, str] = {}
        self.draining = False
        self.store = VoiceStore(config.voices_dir)
        self.voice_encoder = VoiceEncoder(config.models, config.device)
        self.started = time.time()
        self.live_sessions = 0  # open WebSocket sessions (the drain lets their last events leave)
        self._shutdown_lock = threading.Lock()
        self._stopped = False
        self._cut = threading.Event()

    def load_all(self) -> None:
        """Load every model in order (blocking; run in a thread) and start its scheduler."""
        for model in self.config.models:
            if self.draining:
                return
            try:
                from .engine import Engine

                c = self.config
                engine = Engine.load(model, device=c.device, dtype=c.dtype, max_batch=c.max_batch,
                                     max_queue=c.max_queue, timeout=c.timeout, voices_dir=c.voices_dir,
                                     codec_batch=c.codec_batch,
                                     metrics=self.metrics)
                engine.start()
            except BaseException as exc:  # reported on /health and by the CLI, never lost in a thread
                self.states[model], self.failures[model] = "failed", f"{type(exc).__name__}: {exc}"
                if self.config.on_load_failure is not None:  # the CLI says it, as its one error line
                    self.config.on_load_failure(model, exc)
                else:
                    log.error("could not load model %s: %s", model, exc)
                return
            self.engines[model] = engine
            self.states[model] = "ready"
            log.info("model %s ready (%s, %d Hz)", model, engine.family, engine.sample_rate)

    def shutdown(self) -> None:
        """Stop taking requests (503 with Retry-After), let the running ones finish for up to
        drain_timeout seconds (all engines together), end those still running with an error that says
        so (an SSE or WebSocket client gets it as its error event), and stop the engines.

        Idempotent: uvicorn's lifespan calls it again after the signal handler's drain."""
        with self._shutdown_lock:
            if self._stopped:
                return
            self.draining = True
            engines = list(self.engines.items())
            for model, engine in engines:
                self.states[model] = "draining"
                engine.drain(0)  # refuses new requests from now on
            limit = self.config.drain_timeout
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline and not self._cut.is_set() and any(_busy(e) for _, e in engines):
                self._cut.wait(0.05)
            for model, engine in engines:
                engine.close(f"the server shut down before this request finished (its drain period, {limit:g} s, "
                             "ran out); retry it")
                self.states[model] = "stopped"
            # The ended sessions' error events are on their way: let them leave before uvicorn closes sockets.
            end = time.monotonic() + 5.0
            while self.live_sessions > 0 and time.monotonic() < end:
                time.sleep(0.02)
            self._stopped = True

    def cut_drain(self) -> None:
        """End the drain period now (a second Ctrl-C)."""
        self._cut.set()

    def engine(self, name: str):
        """The ready engine serving `name`; APIError 400 for an unknown model, 503 while not ready."""
        if name in OPENAI_MODEL_ALIASES:
            name = self.config.models[0]
        if name not in self.states:
            shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
            raise bad_request(f"unknown model {shown}; this server serves {', '.join(self.config.models)} "
                              f"(or {OPENAI_MODEL_ALIASES[0]}-style names for the first)", "model", "model_not_found")
        if self.draining:
            raise unavailable("the server is shutting down")
        state = self.states[name]
        if state == "failed":
            raise unavailable(f"model {name!r} failed to load: {self.failures[name]}")
        if state != "ready":
            raise unavailable(f"model {name!r} is {state}; retry in a few seconds")
        engine = self.engines[name]
        if getattr(engine, "state", "ready") != "ready":
            raise unavailable(f"model {name!r} is {engine.state}")
        return engine

    def check_voice(self, voice: str) -> None:
        from .voices import builtin_voices

        if voice in builtin_voices():
            return
        try:
            exists = self.store.exists(voice)
        except FastDiaError as exc:  # an invalid name
            raise bad_request(str(exc), "voice", "invalid_voice") from None
        if not exists:
            saved = [p.stem for p in self.store.directory.glob("*.npz")] if self.store.directory.is_dir() else []
            raise bad_request(f"unknown voice {voice!r}; use a built-in voice ({', '.join(builtin_voices())}) "
                              f"or a saved one ({', '.join(sorted(saved)) or 'none saved yet'})", "voice",
                              "voice_not_found")


def _busy(engine) -> bool:
    stats = engine.stats()
    return bool(stats.get("active") or stats.get("queued"))


def create_app(config: ServerConfig, metrics: Metrics | None = None) -> FastAPI:
    """The server app. Models start loading when the app starts (its lifespan)."""
    metrics = metrics or Metrics()
    server = Server(config, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=server.load_all, name="fastdia-load", daemon=True).start()
        yield
        await asyncio.to_thread(server.shutdown)

    # The schema and its page are open like /health: clients and generators read them before they
    # have a key, and they hold nothing secret (the models served are behind the key, at /v1/models).
    app = FastAPI(title="fastdia", version=package_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json", description=API_DESCRIPTION)
    app.state.server = server
    publish_schema(app, bool(config.api_key), STATIC_DIR)
    app.add_middleware(AccessLogMiddleware, metrics=metrics)
    _add_error_handlers(app, metrics)
    _add_routes(app, server)


    add_live_route(app, server)
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    return app


def _add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    def respond(request: Request, err: APIError) -> JSONResponse:
        metrics.errors.labels(type=err.code or err.type).inc()
        request.state.error, request.state.reason = err.code or err.type, err.message
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return respond(request, exc)

    @app.exception_handler(FastDiaError)
    async def fastdia_error(request: Request, exc: FastDiaError):
        return respond(request, from_exception(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return respond(request, _validation_error(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            err = not_found(f"no route {request.method} {request.url.path}")
        else:
            err = APIError(exc.status_code, str(exc.detail), "invalid_request_error", None, None)
        return respond(request, err)


def _validation_error(errors: list[dict]) -> APIError:
    """pydantic's first error as OpenAI's 400, naming the field."""
    first = errors[0] if errors else {}
    loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "form", "query")]
    param = loc[0] if loc else None
    kind = first.get("type")
    if kind == "extra_forbidden":
        message = f"unknown parameter {param!r}"
    elif kind == "missing":
        message = f"missing required parameter {param!r}"
    else:
        message = f"invalid value for {param!r}: {first.get('msg', 'invalid')}"
    return bad_request(message, param, "invalid_value" if kind != "missing" else "missing_required_parameter")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` (declared or actual length)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(f"request body of {int(declared)} bytes is over the limit of {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(f"request body is over the limit of {limit} bytes")
    return bytes(body)


def _parse_speech(raw: bytes) -> SpeechBody:
    data = parse_object(raw or b"null")
    try:
        return SpeechBody.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc.errors()) from None


def _options(body: SpeechBody, family: str) -> dict:
    """The sampling options given, refusing those of the other family (as the CLI does)."""
    allowed = DIA2_OPTIONS if family == "dia2" else DIA1_OPTIONS
    given = {k: getattr(body, k) for k in set(DIA1_OPTIONS + DIA2_OPTIONS) if getattr(body, k) is not None}
    wrong = sorted(k for k in given if k not in allowed)
    if wrong:
        label = "Dia2" if family == "dia2" else "Dia-1"
        raise bad_request(f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to a {label} model; "
                          f"its options are {', '.join(allowed)}", wrong[0], "unsupported_parameter")
    return given


def _add_routes(app: FastAPI, server: Server) -> None:
    @app.get("/", include_in_schema=False)
    async def index():
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            raise not_found("no web page is installed; the API is under /v1")
        return FileResponse(page, media_type="text/html")

    @app.get("/health", responses={200: {"model": Health, "description": "every model is ready"},
                                   503: {"model": Health, "description": "loading, failed or draining"}})
    async def health():
        models = {}
        for model, state in server.states.items():
            info: dict[str, Any] = {"state": state}
            engine = server.engines.get(model)
            if engine is not None:
                info.update(family=engine.family, sample_rate=engine.sample_rate,
                            state=getattr(engine, "state", state), **engine.stats())
            if model in server.failures:
                info["error"] = server.failures[model]
            models[model] = info
        states = {m["state"] for m in models.values()}
        status = ("draining" if server.draining else "failed" if "failed" in states
                  else "ok" if states == {"ready"} else "loading")
        return JSONResponse({"status": status, "models": models, "uptime": round(time.time() - server.started, 1)},
                            status_code=200 if status == "ok" else 503)

    @app.get("/metrics", responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                                          "description": "Prometheus text format"}})
    async def metrics_route():
        for model, engine in list(server.engines.items()):
            stats = engine.stats()  # the engine also sets these per step; this keeps them fresh when idle
            server.metrics.queue_depth.labels(model=model).set(stats.get("queued", 0))
            server.metrics.active_rows.labels(model=model).set(stats.get("active", 0))
        data, content_type = server.metrics.render()
        return Response(data, media_type=content_type)

    @app.get("/v1/models", responses={200: {"model": ModelList}})
    async def list_models(request: Request):
        authorize(server, request.headers.get("authorization"))
        created = int(server.started)
        return {"object": "list", "data": [{"id": m, "object": "model", "created": created, "owned_by": "fastdia"}
                                           for m in server.config.models]}

    @app.get("/v1/models/{model:path}", responses={200: {"model": ModelObject}, **errors(404)})
    async def get_model(model: str, request: Request):
        authorize(server, request.headers.get("authorization"))
        if model not in server.states:
            raise not_found(f"model {model!r} is not served here", "model")
        return {"id": model, "object": "model", "created": int(server.started), "owned_by": "fastdia"}

    # The body is read by hand (a size limit before parsing, depth-checked JSON), so its schema is given here.
    @app.post("/v1/audio/speech", responses=SPEECH_RESPONSES, openapi_extra={"requestBody": speech_body_schema()})
    async def speech(request: Request):
        authorize(server, request.headers.get("authorization"))
        body = _parse_speech(await _read_body(request, MAX_BODY_BYTES))
        size = len(body.input.encode("utf-8", "surrogatepass"))
        if size > MAX_SCRIPT_BYTES:
            raise too_large(f"input is {size} bytes; the limit is {MAX_SCRIPT_BYTES} (about two hours of speech): "
                            "split it into several requests", "input")
        if body.speed != 1.0:
            raise bad_request(f"speed {body.speed} is not supported: Dia speaks at its own pace; send 1.0 or leave "
                              "it out", "speed", "unsupported_value")
        engine = server.engine(body.model)
        request.state.model = engine.model_id
        voice = voice_name(body.voice)
        server.check_voice(voice)
        options = _options(body, engine.family)
        from .engine import SpeechRequest

        req = SpeechRequest(text=body.input, voice=voice, options=options, timeout=server.config.timeout,
                            max_chunk_seconds=server.config.max_chunk_seconds)
        try:
            ticket = engine.submit(req)
        except Exception as exc:
            raise _mapped(exc) from None
        pieces = ticket.__aiter__()
        try:
            first = await pieces.__anext__()  # errors before any audio still get their own status
        except StopAsyncIteration:
            first = None
        except BaseException as exc:
            ticket.cancel()
            if isinstance(exc, Exception):
                raise _mapped(exc) from None
            raise
        sse = body.stream_format == "sse"
        # SSE deltas carry the requested format's stream; pcm when none was asked for (OpenAI's default
        # mp3 frames in JSON help nobody). `fields_set` tells "absent" from "mp3".
        fmt = body.response_format if (not sse or "response_format" in body.model_fields_set) else "pcm"
        encoder = stream_encoder(fmt, engine.sample_rate)
        chunks = _audio_chunks(first, pieces, ticket, encoder, request)
        if sse:
            return StreamingResponse(_sse_events(chunks, ticket), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Seed": str(ticket.seed)})
        return StreamingResponse(chunks, media_type=MEDIA_TYPES[fmt],
                                 headers={"X-Sample-Rate": str(encoder.sample_rate), "X-Seed": str(ticket.seed)})

    from .voices import builtin_object, builtin_voices, voice_object

    @app.get("/v1/audio/voices", responses={200: {"model": VoiceList}})
    async def list_voices(request: Request):
        authorize(server, request.headers.get("authorization"))
        broken: list = []
        saved = await asyncio.to_thread(server.store.list, broken)
        for exc in broken:
            log.warning("skipped a broken voice file: %s", exc)
        data = [builtin_object(n) for n in builtin_voices()] + [voice_object(v) for v in saved]
        return {"object": "list", "data": data}

    @app.post("/v1/audio/voices", responses={200: {"model": VoiceObject}, **errors(400, 413)},
              openapi_extra={"requestBody": VOICE_UPLOAD_BODY})
    async def add_voice(request: Request):
        authorize(server, request.headers.get("authorization"))
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_VOICE_UPLOAD_BYTES:
            raise too_large(f"upload of {declared} bytes is over the limit of {MAX_VOICE_UPLOAD_BYTES}")
        form = await request.form(max_part_size=MAX_VOICE_UPLOAD_BYTES)
        name, transcript, audio = form.get("name"), form.get("transcript"), form.get("audio")
        for field_name, value in (("name", name), ("transcript", transcript)):
            if not isinstance(value, str) or not value.strip():
                raise bad_request(f"missing form field {field_name!r}", field_name, "missing_required_parameter")
        if audio is None or isinstance(audio, str):
            raise bad_request("missing file field 'audio' (5-10 s of the voice, alone: wav, flac, ogg or mp3)",
                              "audio", "missing_required_parameter")
        if name in builtin_voices():
            raise bad_request(f"{name!r} is a built-in voice name; choose another", "name", "invalid_voice")
        force = str(form.get("force", "")).lower() in ("1", "true", "yes")
        data = await audio.read()
        try:
            voice = await asyncio.to_thread(server.voice_encoder.add, server.store, name, data, audio.filename,
                                            transcript, force)
        except FastDiaError as exc:
            raise from_exception(exc, "audio" if type(exc).__name__ == "AudioError" else
                                 "transcript" if type(exc).__name__ == "ScriptError" else "name") from None
        return voice_object(voice)

    @app.delete("/v1/audio/voices/{name}", responses={200: {"model": VoiceDeleted}, **errors(400, 404)})
    async def delete_voice(name: str, request: Request):
        authorize(server, request.headers.get("authorization"))
        if name in builtin_voices():
            raise bad_request(f"{name!r} is a built-in voice; it cannot be deleted", "name")
        # One call, no separate existence check: of two DELETEs racing, the loser gets the 404.
        try:
            await asyncio.to_thread(server.store.remove, name)
        except VoiceNotFoundError:
            raise not_found(f"no saved voice named {name!r}", "name") from None
        except FastDiaError as exc:
            raise bad_request(str(exc), "name", "invalid_voice") from None
        return {"id": name, "object": "voice.deleted", "deleted": True}


def _mapped(exc: Exception) -> APIError:
    err = from_exception(exc)
    if err.code == "internal_error":  # a bug; timeouts, overload and bad input are one access line each
        log.error("speech request failed", exc_info=exc)
    return err


async def _audio_chunks(first, pieces, ticket, encoder, request: Request):
    """Encoded bytes of each piece as it comes; the ticket is cancelled if the client goes away."""
    finished = False
    try:
        if first is not None:
            data = encoder.push(first.audio)
            if data:
                yield data
            async for piece in pieces:
                data = encoder.push(piece.audio)
                if data:
                    yield data
        tail = encoder.finish()
        finished = True
        if tail:
            yield tail
    except Exception as exc:
        # Headers are gone: the only honest signal left is a broken (incomplete) response.
        err = from_exception(exc)
        request.state.error, request.state.reason = err.code or err.type, err.message
        if err.code == "internal_error":
            log.error("speech stream failed after it started", exc_info=exc)
        raise StreamCut(err) from None
    finally:
        if not finished:
            ticket.cancel()


async def _sse_events(chunks, ticket):
    def event(payload: dict) -> bytes:
        return f"data: {json.dumps(payload)}\n\n".encode()

    try:
        async for data in chunks:
            yield event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")})
    except Exception as exc:
        err = exc.error if isinstance(exc, StreamCut) else from_exception(exc)
        yield event({"type": "error", "error": err.body()["error"]})
        return
    usage = getattr(ticket, "usage", None) or {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    yield event({"type": "speech.audio.done", "usage": usage})
