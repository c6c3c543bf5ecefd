"""What the Dia-1 and Dia2 ONNX modules share: export options and the exporter call, the
onnxruntime session and row grouping of the runtimes, and the attention pieces of the graphs.

Graphs are exported with torch's dynamo exporter (onnxscript) at opset 18, the lowest it emits.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...errors import GenerationError


OPSET = 18


# Graphs above this are saved with their weights in a side file (protobuf's limit is 2 GB).
EXTERNAL_DATA_BYTES = 1 << 30


QUANT_MODES = ("int8", "int4", "qdq")


@dataclass(frozen=True)
class ExportOptions:
    """How to export.

    Attributes:
        static: fixed shapes for NPUs (QNN): batch `rows`, text `text_len`, cache `cache_len`,
            one frame per decoder call, no dynamic dims.
        quantize: None (float32), "int8" (int8 weights, dynamic activation quantization via
            MatMulInteger), "int4" (onnxruntime MatMulNBits, block-wise) or "qdq" (static QDQ,
            uint8 weights and uint16 activations calibrated on recorded generations).
        rows: static batch in CFG rows (2 = one utterance).
        text_len: static text length in bytes (the original pads to 1024).
        cache_len: static self-attention cache length (default: the model's max positions).
        codec_frames: static codec window in frames.
        block_size: int4 block size.
        accuracy_level: int4 MatMulNBits compute: 4 (default) quantizes each activation row to int8
            and multiplies in integers, onnxruntime's fast CPU path; 0 dequantizes the weights to
            float32 first (the reference arithmetic; slower on CPU, see benchmarks/README.md).
        codec: DAC source for the codec graph (default: the model's: tiny-random for presets,
            else descript/dac_44khz); "none" skips the codec graph.
        calibration_scripts: scripts generated (greedy) to record QDQ calibration activations.
    """

    static: bool = False
    quantize: str | None = None
    rows: int = 2
    text_len: int = 1024
    cache_len: int | None = None
    codec_frames: int = 256
    block_size: int = 32
    accuracy_level: int = 4
    codec: str | None = None
    calibration_scripts: tuple[str, ...] = (
        "[S1] Hello there, how are you today? [S2] Fine, thanks (laughs).",
        "[S2] The weather is lovely. [S1] Let's go for a walk!",
        "[S1] One, two, three. [S2] Four, five, six, seven.",
    )
    calibration_max_tokens: int = 96

    def __post_init__(self) -> None:
        if self.quantize not in (None, *QUANT_MODES):
            raise GenerationError(f"quantize must be one of {', '.join(QUANT_MODES)} (or none), got {self.quantize!r}")
        for name in ("rows", "text_len", "codec_frames", "block_size"):
            if getattr(self, name) < 1:
                raise GenerationError(f"{name} must be positive, got {getattr(self, name)}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise GenerationError(f"accuracy_level must be 0..4, got {self.accuracy_level}")
        if self.rows % 2:
            raise GenerationError(f"rows counts CFG rows (2 per utterance) and must be even, got {self.rows}")


def export_dirs(model: torch.nn.Module, out_dir: str | os.PathLike, quantize: str | None) -> tuple[Path, Path]:
    """(OUT_DIR, the folder the float graphs go to), both created, for a float `model`. Float
    graphs go to a scratch folder `.float` first when they are only the input of a quantizer."""
    if any(not isinstance(p, torch.nn.Parameter) or p.dtype != torch.float32 for p in model.parameters()):
        raise GenerationError("export onnx needs a float checkpoint; export the float model with --quantize instead")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    float_dir = out / ".float" if quantize else out
    float_dir.mkdir(parents=True, exist_ok=True)
    return out, float_dir


def io_names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}_{i}" for i in range(n)]


def export_graph(module, args, path: Path, input_names, output_names, dynamic_shapes) -> dict:
    program = torch.onnx.export(module, args, dynamo=True, input_names=input_names, output_names=output_names,
                                dynamic_shapes=dynamic_shapes, opset_version=OPSET, optimize=True, verbose=False)
    big = sum(t.numel() * t.element_size() for t in module.state_dict().values()) > EXTERNAL_DATA_BYTES
    program.save(str(path), external_data=big)
    del program
    return {"file": path.name, "external_data": (path.name + ".data") if big else None}


class quiet:
    """The exporter prints per-op progress and torchvision warnings on every call; keep the CLI's
    output to our own lines (errors still raise)."""

    def __enter__(self):
        self._level = logging.root.manager.disable
        logging.disable(logging.WARNING)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        return self

    def __exit__(self, *exc):
        logging.disable(self._level)
        self._warnings.__exit__(*exc)
        return False


def ort_session(path: Path, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    # The decoder's weights are its whole size; onnxruntime's default arena would keep a second
    # copy of freed activations around for nothing in a one-step-at-a-time loop.
    opts.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def row_groups(n: int, static: dict | None):
    """Row slices a call is split into (static graphs take exactly `rows` rows)."""
    step = static["rows"] if static else n
    return [slice(a, min(a + step, n)) for a in range(0, n, step)]


def pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    if a.shape[0] == rows:
        return a
    pad = np.repeat(a[-1:], rows - a.shape[0], axis=0)  # a copy of a real row: no NaNs from empty masks
    return np.concatenate((a, pad), axis=0)


class Recorder:
    def __init__(self, session, run) -> None:
        self._session, self.run = session, run

    def __getattr__(self, name):
        return getattr(self._session, name)


def grouped_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """`q (B, Hq, L, D)` . `k (B, Hkv, S, D)` -> `(B, Hkv, G*L, S)`; query head h reads KV head
    h // G (spec 1.4), done by folding the group into the query axis instead of repeating K."""
    b, hq, length, d = q.shape
    hkv = k.shape[1]
    qg = q.reshape(b, hkv, (hq // hkv) * length, d)
    return torch.matmul(qg, k.transpose(-1, -2))


def ungroup(out: torch.Tensor, hq: int) -> torch.Tensor:
    """`(B, Hkv, G*L, D)` -> `(B, Hq, L, D)`."""
    b, hkv, gl, d = out.shape
    return out.reshape(b, hq, gl // (hq // hkv), d)


def softmax_f32(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    # Masked with -inf: every query has at least one visible key (itself, or a real text byte),
    # so no row is empty. Softmax in float32 as the reference does.
    scores = scores.float().masked_fill(~allowed, float("-inf"))
    return scores.softmax(dim=-1)
