"""Quantized checkpoints, whatever the family: the stored parts of each quantized module (the
state-dict transform `fastdia convert` saves), rebuilding a module from them, and the tensors of
a safetensors file read without a memory map. Each family's quantized module
(fastdia.dia1.quantized, fastdia.dia2.quantized) says which of its layers are stored how.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import torch
from torch import nn

from ..errors import CheckpointError
from .formats import quantize_int4, quantize_int8
from .modules import Int4Linear, Int8Embedding, Int8Linear, RowSplitLinear


QUANT_KEY = "fastdia_quantization"


# 2: int4 as qweight/tscale/rscale/offsets (fastdia's kernel format), offsets float16.
# 3: int4 offsets int8 + oscale per row, and cross-attention queries in int4 too. Int4 checkpoints
# of an older format must be converted again; int8 and float ones of any format are unchanged.
FORMAT_VERSION = 3


INT4_FORMATS = (FORMAT_VERSION,)


OTHER_FORMATS = (1, 2, FORMAT_VERSION)


INT4_PARTS = ("qweight", "tscale", "rscale", "offsets", "oscale")


QUANT_PARTS = ("scales",) + INT4_PARTS


def quantized_parts(prefix: str, fmt: str, tensor: torch.Tensor, group_size: int,
                     split: int) -> Iterator[tuple[str, torch.Tensor]]:
    if fmt in ("int8", "int8-embedding"):
        q, s = quantize_int8(tensor)
        yield f"{prefix}.qweight", q
        yield f"{prefix}.scales", s
    elif fmt == "int4":
        for part, value in zip(INT4_PARTS, quantize_int4(tensor, group_size)):
            yield f"{prefix}.{part}", value
    else:  # "int4-query": the row blocks of a RowSplitLinear
        yield from quantized_parts(f"{prefix}.first", "int4", tensor[:split], group_size, split)
        yield from quantized_parts(f"{prefix}.rest", "int8", tensor[split:], group_size, split)


def _row_blocks(parts: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]] | None:
    """The `first.`/`rest.` parts of a split module (`RowSplitLinear`) as two part dicts, else None."""
    if not any(key.startswith(("first.", "rest.")) for key in parts):
        return None
    return [{k.split(".", 1)[1]: v for k, v in parts.items() if k.startswith(which + ".")}
            for which in ("first", "rest")]


def module_from_stored(parts: Mapping[str, torch.Tensor], group_size: int, embedding: bool = False,
                       dtype: torch.dtype = torch.float32) -> nn.Module:
    """Rebuild one quantized module from its stored tensors (int8: `qweight`, `scales`; int4:
    the parts of `INT4_PARTS`; a split one: the same prefixed `first.` and `rest.`)."""
    blocks = _row_blocks(parts)
    if blocks is not None:
        return RowSplitLinear(*(module_from_stored(b, group_size) for b in blocks))
    q = parts["qweight"]
    if embedding:
        return Int8Embedding(q, parts["scales"], dtype=dtype)
    if "tscale" in parts:
        return Int4Linear.from_stored(*(parts[p] for p in INT4_PARTS), group_size)
    return Int8Linear.from_stored(q, parts["scales"])


def assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    setattr(owner, attr, nn.Parameter(tensor, requires_grad=False))


def check_complete(model: nn.Module, where: str) -> None:
    missing = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if missing:
        raise CheckpointError(f"{where}: missing tensor {missing[0]!r}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I8": torch.int8,
              "U8": torch.uint8, "I32": torch.int32, "I64": torch.int64}


def read_safetensors(path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) from a safetensors file, each read into its own aligned CPU tensor.

    Plain reads instead of safetensors' memory map: mapped file pages count in the process's
    RSS on top of the tensors made from them (measured: int8 1.6B 4.2 GB peak with the map,
    about the model's size with reads), and the kernels need 64-byte aligned data anyway.
    """
    import json
    import struct

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                         key=lambda kv: kv[1]["data_offsets"][0])
        for name, info in entries:
            dtype = _ST_DTYPES[info["dtype"]]
            start, end = info["data_offsets"]
            tensor = torch.empty(info["shape"], dtype=dtype)
            raw = tensor.view(-1).view(torch.uint8) if tensor.numel() else tensor.view(torch.uint8)
            if end - start != raw.numel():
                raise ValueError(f"tensor {name!r}: {end - start} bytes for {raw.numel()}")
            f.seek(base + start)
            if f.readinto(memoryview(raw.numpy())) != raw.numel():
                raise ValueError(f"tensor {name!r} is truncated")
            yield name, tensor


def complete_parts(parts: Mapping[str, torch.Tensor]) -> bool:
    blocks = _row_blocks(parts)
    if blocks is not None:
        return all(complete_parts(b) for b in blocks)
    return {"qweight", "scales"} <= parts.keys() or set(INT4_PARTS) <= parts.keys()


def collect_part(name: str, tensor: torch.Tensor, modules: set[str], pending: dict[str, dict]) -> bool:
    """File `tensor` under its quantized module in `pending` when `name` is one of the stored parts
    of a module in `modules` (`<module>.<part>`, or `<module>.first|rest.<part>` for a split
    one); False for any other tensor."""
    module, _, part = name.rpartition(".")
    if part not in QUANT_PARTS:
        return False
    if module in modules:
        pending.setdefault(module, {})[part] = tensor
        return True
    owner, _, block = module.rpartition(".")
    if owner in modules and block in ("first", "rest"):
        pending.setdefault(owner, {})[f"{block}.{part}"] = tensor
        return True
    return False
