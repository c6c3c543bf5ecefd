"""WebSocket /v1/audio/speech/stream: Dia2 speaking text while it is still being written.

Client -> server (JSON text frames):
    {"type": "session.update", "model": .., "voice": .., "seed": .., <Dia2 options>}   optional, first
    {"type": "input_text.append", "text": "..."}                                        any number
    {"type": "input_text.done"}                                                         ends the input
Server -> client:
    {"type": "audio.delta", "audio": "<base64 16-bit LE mono PCM>", "sample_rate": 24000}
    {"type": "word", "word": "...", "start": seconds}
    {"type": "done", "usage": {...}}
    {"type": "error", "error": {"message", "type", "param", "code"}}, then the socket closes.

Browsers cannot set an Authorization header on a WebSocket, so the key may also come as the
`api_key` query parameter.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from .audio_formats import pcm16
from .common import authorize, voice_name
from .openai_errors import APIError, bad_request, from_exception

log = logging.getLogger("fastdia.serve")
SESSION_FIELDS = ("model", "voice", "seed", "cfg_scale", "temperature", "text_temperature", "top_k", "cfg_filter_k",
                  "max_steps")


def add_live_route(app: FastAPI, server) -> None:
    @app.websocket("/v1/audio/speech/stream")
    async def live(ws: WebSocket):
        await ws.accept()
        live_ticket = None
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
                async for piece in live_ticket:
                    if len(piece.audio):
                        await ws.send_json({"type": "audio.delta", "sample_rate": engine_rate,
                                            "audio": base64.b64encode(pcm16(piece.audio)).decode("ascii")})
                    for word, start in piece.words:
                        await ws.send_json({"type": "word", "word": word, "start": float(start)})
                if reader.done() and reader.exception() is not None:
                    raise reader.exception()
            finally:
                reader.cancel()
            await ws.send_json({"type": "done", "usage": getattr(live_ticket, "usage", None)})
            live_ticket = None
            await ws.close()
        except WebSocketDisconnect:
            pass  # the client left; its rows are freed below
        except Exception as exc:
            err = exc if isinstance(exc, APIError) else from_exception(exc)
            if err.status >= 500 and err.status != 503:
                log.exception("live speech failed", exc_info=exc)
            ws.state.error = err.code or err.type
            server.metrics.errors.labels(type=err.code or err.type).inc()
            try:
                await ws.send_json({"type": "error", "error": err.body()["error"]})
                await ws.close(code=1008 if err.status < 500 else 1011)
            except Exception:  # the client is already gone
                pass
        finally:
            if live_ticket is not None:
                live_ticket.cancel()


async def _receive(ws: WebSocket) -> dict:
    text = await ws.receive_text()
    try:
        message = json.loads(text)
    except ValueError:
        raise bad_request("messages must be JSON objects such as {\"type\": \"input_text.append\", \"text\": \"...\"}")
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise bad_request("each message must be a JSON object with a \"type\"")
    return message


def _session(message: dict) -> dict:
    unknown = sorted(k for k in message if k != "type" and k not in SESSION_FIELDS)
    if unknown:
        raise bad_request(f"unknown session field(s) {', '.join(unknown)}; known: {', '.join(SESSION_FIELDS)}",
                          unknown[0])
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
        return engine.submit_live(SpeechRequest(text="", voice=voice, options=session, timeout=server.config.timeout))
    except Exception as exc:
        raise from_exception(exc) from None


async def _read_text(ws: WebSocket, ticket, message: dict) -> None:
    """Feed text pieces to the live ticket until input_text.done."""
    try:
        await _feed(ws, ticket, message)
    except WebSocketDisconnect:
        ticket.cancel()  # ends the audio loop, which then finds the socket gone


async def _feed(ws: WebSocket, ticket, message: dict) -> None:
    while True:
        kind = message.get("type")
        if kind == "input_text.append":
            text = message.get("text")
            if not isinstance(text, str):
                ticket.end()
                raise bad_request("input_text.append needs a string \"text\"", "text")
            ticket.push(text)
        elif kind == "input_text.done":
            ticket.end()
            return
        else:
            ticket.end()
            raise bad_request(f"unknown message type {kind!r}; send input_text.append or input_text.done", "type")
        message = await _receive(ws)
