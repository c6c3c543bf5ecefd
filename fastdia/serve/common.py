"""What the HTTP routes (app.py) and the live WebSocket (live.py) both check: the API key and a voice field."""

from __future__ import annotations

import hmac

from .openai_errors import bad_request, unauthorized


def authorize(server, header: str | None) -> None:
    """Refuse (401) a request whose `Authorization` header lacks the server's API key, if it has one."""
    key = server.config.api_key
    if not key:
        return
    if not header or not header.startswith("Bearer "):
        raise unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
    if not hmac.compare_digest(header[len("Bearer "):].strip().encode(), key.encode()):
        raise unauthorized("incorrect API key provided")


def voice_name(voice: str | dict) -> str:
    """The voice's name from a request's `voice` field: a name or an object {"id": name}."""
    if isinstance(voice, dict):
        vid = voice.get("id")
        if not isinstance(vid, str) or not vid:
            raise bad_request("voice must be a name or an object {\"id\": \"<name>\"}", "voice")
        return vid
    if not voice:
        raise bad_request("voice must not be empty", "voice")
    return voice
