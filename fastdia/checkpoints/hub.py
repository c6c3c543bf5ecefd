"""Resolve a model name (local directory or hub repository id) to a local directory.

Downloads go through huggingface_hub and land in its cache, so a second run works offline. Only the
files a loader actually needs are downloaded: `choose` picks them from the repository's file list.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ModelNotFoundError

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

OFFLINE_HINT = (
    "Pass a local directory with --model PATH (model=PATH in Python), "
    "or try fastdia offline with --model tiny-random."
)


def resolve_dir(
    model: str | Path,
    choose: Callable[[Sequence[str]], list[str]],
    what: str = "model",
) -> Path:
    """Return a local directory holding `model`'s files.

    Args:
        model: a local directory, or a hub repository id such as "nari-labs/Dia-1.6B-0626".
        choose: given the repository's file names, returns the names (or glob patterns) to fetch.
        what: a word for error messages ("model", "codec").

    Raises:
        ModelNotFoundError: not a directory, and the hub cannot provide it.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelNotFoundError(
            f"{what} {str(model)!r} is a file; pass the directory that holds config.json and the weights"
        )
    name = str(model)
    if not _REPO_ID.match(name):
        raise ModelNotFoundError(
            f"{what} {name!r} is not a local directory, a preset or a hub repository id "
            f"(owner/name). {OFFLINE_HINT}"
        )
    try:
        from huggingface_hub import list_repo_files, snapshot_download
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ModelNotFoundError(f"huggingface_hub is needed to download {name!r}: {exc}") from exc

    try:
        _check_reachable()
        files = list_repo_files(name)
    except Exception as online_exc:  # network down, repo missing, offline mode, auth...
        # The files may already be in the local cache from an earlier download.
        try:
            return Path(snapshot_download(name, local_files_only=True))
        except Exception:
            reason = _short(online_exc)
            raise ModelNotFoundError(
                f"could not download {what} {name!r} from the Hugging Face hub ({reason}), "
                f"and it is not in the local cache. {OFFLINE_HINT}"
            ) from None
    wanted = choose(files)
    try:
        return Path(snapshot_download(name, allow_patterns=wanted))
    except Exception as exc:
        raise ModelNotFoundError(f"downloading {what} {name!r} failed ({_short(exc)}). {OFFLINE_HINT}") from None


def _check_reachable(timeout: float = 3.0) -> None:
    """Fail fast when the hub cannot be reached at all.

    Without this, huggingface_hub retries a failed name lookup for ~25 s before giving up.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise ConnectionError("offline mode is enabled (HF_HUB_OFFLINE)")
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"cannot reach {host}: {exc.strerror or exc}") from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300]
