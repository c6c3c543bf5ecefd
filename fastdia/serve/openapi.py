"""The published API description: `/openapi.json` (FastAPI's document plus fastdia's additions, see
schemas.finish_openapi) and `/docs`, a page that renders it without loading anything from the network."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse

from .openai_errors import not_found
from .schemas import finish_openapi


API_DESCRIPTION = (
    "OpenAI's speech API over Dia text-to-speech models (fastdia). Errors use OpenAI's shape "
    "{\"error\": {\"message\", \"type\", \"param\", \"code\"}}. Live text (Dia2) is a WebSocket at "
    "/v1/audio/speech/stream, which OpenAPI cannot describe: its messages are the Live* and ErrorEvent "
    "schemas below (client: LiveSessionUpdate, LiveTextAppend, LiveTextDone; server: LiveAudioDelta, "
    "LiveWord, LiveDone, ErrorEvent, then close 1008 bad input, 1003 binary frame, 1009 too much text, "
    "1013 overloaded, 1001 shutting down, 1011 server error). Every response carries X-Request-Id.")


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fastdia")
    except PackageNotFoundError:
        return "0"


def publish_schema(app: FastAPI, api_key: bool, static_dir: Path) -> None:
    """`/openapi.json` with fastdia's additions (built once, on first request), and `/docs`, a
    page of its own that reads it (FastAPI's Swagger UI would load its scripts from a CDN)."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = finish_openapi(spec, api_key)
        return app.openapi_schema

    app.openapi = openapi

    @app.get("/docs", include_in_schema=False)
    async def docs():
        page = static_dir / "docs.html"
        if not page.is_file():
            raise not_found("no API page is installed; the schema is at /openapi.json")
        return FileResponse(page, media_type="text/html")
