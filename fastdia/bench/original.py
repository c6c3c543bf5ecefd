"""`fastdia bench --compare original`: the original Dia2 runtime, timed on the same weights.

The original runtime (nari-labs/dia2, the `dia2` package) is not on PyPI, and its own packaging
pins CUDA builds of torch. Install it beside fastdia without its dependencies:

    pip install --no-deps git+https://github.com/nari-labs/dia2 && pip install sphn

It is imported only in the benchmark child below, and driven only through its public Python API
(`Dia2.from_local`, `generate`) in float32 on the CPU, in eager mode, with its default sampling
(the settings fastdia's own rows use). The time of one step is the time between two calls of
the runtime's decoder step, which its generation loop makes once per step: in between it runs
the 31 depformer stages and all sampling, so an interval is a full step, as in fastdia's rows.
The loop is stopped after the steps asked for; the codec never runs, so there is no time to
first audio (the original runtime returns audio only at the end).

Weights: a preset is written, in a child of its own (so the export's memory stays out of the
runtime's peak RSS), to a temporary folder in the reference layout: `convert_dia2` without
quantization writes the reference's config.json, parameter names and a tokenizer.json, and the
preset's Mimi codec goes beside it in transformers' layout. A local folder or cached hub id in
the reference layout is read as it is; a folder `fastdia convert` quantized is refused.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from .common import peak_rss_bytes, read_bandwidth_now, run_child
from .dia2 import step_weight_bytes_dia2
from .quality import Parts

INSTALL_HINT = ("the original Dia2 runtime is not installed; install it with "
                "`pip install --no-deps git+https://github.com/nari-labs/dia2 && pip install sphn` "
                "(--no-deps keeps the torch you have)")


def original_available() -> bool:
    """Whether the original runtime imports here (it needs `sphn` besides what fastdia has)."""
    try:
        import dia2  # noqa: F401
        from dia2.generation import GenerationConfig  # noqa: F401
    except ImportError:
        return False
    return True


class _Enough(Exception):
    """Raised from inside the original generation loop once the steps asked for were timed."""


# ============================================================================================
# Children


def child_export(spec: dict) -> dict:
    """Write preset `spec["model"]` to `spec["out"]` in the reference layout, codec in `mimi/`."""
    from ..codecs.mimi.codec import PRESETS, random_state_dict, save_transformers_layout
    from ..dia2.checkpoint import convert_dia2
    from ..dia2.config import PRESET_CODECS

    t0 = time.perf_counter()
    out = Path(spec["out"])
    convert_dia2(spec["model"], out)
    codec = PRESET_CODECS[spec["model"]]
    save_transformers_layout(random_state_dict(PRESETS[codec]), PRESETS[codec], out / "mimi")
    return {"directory": str(out), "codec": codec, "seconds": time.perf_counter() - t0}


def _load(directory: Path):
    """The original runtime's `Dia2` for `directory` (float32, CPU) and its runtime context, built
    as its `generate()` would build it: weights, tokenizer and codec (`mimi/` when there is one)."""
    import dia2

    mimi = directory / "mimi"
    model = dia2.Dia2.from_local(directory / "config.json", directory / "model.safetensors", device="cpu",
                                 dtype="float32", tokenizer_id=str(directory),
                                 mimi_id=str(mimi) if mimi.is_dir() else None)
    return model, model._ensure_runtime()


def child_original(spec: dict) -> dict:
    """Steps per second of the original runtime on `spec["directory"]` (float32, CPU, eager)."""
    import torch

    from ..dia2.config import load_dia2_config
    from ..dia2.model import Dia2Model

    from dia2.generation import GenerationConfig

    directory = Path(spec["directory"])
    mimi = directory / "mimi"
    t0 = time.perf_counter()
    model, runtime = _load(directory)
    load_s = time.perf_counter() - t0
    steps = spec["steps"]
    stamps: list[float] = []
    step = runtime.transformer_step

    def timed_step(*args, **kwargs):
        stamps.append(time.perf_counter())
        if len(stamps) > steps + 1:  # steps + 1 full intervals; the first one is the warm-up
            raise _Enough
        return step(*args, **kwargs)

    runtime.transformer_step = timed_step  # read by the loop at its start (runtime.context)
    torch.manual_seed(0)
    t1 = time.perf_counter()
    try:
        model.generate(spec["text"], config=GenerationConfig())
    except _Enough:
        pass
    finally:
        runtime.transformer_step = step
    per_step = [b - a for a, b in zip(stamps[:-1], stamps[1:])]
    steady = per_step[1:] or per_step
    peak_rss = peak_rss_bytes()
    bw_after = read_bandwidth_now()
    with torch.device("meta"):
        ours = Dia2Model(load_dia2_config(directory / "config.json"))
    wb = step_weight_bytes_dia2(ours)
    return {
        "impl": "dia2-original",
        "family": "dia2",
        "dtype": "float32",
        "quantize": "none",
        "batch": 1,
        "fused_step": False,
        "load_s": load_s,
        "steps_timed": len(steady),
        "decoder_only_steps": 0,  # the original runs every stage from the first step
        "ttfs_ms": ((stamps[1] if len(stamps) > 1 else time.perf_counter()) - t1) * 1e3,
        "steps_per_s": len(steady) / sum(steady) if steady else None,
        "aggregate_steps_per_s": len(steady) / sum(steady) if steady else None,
        "median_step_ms": sorted(steady)[len(steady) // 2] * 1e3 if steady else None,
        "weight_bytes_per_step": wb["dram"],
        "weight_bytes_unique": wb["unique"],
        "weight_bytes": wb,
        "parameters_bytes": sum(p.numel() * 4 for p in ours.parameters()),
        "peak_rss_bytes": peak_rss,
        "bandwidth_after_run_GBps": bw_after,
        "ttfa_s": None,
        "ttfa_chunk_s": None,
        "codec": "mimi/ beside the model" if mimi.is_dir() else "the config's assets.mimi",  # never decoded
        "runtime": "nari-labs/dia2 " + _version(),
    }


def child_original_quality(spec: dict) -> dict:
    """The original runtime's CFG-guided logits, teacher-forced on fastdia's recorded greedy float32
    inputs (`spec["ref"]`, fastdia.bench.quality.child_quality), saved to `spec["out"]` in the layout
    of fastdia.bench.quality.teacher_forced_dia2, so the two float32 implementations compare directly.

    The decoder gets each recorded step's tokens and position; stage s of the depformer gets the
    recorded code of codebook s (the frame's), its cache reset each step as the original's loop does.
    """
    import torch

    _, runtime = _load(Path(spec["directory"]))
    net = runtime.model
    rec = torch.load(spec["ref"])
    inputs, buffer = rec["inputs"], rec["buffer"]
    steps = min(spec["steps"], len(inputs) - 1)
    size = runtime.config.data.audio_vocab_size - 2  # codes 0..2047; BOS and PAD above
    state = net.init_state(2, torch.device("cpu"), int(inputs[steps][2].max()) + 2)
    parts = Parts()  # the guidance scale teacher_forced_dia2 uses
    with torch.inference_mode():
        for i in range(steps):
            tokens, pos, _slots = inputs[i]
            t = int(pos[0, 0])
            hidden, act, c0, state.transformer = net.transformer.forward_step(
                tokens.transpose(1, 2).contiguous(), pos, state.transformer)
            parts.add("action", act)
            parts.add("cb0", c0.reshape(2, -1)[:, :size])
            state.depformer.reset()
            nxt = inputs[i + 1][0]
            main, second = nxt[0, 0, 0].expand(2), nxt[0, 0, 1].expand(2)
            row = []
            for s in range(net.depformer.num_depth):
                logits, state.depformer = net.depformer.forward_step(
                    prev_audio=buffer[s, t + 1].expand(2), transformer_out=hidden, stage_index=s,
                    cache=state.depformer, main_text=main, second_text=second)
                row.append(logits)
            parts.add_stages(row)
    torch.save({"logits": parts.result()}, spec["out"])
    return {"out": spec["out"], "dtype": "float32", "quantize": "none", "steps": steps,
            "runtime": "nari-labs/dia2 " + _version()}


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("dia2")
    except metadata.PackageNotFoundError:  # importable from a checkout on the path, not installed
        return "(no version)"


CHILDREN = {"dia2_export": child_export, "dia2_original": child_original,
            "dia2_original_quality": child_original_quality}


# ============================================================================================
# Parent side


def prepare(base: dict, log=print) -> tuple[Path, Path | None]:
    """The folder the original runtime reads for `base["model"]`, and a temporary folder to remove
    afterwards (None when the model's own folder is used).

    Raises:
        RuntimeError: the runtime is missing, or the model is not in the reference layout.
    """
    from ..dia2.checkpoint import _choose_files
    from ..hub import resolve_dir
    from ..dia2.config import DIA2_PRESETS
    from ..dia2.quantized import stored_dia2_quantization

    name = str(base["model"])
    directory = None if name in DIA2_PRESETS else resolve_dir(name, _choose_files, what="Dia2 model")
    if directory is not None and stored_dia2_quantization(directory / "config.json") is not None:
        raise RuntimeError(f"--compare original: {directory} was written by fastdia convert; the original "
                           "runtime reads the original checkpoint (pass that as --model)")
    if not original_available():
        raise RuntimeError(f"--compare original: {INSTALL_HINT}")
    if directory is not None:
        return directory, None
    tmp = Path(tempfile.mkdtemp(prefix="fastdia-original-"))
    log(f"bench: writing {name} in the reference layout for the original runtime ...")
    try:
        run_child({"kind": "dia2_export", "threads": base["threads"], "model": name, "out": str(tmp / "model")})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp / "model", tmp
