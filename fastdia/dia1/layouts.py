"""Checkpoint files -> fastdia's tensor layout, strictly.

Dia-1 checkpoints come in two tensor layouts (spec 2.1-2.3), detected per key:
  * "nari": the original names with DenseGeneral shapes (`[in..., out...]`), e.g.
    `decoder.layers.0.self_attention.q_proj.weight` of shape `[2048, 16, 128]`;
  * "transformers": `model.`-prefixed `nn.Linear` names, e.g. `model.decoder.layers.0...` `[2048, 2048]`.
and in three files: `model.safetensors` (either layout, possibly sharded), or a `torch.save`d
state dict such as the original `dia-v0_1.pth`.

Both are converted once, at load, into our layout (`[out, in]` Linear weights with Q/K/V, the
cross-attention K/V and the nine channel embeddings fused). Loading is strict: every tensor of the
file must be known and of the right shape, and every tensor of the model must be provided;
otherwise a CheckpointError names the tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

from .config import DiaConfig
from ..errors import CheckpointError

Shape = tuple[int, ...]
Convert = Callable[[torch.Tensor], torch.Tensor]

NARI, TRANSFORMERS = "nari", "transformers"


@dataclass(frozen=True)
class Source:
    """How one checkpoint tensor becomes (part of) one of our tensors."""

    target: str  # our parameter name
    slot: int  # position among the parts fused into `target` (0 when not fused)
    n_slots: int
    shape: Shape  # expected shape in the file
    convert: Convert  # file layout -> our `[out, in]` layout


def _dense_in(din: int) -> Convert:
    # DenseGeneral [in, *out] -> Linear [out_total, in]
    return lambda w: w.reshape(din, -1).t()


def _dense_out(dout: int) -> Convert:
    # DenseGeneral [*in, out] -> Linear [out, in_total]
    return lambda w: w.reshape(-1, dout).t()


def _same(w: torch.Tensor) -> torch.Tensor:
    return w


def _transpose(w: torch.Tensor) -> torch.Tensor:
    return w.t()


def source_table(cfg: DiaConfig, layout: str) -> dict[str, Source]:
    """Every tensor a checkpoint of `layout` must hold for `cfg`, and where it goes."""
    e, d = cfg.encoder, cfg.decoder
    nari = layout == NARI
    pre = "" if nari else "model."
    table: dict[str, Source] = {}

    def add(name, target, shape, convert, slot=0, n_slots=1):
        table[name] = Source(target, slot, n_slots, tuple(shape), convert)

    def attn_proj(src, dst, din, heads, hd, slot, n_slots):
        if nari:
            add(src, dst, (din, heads, hd), _dense_in(din), slot, n_slots)
        else:
            add(src, dst, (heads * hd, din), _same, slot, n_slots)

    def attn_out(src, dst, heads, hd, dout):
        if nari:
            add(src, dst, (heads, hd, dout), _dense_out(dout))
        else:
            add(src, dst, (dout, heads * hd), _same)

    def mlp(src, dst, dim, hidden):
        if nari:
            add(f"{src}.wi_fused.weight", f"{dst}.gate_up.weight", (dim, 2, hidden), _dense_in(dim))
            add(f"{src}.wo.weight", f"{dst}.down.weight", (hidden, dim), _transpose)
        else:
            add(f"{src}.gate_up_proj.weight", f"{dst}.gate_up.weight", (2 * hidden, dim), _same)
            add(f"{src}.down_proj.weight", f"{dst}.down.weight", (dim, hidden), _same)

    add(f"{pre}encoder.embedding.weight", "encoder.embedding.weight", (e.vocab_size, e.d_model), _same)
    for i in range(e.n_layer):
        s, t = f"{pre}encoder.layers.{i}", f"encoder.layers.{i}"
        add(f"{s}.pre_sa_norm.weight", f"{t}.pre_sa_norm.weight", (e.d_model,), _same)
        add(f"{s}.post_sa_norm.weight", f"{t}.post_sa_norm.weight", (e.d_model,), _same)
        for slot, (proj, heads) in enumerate((("q", e.n_head), ("k", e.n_kv_head), ("v", e.n_kv_head))):
            attn_proj(f"{s}.self_attention.{proj}_proj.weight", f"{t}.attn.qkv.weight",
                      e.d_model, heads, e.head_dim, slot, 3)
        attn_out(f"{s}.self_attention.o_proj.weight", f"{t}.attn.o.weight", e.n_head, e.head_dim, e.d_model)
        mlp(f"{s}.mlp", f"{t}.mlp", e.d_model, e.d_ff)
    add(f"{pre}encoder.norm.weight", "encoder.norm.weight", (e.d_model,), _same)

    if nari:
        for c in range(d.n_channels):
            add(f"decoder.embeddings.{c}.weight", "decoder.embedding.weight",
                (d.vocab_size, d.d_model), _same, c, d.n_channels)
    else:
        add("model.decoder.embeddings.embed.weight", "decoder.embedding.weight",
            (d.n_channels * d.vocab_size, d.d_model), _same)
    for i in range(d.n_layer):
        s, t = f"{pre}decoder.layers.{i}", f"decoder.layers.{i}"
        for norm in ("pre_sa_norm", "pre_ca_norm", "pre_mlp_norm"):
            add(f"{s}.{norm}.weight", f"{t}.{norm}.weight", (d.d_model,), _same)
        for slot, (proj, heads) in enumerate((("q", d.n_head), ("k", d.n_kv_head), ("v", d.n_kv_head))):
            attn_proj(f"{s}.self_attention.{proj}_proj.weight", f"{t}.self_attn.qkv.weight",
                      d.d_model, heads, d.head_dim, slot, 3)
        attn_out(f"{s}.self_attention.o_proj.weight", f"{t}.self_attn.o.weight", d.n_head, d.head_dim, d.d_model)
        attn_proj(f"{s}.cross_attention.q_proj.weight", f"{t}.cross_attn.q.weight",
                  d.d_model, d.cross_n_head, d.cross_head_dim, 0, 1)
        for slot, proj in enumerate(("k", "v")):
            attn_proj(f"{s}.cross_attention.{proj}_proj.weight", f"{t}.cross_attn.kv.weight",
                      e.d_model, d.cross_n_kv_head, d.cross_head_dim, slot, 2)
        attn_out(f"{s}.cross_attention.o_proj.weight", f"{t}.cross_attn.o.weight",
                 d.cross_n_head, d.cross_head_dim, d.d_model)
        mlp(f"{s}.mlp", f"{t}.mlp", d.d_model, d.d_ff)
    add(f"{pre}decoder.norm.weight", "decoder.norm.weight", (d.d_model,), _same)
    if nari:
        add("decoder.logits_dense.weight", "decoder.head.weight",
            (d.d_model, d.n_channels, d.vocab_size), _dense_in(d.d_model))
    else:
        add("logits_dense.weight", "decoder.head.weight", (d.n_channels * d.vocab_size, d.d_model), _same)
    return table


def layout_of(name: str) -> str:
    """Per-key layout detection: transformers names carry a `model.` prefix (or are the top-level head)."""
    return TRANSFORMERS if name.startswith(("model.", "logits_dense.")) else NARI


def keeps_fp32(name: str) -> bool:
    """Norm gains stay in float32 whatever the compute dtype (spec 1.8)."""
    return name.endswith("norm.weight")


def convert_state_dict(
    tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, Callable[[], torch.Tensor]]],
    cfg: DiaConfig,
    dtype: torch.dtype,
    where: str = "checkpoint",
) -> tuple[dict[str, torch.Tensor], str]:
    """Convert checkpoint tensors into our layout, strictly.

    Args:
        tensors: name -> tensor, or (name, loader) pairs so big files load one tensor at a time.
        cfg: the model config the tensors must fit.
        dtype: compute dtype for everything but norm gains.
        where: file description for error messages.

    Returns:
        (our state dict, layout found: "nari", "transformers" or "mixed").
    """
    tables = {NARI: source_table(cfg, NARI), TRANSFORMERS: source_table(cfg, TRANSFORMERS)}
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    parts: dict[str, dict[int, torch.Tensor]] = {}
    filled_by: dict[str, str] = {}  # target -> the layout whose parts fill it
    unknown: list[str] = []
    for name, value in items:
        layout = layout_of(name)
        src = tables[layout].get(name)
        if src is None:
            unknown.append(name)
            continue
        if filled_by.setdefault(src.target, layout) != layout:
            raise CheckpointError(f"{where}: tensor {name!r} duplicates one stored under the other layout's name")
        tensor = value() if callable(value) else value
        if tuple(tensor.shape) != src.shape:
            raise CheckpointError(
                f"{where}: tensor {name!r} has shape {list(tensor.shape)}, expected {list(src.shape)} "
                f"for this config (is config.json from the same model?)"
            )
        if not tensor.is_floating_point():
            raise CheckpointError(f"{where}: tensor {name!r} has dtype {tensor.dtype}, expected a float tensor")
        target_dtype = torch.float32 if keeps_fp32(src.target) else dtype
        parts.setdefault(src.target, {})[src.slot] = src.convert(tensor).to(target_dtype)
    seen = set(filled_by.values())
    if not seen:
        shown = ", ".join(repr(n) for n in unknown[:3]) or "none"
        raise CheckpointError(
            f"{where}: unknown checkpoint layout: none of its {len(unknown)} tensors is a Dia tensor "
            f"(first names: {shown}); expected the original nari-labs names or the transformers names"
        )
    if unknown:
        raise CheckpointError(
            f"{where}: unexpected tensor {unknown[0]!r}"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + ": not part of a Dia checkpoint with this config"
        )
    layout = seen.pop() if len(seen) == 1 else "mixed"
    # Name a missing tensor in the layout its target was (partly) filled from, else the file's.
    default = TRANSFORMERS if layout == "mixed" else layout
    missing = [
        name
        for lay, table in tables.items()
        for name, src in table.items()
        if filled_by.get(src.target, default) == lay and src.slot not in parts.get(src.target, {})
    ]
    if missing:
        raise CheckpointError(
            f"{where}: missing tensor {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    state = {t: got[0] if len(got) == 1 else torch.cat([got[i] for i in sorted(got)], dim=0)
             for t, got in parts.items()}
    return state, layout


def export_state_dict(state: Mapping[str, torch.Tensor], cfg: DiaConfig, layout: str) -> dict[str, torch.Tensor]:
    """Our layout -> a checkpoint in `layout` ("nari" or "transformers"): the inverse of loading."""
    table = source_table(cfg, layout)
    out: dict[str, torch.Tensor] = {}
    for name, src in table.items():
        full = state[src.target]
        if src.n_slots > 1:
            # Parts are stacked along dim 0 (our [out, in] rows) in slot order.
            rows = [_out_rows(s, layout) for s in table.values() if s.target == src.target]
            start = sum(rows[: src.slot])
            full = full[start:start + rows[src.slot]]
        if layout == NARI and src.convert is _transpose:
            full = full.t()
        elif layout == NARI and src.convert is not _same:
            # DenseGeneral: the file holds the row-major reshape of our transpose.
            full = full.t().reshape(src.shape)
        out[name] = full.contiguous()
    return out


def _out_rows(src: Source, layout: str) -> int:
    """How many of our dim-0 rows one part fills."""
    if layout == TRANSFORMERS or src.convert is _same:
        return src.shape[0]
    return math.prod(src.shape[1:])


# --------------------------------------------------------------------------------------------
# Files


def find_weight_files(directory: Path) -> list[Path]:
    """The weight file(s) in a model directory: safetensors (maybe sharded) first, then a .pth."""
    safetensors = sorted(directory.glob("*.safetensors"))
    if safetensors:
        return safetensors
    pth = sorted(list(directory.glob("*.pth")) + list(directory.glob("*.pt")) + list(directory.glob("*.bin")))
    if pth:
        return pth[:1] if (directory / "dia-v0_1.pth") not in pth else [directory / "dia-v0_1.pth"]
    raise CheckpointError(
        f"no weights in {directory}: expected model.safetensors (original or transformers names) or dia-v0_1.pth"
    )


def iter_file_tensors(path: Path) -> Iterable[tuple[str, Callable[[], torch.Tensor]]]:
    """(name, loader) pairs; safetensors load lazily one tensor at a time."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
        with handle as f:
            for name in list(f.keys()):
                yield name, (lambda n=name: f.get_tensor(n))
        return
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable torch state dict ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, Mapping) and not any(torch.is_tensor(v) for v in obj.values()):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    for name, tensor in obj.items():
        if not torch.is_tensor(tensor):
            raise CheckpointError(f"{path}: entry {name!r} is not a tensor")
        yield name, tensor


def load_dir_state(directory: Path, cfg: DiaConfig, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], str]:
    files = find_weight_files(directory)

    def all_tensors():
        for path in files:
            yield from iter_file_tensors(path)

    where = str(files[0]) if len(files) == 1 else f"{directory} ({len(files)} files)"
    return convert_state_dict(all_tensors(), cfg, dtype, where=where)

