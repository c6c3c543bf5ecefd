"""The `fastdia_onnx` block of an exported folder's config.json: what each graph is and how to drive it.

Shapes are read back from the saved graphs, so the manifest cannot disagree with them: an int
is a fixed size, a string a dynamic one (the same name means the same size across graphs).
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import CheckpointError

FORMAT_VERSION = 1

PURPOSE = {
    "encoder": "text encoder + every decoder layer's cross-attention K/V (run once per utterance; "
               "rows interleave (uncond, cond) per item, the uncond text all zeros with the cond mask)",
    "decoder": "decoder over L new frames per row (L = 1 per step; L > 1 prefills): logits and the new "
               "frames' self-attention K/V, to be written by the caller into cache slot = position",
    "codec": "DAC decoder: codes (items, 9, frames) + valid frames per item -> waveform (items, 1, frames * hop)",
}

DRIVING = {
    "cache": "cache_k_i/cache_v_i (rows, kv_heads, cache_len, head_dim) zero-initialised; after each decoder "
             "call write new_k_i/new_v_i[:, :, j] into slot positions[:, j]; slots >= positions[:, 0] are ignored",
    "masks": "text_mask is True at real text bytes (the cond row's mask for both CFG rows); self-attention is "
             "causal by position inside the graph",
    "logits": "(rows, L, channels, vocab) float32, channel-major; CFG: cond + cfg_scale * (cond - uncond)",
    "static": "static exports fix rows, text_len (pad text with 0, mask False), cache_len and L = 1",
}


def describe_graph(folder: Path, graph: dict) -> dict:
    """`graph` ({"file", "external_data"}) plus purpose, inputs, outputs, op types and sizes."""
    import onnx

    path = folder / graph["file"]
    proto = onnx.load(str(path), load_external_data=False)

    def io(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                        "shape": dims})
        return out

    name = path.stem
    files = [path] + ([folder / graph["external_data"]] if graph.get("external_data") else [])
    return {
        **graph,
        "purpose": PURPOSE.get(name, name),
        "opset": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
        "inputs": io(proto.graph.input),
        "outputs": io(proto.graph.output),
        "op_types": sorted({f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in proto.graph.node}),
        "bytes": sum(f.stat().st_size for f in files),
    }


def read_manifest(folder: str | Path) -> dict | None:
    """The `fastdia_onnx` block of `folder`/config.json, or None when it is not an ONNX export."""
    path = Path(folder).expanduser() / "config.json"
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    info = raw.get("fastdia_onnx") if isinstance(raw, dict) else None
    if info is None:
        return None
    if info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: fastdia ONNX format {info.get('format_version')} is not "
                              f"{FORMAT_VERSION}; re-export with this fastdia")
    return info


def is_onnx_dir(folder: str | Path) -> bool:
    try:
        return read_manifest(folder) is not None
    except CheckpointError:
        return True
