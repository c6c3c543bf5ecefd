"""Where checkpoints come from: a model name (local directory or hub repository id) resolved to a
local directory, its config.json read, and strict loading of its tensors (one way to say what
does not match), shared by every checkpoint reader.

Downloads go through huggingface_hub and land in its cache, so a second run works offline. Only the
files a loader actually needs are downloaded: `choose` picks them from the repository's file list.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch
from torch import nn

from .errors import CheckpointError, ModelNotFoundError

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


def read_config_json(path: str | Path) -> Any:
    """The parsed config.json at `path` (either family); a missing or unreadable file is a CheckpointError."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"no config.json in {path.parent}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None


# ---- strict loading ----

M = TypeVar("M", bound=nn.Module)

SHOWN = 8  # names listed per kind of problem; the rest are counted


def shape_problems(expected: Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]],
                   label: Callable[[str], str] = str) -> list[str]:
    """Every missing, unexpected or mis-shaped tensor, grouped by kind ("missing tensors: a; b",
    "unexpected tensors: ...", "wrong shapes: x has shape [..], expected [..]"); empty if they match.

    Args:
        expected / found: tensor name -> shape.
        label: how to name an expected tensor (e.g. with its name in another layout).
    """
    missing = [label(k) for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{label(k)} has shape {list(found[k])}, expected {list(expected[k])}"
             for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    problems = []
    for title, items in (("missing tensors", missing), ("unexpected tensors", unexpected), ("wrong shapes", wrong)):
        if items:
            more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
            problems.append(f"{title}: {'; '.join(items[:SHOWN])}{more}")
    return problems


def build_on_meta(make: Callable[[], M], state: Mapping[str, torch.Tensor], device: torch.device | str,
                  dtype: torch.dtype | None = None) -> M:
    """`make()` on the meta device, then adopt `state` (strict, assign=True: no second copy of
    the weights is ever allocated); eval mode, no grads.

    Args:
        make: builds the empty module (called under the meta device).
        state: exactly the module's tensors (check them with `shape_problems` first for a
            message that names each problem; a mismatch here is still a CheckpointError).
        device: where the tensors go.
        dtype: cast floating tensors to it; None keeps each tensor's dtype (e.g. fp32 norms).
    """
    with torch.device("meta"):
        net = make()
    cast = {k: v.to(device=device, dtype=dtype if dtype is not None and v.is_floating_point() else v.dtype)
            for k, v in state.items()}
    try:
        net.load_state_dict(cast, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the checkpoint does not match the model: {exc}") from None
    return net.eval().requires_grad_(False)


def read_safetensors_files(files: Sequence[Path]) -> dict[str, torch.Tensor]:
    """The tensors of one or more safetensors files as one state dict; an unreadable file or a
    tensor in two files is a CheckpointError."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            part = load_file(str(f), device="cpu")
        except Exception as exc:
            raise CheckpointError(f"cannot read {f}: {type(exc).__name__}: {exc}") from None
        clash = state.keys() & part.keys()
        if clash:
            raise CheckpointError(f"tensor {sorted(clash)[0]} appears in more than one file ({f})")
        state.update(part)
    return state


def check_source(model: str | Path, presets, what: str = "model") -> None:
    """Raise ModelNotFoundError at once, without the network, for a name that can be neither a
    preset, a local directory nor a hub repository id (so a server refuses it before it listens)."""
    if str(model) in presets:
        return
    path = Path(model).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise ModelNotFoundError(
            f"{what} {str(model)!r} is a file; pass the directory that holds config.json and the weights"
        )
    if not _REPO_ID.match(str(model)):
        raise ModelNotFoundError(
            f"{what} {str(model)!r} is not a local directory, a preset or a hub repository id "
            f"(owner/name). {OFFLINE_HINT}"
        )


def local_source(model: str | Path, presets, choose: Callable[[Sequence[str]], Sequence[str]], what: str) -> str | Path:
    """A preset name or a local path as it is; a hub id fetched (into the hub cache) to its
    folder, so a loader can read its config (its size, for dtype "auto") before loading it."""
    if str(model) in presets or Path(model).expanduser().exists():
        return model
    return resolve_dir(model, choose, what=what)
