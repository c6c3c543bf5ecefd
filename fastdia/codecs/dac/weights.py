"""Reading, converting and writing DAC checkpoints (spec 5.7).

Two layouts exist:
  * transformers (`descript/dac_44khz` on the hub): `config.json` + `model.safetensors`, names such
    as `encoder.block.0.res_unit1.conv1.weight`. Usually folded; some uploads keep weight norm as
    `weight_g`/`weight_v` or as torch parametrizations (`parametrizations.weight.original0/1`).
  * descript (the GitHub release `weights.pth`): a torch pickle
    `{"state_dict": {...}, "metadata": {"kwargs": {...}}}` with names such as
    `encoder.block.1.block.0.block.1.weight_g` and every conv weight-normalised.

Both become our layout (= transformers names, folded weights) and are loaded strictly: every
tensor the model needs must be there with the right shape, and nothing else may be.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Literal, Mapping, Sequence

import torch

from ...hub import resolve_dir
from ...hub import build_on_meta, read_safetensors_files, shape_problems
from ...errors import CheckpointError
from .model import DEFAULT_MODEL, PRESET_SEED, PRESETS, DACConfig, DACModel

Tensors = dict[str, torch.Tensor]

_G, _V = ".weight_g", ".weight_v"
_P0, _P1 = ".parametrizations.weight.original0", ".parametrizations.weight.original1"
_TORCH_PICKLES = (".pth", ".pt", ".bin", ".ckpt")


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def load_model(model: str | Path, device: torch.device, dtype: torch.dtype) -> DACModel:
    """Build a `DACModel` from a preset, a checkpoint file, a local directory or a hub id."""
    name = str(model)
    if name == "dac-44khz":
        name = DEFAULT_MODEL  # the preset's weights are the released ones
    elif name in PRESETS:
        config = PRESETS[name]
        return build_model(config, random_state_dict(config, PRESET_SEED), device, dtype, source=name)
    path = Path(name).expanduser()
    if path.is_file():
        config, state, source = read_checkpoint_file(path)
    else:
        directory = resolve_dir(name, choose_files, what="codec")
        config, state, source = read_checkpoint_dir(directory)
    return build_model(config, to_model_layout(state, config, source), device, dtype, source=source)


def choose_files(filenames: Sequence[str]) -> list[str]:
    """Pick what to download from a hub repo: config + safetensors, else the descript pickle."""
    if any(f.endswith(".safetensors") for f in filenames):
        return ["config.json", "*.safetensors"]
    if any(f.endswith(".pth") for f in filenames):
        return ["config.json", "*.pth"]
    return ["config.json", "*.safetensors", "*.pth", "*.bin"]


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_checkpoint_dir(directory: Path) -> tuple[DACConfig, Tensors, str]:
    """Read config and raw tensors from a directory (transformers or descript layout)."""
    config = None
    config_path = directory / "config.json"
    if config_path.is_file():
        config = _read_config_json(config_path)
    files = [directory / "model.safetensors"]
    if not files[0].is_file():
        files = sorted(directory.glob("*.safetensors"))
    if files:
        return config or DACConfig(), _read_safetensors(files), str(directory)
    pickles = sorted(p for p in directory.iterdir() if p.suffix in _TORCH_PICKLES and p.is_file())
    if len(pickles) > 1:
        raise CheckpointError(
            f"codec directory {directory} holds several torch files ({', '.join(p.name for p in pickles)}); "
            "pass the path of the one to use"
        )
    if pickles:
        pickle_config, state, source = read_checkpoint_file(pickles[0])
        return config or pickle_config, state, source
    raise CheckpointError(
        f"no DAC weights in {directory}: expected model.safetensors (+ config.json) or a descript "
        "weights .pth file"
    )


def read_checkpoint_file(path: Path) -> tuple[DACConfig, Tensors, str]:
    """Read a single checkpoint file: a descript .pth or a safetensors file."""
    if path.suffix == ".safetensors":
        sibling = path.parent / "config.json"
        config = _read_config_json(sibling) if sibling.is_file() else DACConfig()
        return config, _read_safetensors([path]), str(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} needs arbitrary Python objects to unpickle, which fastdia refuses for safety "
            f"({str(exc).splitlines()[0][:200]}). If you trust the file, load it with "
            "torch.load(weights_only=False) and write it with "
            "fastdia.codecs.dac.weights.save_transformers_layout."
        ) from None
    except Exception as exc:  # truncated file, not a torch file at all, ...
        raise CheckpointError(f"cannot read DAC checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        state = obj["state_dict"]
        kwargs = (obj.get("metadata") or {}).get("kwargs") if isinstance(obj.get("metadata"), Mapping) else None
        config = DACConfig.from_dict(kwargs) if kwargs else DACConfig()
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, config = obj, DACConfig()  # a bare state dict: assume the released 44.1 kHz shape
    else:
        raise CheckpointError(
            f"{path} is not a DAC checkpoint: expected a dict with 'state_dict' and 'metadata' "
            "(descript layout) or a dict of tensors"
        )
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {', '.join(map(str, bad[:5]))}")
    return config, dict(state), str(path)


def _read_config_json(path: Path) -> DACConfig:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read codec config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"codec config {path} is not a JSON object")
    return DACConfig.from_dict(data)


def _read_safetensors(files: Sequence[Path]) -> Tensors:
    return read_safetensors_files(files)


# --------------------------------------------------------------------------------------------
# Conversion to our layout
# --------------------------------------------------------------------------------------------


def fold_weight_norm(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> Tensors:
    """Replace every (g, v) weight-norm pair by W = g * v / ||v|| (norm over all axes but 0).

    Both conv kinds normalise over axis 0 of the stored tensor: Conv1d v is [out, in, k], and
    ConvTranspose1d v is [in, out, k] so its g is per *input* channel (spec pitfall 20).
    Accepts the legacy `weight_g`/`weight_v` names and torch parametrizations
    (`parametrizations.weight.original0` = g, `original1` = v).
    """
    out: Tensors = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        for g_suffix, v_suffix in ((_G, _V), (_P0, _P1)):
            if key.endswith(g_suffix):
                pairs.setdefault(key[: -len(g_suffix)], {})["g"] = tensor
                break
            if key.endswith(v_suffix):
                pairs.setdefault(key[: -len(v_suffix)], {})["v"] = tensor
                break
        else:
            out[key] = tensor
    for base, pair in pairs.items():
        if set(pair) != {"g", "v"}:
            missing = "g" if "v" in pair else "v"
            raise CheckpointError(
                f"{source}: weight-norm tensor {base} has no {missing} part "
                f"({base}{_G if missing == 'g' else _V} is missing)"
            )
        if base + ".weight" in out:
            raise CheckpointError(f"{source}: {base}.weight is stored both folded and as weight-norm parts")
        g, v = pair["g"], pair["v"]
        if g.ndim != v.ndim or g.shape[0] != v.shape[0] or g.numel() != v.shape[0]:
            raise CheckpointError(
                f"{source}: weight-norm parts of {base} do not match: g {list(g.shape)} vs v {list(v.shape)}"
            )
        # Fold in at least fp32 so a bf16 checkpoint is not rounded twice.
        work = torch.float64 if v.dtype == torch.float64 else torch.float32
        v32 = v.to(work)
        norm = v32.flatten(1).norm(dim=1).reshape(g.shape)
        out[base + ".weight"] = (g.to(work) * v32 / norm).to(v.dtype)
    return out


def descript_names(config: DACConfig) -> dict[str, str]:
    """Module-prefix map descript name -> our (transformers) name for a given config (spec 5.7)."""
    names: dict[str, str] = {"encoder.block.0": "encoder.conv1", "decoder.model.0": "decoder.conv1"}
    ru_parts = ("snake1", "conv1", "snake2", "conv2")
    n_enc = len(config.encoder_rates)
    for i in range(n_enc):
        theirs, ours = f"encoder.block.{i + 1}.block", f"encoder.block.{i}"
        for r in range(3):
            for j, part in enumerate(ru_parts):
                names[f"{theirs}.{r}.block.{j}"] = f"{ours}.res_unit{r + 1}.{part}"
        names[f"{theirs}.3"] = f"{ours}.snake1"
        names[f"{theirs}.4"] = f"{ours}.conv1"
    names[f"encoder.block.{n_enc + 1}"] = "encoder.snake1"
    names[f"encoder.block.{n_enc + 2}"] = "encoder.conv2"
    n_dec = len(config.decoder_rates)
    for i in range(n_dec):
        theirs, ours = f"decoder.model.{i + 1}.block", f"decoder.block.{i}"
        names[f"{theirs}.0"] = f"{ours}.snake1"
        names[f"{theirs}.1"] = f"{ours}.conv_t1"
        for r in range(3):
            for j, part in enumerate(ru_parts):
                names[f"{theirs}.{r + 2}.block.{j}"] = f"{ours}.res_unit{r + 1}.{part}"
    names[f"decoder.model.{n_dec + 1}"] = "decoder.snake1"
    names[f"decoder.model.{n_dec + 2}"] = "decoder.conv2"
    return names  # quantizer names are the same in both layouts


def is_descript_layout(state: Mapping[str, torch.Tensor]) -> bool:
    """True for descript names (`decoder.model.N...`), False for transformers ones."""
    return any(k.startswith("decoder.model.") for k in state)


def to_model_layout(state: Mapping[str, torch.Tensor], config: DACConfig, source: str = "checkpoint") -> Tensors:
    """Fold weight norm and rename descript names, giving our (transformers-named) layout.

    Keys that match nothing are kept under their original name so that the strict check reports
    them as unexpected.
    """
    folded = fold_weight_norm(state, source)
    if not is_descript_layout(folded):
        return folded
    names = descript_names(config)
    out: Tensors = {}
    for key, tensor in folded.items():
        prefix, _, leaf = key.rpartition(".")
        new = f"{names[prefix]}.{leaf}" if prefix in names else key
        out[new] = tensor
    return out


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def expected_shapes(config: DACConfig) -> dict[str, torch.Size]:
    """Names and shapes of every tensor a `DACModel` of this config holds (built on meta)."""
    with torch.device("meta"):
        net = DACModel(config)
    return {k: v.shape for k, v in net.state_dict().items()}


def check_state_dict(
    state: Mapping[str, torch.Tensor], config: DACConfig, source: str = "checkpoint"
) -> None:
    """Raise CheckpointError naming every missing, unexpected or mis-shaped tensor."""
    expected = expected_shapes(config)
    to_descript = {v: k for k, v in descript_names(config).items()}

    def label(name: str) -> str:
        # Also show the descript name, since that is what a user would find in a .pth file.
        prefix, _, leaf = name.rpartition(".")
        if prefix in to_descript:
            return f"{name} (descript: {to_descript[prefix]}.{leaf})"
        return name

    problems = shape_problems(expected, {k: v.shape for k, v in state.items()}, label)
    if problems:
        raise CheckpointError(
            f"DAC checkpoint {source} does not match the codec config "
            f"(encoder_dim={config.encoder_dim}, decoder_dim={config.decoder_dim}, "
            f"n_codebooks={config.n_codebooks}): " + " | ".join(problems)
        )


def build_model(
    config: DACConfig,
    state: Mapping[str, torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    source: str = "checkpoint",
) -> DACModel:
    """Strictly load our-layout `state` into a new `DACModel` on `device` in `dtype`."""
    check_state_dict(state, config, source)
    return build_on_meta(lambda: DACModel(config), state, device, dtype)


def random_state_dict(config: DACConfig, seed: int = PRESET_SEED) -> Tensors:
    """Deterministic random weights with sane scales (outputs neither vanish nor explode).

    Drawn on the CPU from a seeded generator in sorted-name order, so every run and machine
    gets the same codec.
    """
    gen = torch.Generator().manual_seed(seed)
    out: Tensors = {}
    for name, shape in sorted(expected_shapes(config).items()):
        if name.endswith(".alpha"):
            t = torch.rand(shape, generator=gen) + 0.5  # snake frequency in [0.5, 1.5)
        elif name.endswith("codebook.weight"):
            t = torch.randn(shape, generator=gen)
        elif name.endswith(".weight"):
            # Variance-preserving scale: fan-in is in*k for a conv; for a transposed conv of
            # kernel 2*stride each output sees in*2 taps.
            fan_in = shape[0] * 2 if ".conv_t" in name else shape[1] * shape[2]
            t = torch.randn(shape, generator=gen) / fan_in**0.5
            if ".res_unit" in name and name.endswith("conv2.weight"):
                t = t * 0.1  # small residual branches, else each unit doubles the variance
            elif name.endswith("out_proj.weight"):
                t = t / config.n_codebooks**0.5  # the latent is a sum over codebooks
            elif name == "decoder.conv2.weight":
                t = t * 0.1  # keep the output mostly out of tanh's saturation
        else:  # biases
            t = torch.randn(shape, generator=gen) * 0.02
        out[name] = t
    return out


# --------------------------------------------------------------------------------------------
# Writing (tests, converters)
# --------------------------------------------------------------------------------------------


def _state_of(model) -> Tensors:
    """A state dict, a `DACModel`, or the `DAC` facade (its `.model`) -> CPU tensors."""
    if not isinstance(model, (Mapping, torch.nn.Module)):
        model = model.model
    if isinstance(model, torch.nn.Module):
        model = model.state_dict()
    # Own, contiguous CPU storage: safetensors and torch.save would otherwise write shared/strided data.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.items()}


def _is_conv_weight(name: str, tensor: torch.Tensor) -> bool:
    # Every 3-D weight is a (transposed) conv, and all of them are weight-normalised in DAC.
    return name.endswith(".weight") and tensor.ndim == 3


def unfold_weight_norm(
    state: Mapping[str, torch.Tensor], style: Literal["legacy", "parametrizations"] = "legacy"
) -> Tensors:
    """Split every conv weight W into g = ||W|| (over all axes but 0) and v = W."""
    g_suffix, v_suffix = (_G, _V) if style == "legacy" else (_P0, _P1)
    out: Tensors = {}
    for name, tensor in state.items():
        if _is_conv_weight(name, tensor):
            base = name[: -len(".weight")]
            out[base + g_suffix] = tensor.flatten(1).norm(dim=1).reshape(-1, 1, 1).to(tensor.dtype)
            out[base + v_suffix] = tensor.clone()
        else:
            out[name] = tensor
    return out


def save_transformers_layout(
    model,  # a state dict, DACModel or DAC
    config: DACConfig,
    directory: str | Path,
    weight_norm: Literal["folded", "legacy", "parametrizations"] = "folded",
) -> Path:
    """Write `config.json` + `model.safetensors` as transformers' `DacModel` names them.

    Args:
        model: our-layout state dict (transformers names, folded), a `DACModel` or a `DAC`.
        config: the codec config.
        directory: created if needed.
        weight_norm: "folded" (plain `weight`, like descript/dac_44khz), "legacy"
            (`weight_g`/`weight_v`) or "parametrizations" (`parametrizations.weight.original0/1`).

    Returns:
        The directory.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = _state_of(model)
    if weight_norm != "folded":
        state = unfold_weight_norm(state, weight_norm)
    (directory / "config.json").write_text(json.dumps(config.to_transformers_dict(), indent=2) + "\n")
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def save_descript_layout(
    model,  # a state dict, DACModel or DAC
    config: DACConfig,
    path: str | Path,
) -> Path:
    """Write the original descript `.pth` (`{"state_dict", "metadata": {"kwargs"}}`, weight_g/v).

    Args:
        model: our-layout state dict, a `DACModel` or a `DAC`.
        config: the codec config (stored as metadata kwargs).
        path: the .pth file to write; its folder is created if needed.

    Returns:
        The path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_descript = {v: k for k, v in descript_names(config).items()}
    state = {}
    for name, tensor in unfold_weight_norm(_state_of(model), "legacy").items():
        prefix, _, leaf = name.rpartition(".")
        state[f"{to_descript.get(prefix, prefix)}.{leaf}"] = tensor
    torch.save({"state_dict": state, "metadata": {"kwargs": config.to_descript_kwargs()}}, path)
    return path


__all__ = [
    "build_model",
    "check_state_dict",
    "choose_files",
    "descript_names",
    "fold_weight_norm",
    "load_model",
    "random_state_dict",
    "read_checkpoint_dir",
    "read_checkpoint_file",
    "save_descript_layout",
    "save_transformers_layout",
    "to_model_layout",
    "unfold_weight_norm",
]
