"""JSON from clients (an HTTP body, a WebSocket message), parsed without trusting its shape.

`json.loads` recurses once per nesting level, so `[[[[...]]]]` 100,000 deep raises RecursionError,
and a value just under the interpreter's limit can still make a later `repr` or validator recurse
too far. Requests that fastdia reads are at most a few levels deep, so anything deeper than
MAX_JSON_DEPTH is refused as the client's mistake (400) before any other code sees it.
"""

from __future__ import annotations

import json

from .openai_errors import bad_request

MAX_JSON_DEPTH = 32


def parse_object(raw: bytes | str, what: str = "the request body", example: str = "") -> dict:
    """`raw` parsed as a JSON object; APIError 400 for invalid JSON, too deep a nesting or another type.

    Args:
        raw: the bytes (UTF-8) or text received.
        what: how the message names it ("the request body", "each message").
        example: a hint appended to the message when the JSON is not an object.
    """
    try:
        data = json.loads(raw)
    except RecursionError:
        raise _too_deep(what) from None
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError and an integer past Python's digit limit
        raise bad_request(f"{what} is not valid JSON{example}", None, "invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request(f"{what} must be a JSON object{example}", None, "invalid_json")
    if _deeper_than(data, MAX_JSON_DEPTH):
        raise _too_deep(what)
    return data


def _too_deep(what: str):
    return bad_request(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep; no field of this API needs that",
                       None, "invalid_json")


def _deeper_than(value, limit: int) -> bool:
    # An explicit stack: this check must not recurse either.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((x, depth + 1) for x in (item.values() if isinstance(item, dict) else item))
    return False
