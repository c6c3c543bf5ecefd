"""Build a ready DiaModel from a preset, a local directory or a hub id.

Modules are created on the meta device (no memory, no init), then the converted tensors are
attached with `assign=True`, so loading costs one pass over the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .config import PRESET_SEED, PRESETS, DiaConfig, load_config
from .errors import CheckpointError
from .hub import resolve_dir
from .models.dia1 import DiaModel
from .weights import keeps_fp32, load_dir_state


@dataclass(frozen=True)
class LoadedModel:
    model: DiaModel
    config: DiaConfig
    layout: str  # "nari", "transformers", "mixed" or "preset"
    source: str  # what was asked for
    directory: Path | None


def _choose_files(files) -> list[str]:
    """From a hub repository's files, the config and one set of weights (prefer safetensors)."""
    names = list(files)
    if "config.json" not in names:
        raise CheckpointError("the repository has no config.json; is it a Dia model?")
    safetensors = [f for f in names if f.endswith(".safetensors") and "/" not in f]
    if safetensors:
        return ["config.json", *safetensors]
    if "dia-v0_1.pth" in names:
        return ["config.json", "dia-v0_1.pth"]
    pth = [f for f in names if f.endswith(".pth") and "/" not in f]
    if pth:
        return ["config.json", pth[0]]
    raise CheckpointError("the repository has no model.safetensors or .pth weights")


def random_state(cfg: DiaConfig, seed: int = PRESET_SEED, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights in our layout, reproducible from `seed` on any machine (CPU generator).

    Scaled so activations stay O(1) and logits have real spread: a preset's greedy output then
    varies with the text instead of sitting on near-ties.
    """
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in DiaModel(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if keeps_fp32(name):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
            out[name] = t.float()
            continue
        fan_in = shape[1] if len(shape) == 2 and "embedding" not in name else 1
        std = fan_in ** -0.5
        out[name] = (torch.randn(shape, generator=gen) * std).to(dtype)
    return out


def build_model(cfg: DiaConfig, state: dict[str, torch.Tensor], device: torch.device) -> DiaModel:
    with torch.device("meta"):
        model = DiaModel(cfg)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # our own conversion is strict already; this guards our layout
        raise CheckpointError(f"internal layout mismatch: {exc}") from None
    return model.to(device).eval().requires_grad_(False)


def load_model(source: str | Path, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Resolve `source` (preset, directory, hub id) and return the model on `device` in `dtype`."""
    name = str(source)
    if name in PRESETS:
        cfg = PRESETS[name]
        state = random_state(cfg, dtype=dtype)
        return LoadedModel(build_model(cfg, state, device), cfg, "preset", name, None)
    directory = resolve_dir(source, _choose_files, what="model")
    cfg = load_config(directory / "config.json")
    state, layout = load_dir_state(directory, cfg, dtype)
    return LoadedModel(build_model(cfg, state, device), cfg, layout, name, directory)
