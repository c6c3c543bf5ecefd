"""WebSocket /v1/audio/speech/stream: Dia2 speaking text while it is still being written.

Client -> server (JSON text frames):
    {"type": "session.update", "model": .., "voice": .., "seed": .., <Dia2 options>}   optional, first
    {"type": "input_text.append", "text": "..."}                                        any number
    {"type": "input_text.done"}                                                         ends the input
Server -> client:
    {"type": "audio.delta", "audio": "<base64 16-bit LE mono PCM>", "sample_rate": 24000}
    {"type": "word", "word": "...", "start": seconds}
    {"type": "done", "usage": {...}}
    {"type": "error", "error": {"message", "type", "param", "code"}}, then the socket closes with
    1008 (the client's mistake: bad message, field or text), 1003 (a binary frame: only JSON text
    frames are read), 1009 (the session's text passed MAX_SCRIPT_BYTES, as HTTP's `input` limit),
    1013 (overloaded or shutting down: try again later) or 1011 (a server error or timeout).

A session's text is checked as it arrives (`CheckedLiveText`): a client whose text cannot be spoken
gets its own error and leaves the batch before that text reaches a decoding step, so the others
running beside it never see it.

Browsers cannot set an Authorization header on a WebSocket, so the key may also come as the
`api_key` query parameter.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from ..text import MAX_SCRIPT_BYTES
from .audio_formats import pcm16
from .common import authorize, voice_name
from .json_body import parse_object
from .openai_errors import APIError, bad_request, from_exception, too_large

log = logging.getLogger("fastdia.serve")
SESSION_FIELDS = ("model", "voice", "seed", "cfg_scale", "temperature", "text_temperature", "top_k", "cfg_filter_k",
                  "max_steps")


def add_live_route(app: FastAPI, server) -> None:
    @app.websocket("/v1/audio/speech/stream")
    async def live(ws: WebSocket):
        await ws.accept()
        live_ticket = None
        server.live_sessions += 1  # one event loop: no lock needed
        try:
            key = ws.headers.get("authorization") or (
                f"Bearer {ws.query_params['api_key']}" if "api_key" in ws.query_params else None)
            authorize(server, key)
            message = await _receive(ws)
            session: dict = {}
            if message.get("type") == "session.update":
                session = _session(message)
                message = await _receive(ws)
            live_ticket = _open(server, session, ws)
            engine_rate = ws.state.sample_rate
            reader = asyncio.create_task(_read_text(ws, live_ticket, message))
            try:
                try:
                    async for piece in live_ticket:
                        if len(piece.audio):
                            await ws.send_json({"type": "audio.delta", "sample_rate": engine_rate,
                                                "audio": base64.b64encode(pcm16(piece.audio)).decode("ascii")})
                        for word, start in piece.words:
                            await ws.send_json({"type": "word", "word": word, "start": float(start)})
                except Exception:
                    # A reader that refused the client's text cancelled the ticket: its reason is the one to say.
                    _raise_refusal(reader)
                    raise
                _raise_refusal(reader)
            finally:
                reader.cancel()
            await ws.send_json({"type": "done", "usage": getattr(live_ticket, "usage", None)})
            live_ticket = None
            await ws.close()
        except WebSocketDisconnect:
            pass  # the client left; its rows are freed below
        except Exception as exc:
            err = exc if isinstance(exc, APIError) else from_exception(exc)
            if err.code == "internal_error":  # a bug in fastdia; the client's mistakes are one access line
                log.exception("live speech failed", exc_info=exc)
            ws.state.error, ws.state.reason = err.code or err.type, err.message
            server.metrics.errors.labels(type=err.code or err.type).inc()
            try:
                await ws.send_json({"type": "error", "error": err.body()["error"]})
                # 1001 "going away" when it is the server that is stopping, not an overload.
                await ws.close(code=1001 if server.draining and err.status == 503 else close_code(err))
            except Exception:  # the client is already gone
                pass
        finally:
            server.live_sessions -= 1
            if live_ticket is not None:
                live_ticket.cancel()


def close_code(err: APIError) -> int:
    """The WebSocket close code that goes with an error event (RFC 6455 section 7.4.1)."""
    if err.code == "binary_frame":
        return 1003  # unsupported data
    if err.status == 413:
        return 1009  # too big
    if err.status in (429, 503):
        return 1013  # try again later
    return 1008 if err.status < 500 else 1011


def _raise_refusal(reader: asyncio.Task) -> None:
    if reader.done() and not reader.cancelled() and reader.exception() is not None:
        raise reader.exception()


async def _receive(ws: WebSocket) -> dict:
    frame = await ws.receive()
    if frame["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(frame.get("code", 1000))
    text = frame.get("text")
    if text is None:
        raise bad_request("binary frames are not accepted: send each message as a JSON text frame such as "
                          '{"type": "input_text.append", "text": "..."}', None, "binary_frame")
    message = parse_object(text, "each message", ' such as {"type": "input_text.append", "text": "..."}')
    if not isinstance(message.get("type"), str):
        raise bad_request('each message must be a JSON object with a string "type"', "type")
    return message


def _session(message: dict) -> dict:
    unknown = sorted(k for k in message if k != "type" and k not in SESSION_FIELDS)
    if unknown:
        raise bad_request(f"unknown session field(s) {', '.join(unknown)}; known: {', '.join(SESSION_FIELDS)}",
                          unknown[0])
    if message.get("model") is not None and not isinstance(message["model"], str):
        raise bad_request("model must be a string (a served model's id)", "model", "invalid_value")
    if message.get("voice") is not None and not isinstance(message["voice"], (str, dict)):
        raise bad_request("voice must be a name or an object {\"id\": \"<name>\"}", "voice", "invalid_value")
    return {k: v for k, v in message.items() if k != "type" and v is not None}


def _open(server, session: dict, ws: WebSocket):
    from .engine import SpeechRequest

    dia2 = [m for m in server.config.models if server.states.get(m) == "ready"
            and server.engines[m].family == "dia2"]
    model = session.pop("model", None) or (dia2[0] if dia2 else server.config.models[0])
    engine = server.engine(model)
    if engine.family != "dia2":
        raise bad_request(f"live text input needs a Dia2 model; {engine.model_id} is Dia-1", "model")
    ws.state.model = engine.model_id
    ws.state.sample_rate = engine.sample_rate
    voice = session.pop("voice", None)
    if voice is not None:
        voice = voice_name(voice)
        server.check_voice(voice)
    try:
        # The same pieces as /v1/audio/speech, so a live script's audio is the whole script's, byte for byte.
        return engine.submit_live(SpeechRequest(text="", voice=voice, options=session, timeout=server.config.timeout,
                                                max_chunk_seconds=server.config.max_chunk_seconds))
    except Exception as exc:
        raise from_exception(exc) from None


async def _read_text(ws: WebSocket, ticket, message: dict) -> None:
    """Feed text pieces to the live ticket until input_text.done.

    A refused message (bad JSON, text that cannot be spoken, too much text) cancels the ticket, so
    its job leaves the batch at the next step with none of that text; the audio loop then reports
    this task's error to this client alone."""
    try:
        await _feed(ws, ticket, message)
    except WebSocketDisconnect:
        ticket.cancel()  # ends the audio loop, which then finds the socket gone
    except BaseException:
        ticket.cancel()
        raise


async def _feed(ws: WebSocket, ticket, message: dict) -> None:
    size = 0
    while True:
        kind = message.get("type")
        if kind == "input_text.append":
            text = message.get("text")
            if not isinstance(text, str):
                raise bad_request("input_text.append needs a string \"text\"", "text", "invalid_value")
            size += len(text.encode("utf-8", "surrogatepass"))
            if size > MAX_SCRIPT_BYTES:
                raise too_large(f"this session's text passed {MAX_SCRIPT_BYTES} bytes, the limit of one script "
                                "(HTTP input has the same): open another session for more", "text")
            try:
                ticket.push(text)
            except Exception as exc:
                raise from_exception(exc, "text") from None
        elif kind == "input_text.done":
            try:
                ticket.end()
            except Exception as exc:  # an empty or tags-only script is known only now
                raise from_exception(exc, "text") from None
            return
        else:
            raise bad_request(f"unknown message type {kind!r}; send input_text.append or input_text.done", "type")
        message = await _receive(ws)
