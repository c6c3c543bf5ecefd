"""Weight-only int8/int4 quantization, the bf16 path and converted checkpoints, on tiny models."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from fastdia import Dia
from fastdia.backends.cpu import kernels as cpu_kernels
from fastdia.backends.cpu.features import cpu_features
from fastdia.quant import formats
from fastdia.quant import modules as quant
from fastdia.dia1 import quantized as quant_store
from fastdia.bench.common import DEFAULT_TEXT
from fastdia.bench.dia1 import compare_guided, teacher_forced_guided
from fastdia.loader import convert
from fastdia.dia1.generation import Dia1Generator
from fastdia.dia1.checkpoint import load_model
from fastdia.text import tokenize

CPU = torch.device("cpu")


def _weight(n: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) / math.sqrt(k)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture
def no_kernels(monkeypatch):
    """Force torch's own weight-only kernels (the path of machines without VNNI or a compiler)."""
    monkeypatch.setattr(quant, "_kernels", lambda: False)


def test_int4_pack_round_trip():
    q = torch.randint(0, 16, (48, 192), dtype=torch.uint8)
    packed = formats.pack_int4(q)
    assert packed.shape == (48, 96)
    assert torch.equal(formats.unpack_int4(packed), q)


@pytest.mark.parametrize("rows", [1, 2, 5, 20])
def test_int8_linear_close_to_float(rows):
    w = _weight(96, 256)
    x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(1))
    ref = F.linear(x, w)
    module = quant.Int8Linear.from_float(w)
    assert _rel(module(x), ref) < 0.02
    # Against its own dequantized weight the kernel is exact up to activation rounding.
    deq = formats.dequantize_int8(module.int8_weight(), module.scales)
    assert _rel(module(x), F.linear(x, deq)) < (1e-3 if module.use_kernel and rows <= cpu_kernels.MAX_ROWS else 1e-2)


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("rows", [2, 20])
def test_int4_linear_close_to_dequantized(group, rows):
    w = _weight(80, 256)
    x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(2))
    module = quant.Int4Linear.from_float(w, group)
    deq = formats.dequantize_int4(*formats.quantize_int4(w, group))
    assert _rel(deq, w) < 0.15
    assert _rel(module(x), F.linear(x, deq)) < (1e-3 if module.use_kernel else 1e-2)
    assert module(x.view(rows // 2, 2, 256)).shape == (rows // 2, 2, 80)


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("n", [48, 47])  # odd: the row-pair layout pads one zero row
def test_fastdia_int4_kernel(group, n):
    if not cpu_kernels.available():
        pytest.skip(cpu_kernels.unavailable_reason())
    w = _weight(n, 256)
    module = quant.Int4Linear.from_float(w, group)
    assert module.use_kernel
    parts = formats.quantize_int4(w, group)
    for got, want in zip(module.int4_parts(), parts):  # the tiled layout round-trips
        assert torch.equal(got, want)
    deq = formats.dequantize_int4(*parts)
    for rows in (1, 2, 3, 8, 20):
        x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(rows))
        assert _rel(module(x), F.linear(x, deq)) < 1e-3


@pytest.mark.parametrize("n", [64, 63])
def test_fastdia_int8_kernel_odd_rows(n):
    if not cpu_kernels.available():
        pytest.skip(cpu_kernels.unavailable_reason())
    w = _weight(n, 128)
    module = quant.Int8Linear.from_float(w)
    q, scale = formats.quantize_int8(w)
    assert torch.equal(module.int8_weight(), q)
    for rows in (1, 2, 7, 9):
        x = torch.randn(rows, 128, generator=torch.Generator().manual_seed(rows))
        assert _rel(module(x), F.linear(x, formats.dequantize_int8(q, scale))) < 1e-3


def test_tile_pairs_round_trip():
    q = torch.arange(5 * 64, dtype=torch.int32).view(5, 64)
    tiled = formats.tile_pairs(q, 32)
    assert tiled.shape == (3, 128)
    assert torch.equal(tiled[0, :64], torch.cat((q[0, :32], q[1, :32])))
    assert torch.equal(formats.untile_pairs(tiled, 32)[:5], q)


@pytest.mark.parametrize("n", [21, 16, 2])  # a last group of fewer pairs; whole groups; one pair
def test_grouped_layout_round_trip(n):
    """Long rows are held in chunk-major groups of pairs; every row range reads back."""
    k = 4096
    assert formats.grouped(k) and formats.grouped(8192) and not formats.grouped(3072) and not formats.grouped(4000)
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=torch.Generator().manual_seed(n))
    held = formats.kernel_layout(q, 32, k)
    tiled = formats.tile_pairs(q, 32)
    assert held.shape == tiled.shape and torch.equal(held, tiled) == (n == 2)  # one pair: nothing to regroup
    # the first chunk of the first group: the first 1024 inputs of pair 0, then of pair 1
    chunk = 2 * formats.GROUP_CHUNK
    assert torch.equal(held.reshape(-1)[:chunk], tiled[0, :chunk])
    if n > 2:
        assert torch.equal(held.reshape(-1)[chunk:2 * chunk], tiled[1, :chunk])
    for r0, r1 in ((0, n), (1, n), (2, min(n, 11)), (n - 1, n)):
        assert torch.equal(formats.kernel_rows(held, 32, k, r0, r1), q[r0:r1])


@pytest.mark.parametrize("k", [3072, 4096, 6144])
def test_long_row_kernels(k):
    """Long rows (int8 in groups of pairs, int4 in pair tiles; at K = 3072, 6+ int8 rows run a
    group of pair tiles chunk by chunk) against their dequantized weights, the prefill path and
    the stored codes read back, and each row bitwise the same in any batch."""
    if not cpu_kernels.available():
        pytest.skip(cpu_kernels.unavailable_reason())
    w = _weight(45, k)  # odd: a padded pair, and a last group of three pairs
    for module, deq in ((quant.Int8Linear.from_float(w), lambda m: formats.dequantize_int8(m.int8_weight(), m.scales)),
                        (quant.Int4Linear.from_float(w, 64), lambda m: formats.dequantize_int4(*m.int4_parts()))):
        ref = deq(module)
        assert _rel(ref, w) < 0.1
        x = torch.randn(24, k, generator=torch.Generator().manual_seed(k))
        batch = module(x[:24])
        assert _rel(batch, F.linear(x, ref)) < 1e-3
        for rows in (1, 2, 8, 9):
            assert torch.equal(module(x[:rows]), batch[:rows])
        many = torch.randn(cpu_kernels.MAX_ROWS + 3, k, generator=torch.Generator().manual_seed(1))
        assert _rel(module(many), F.linear(many, ref)) < 1e-3  # prefill: dense blocks of rows


def test_int4_search_beats_min_max():
    """The clipped, refit grid has lower error than plain min/max rounding (the old format)."""
    w = _weight(256, 512)
    deq = formats.dequantize_int4(*formats.quantize_int4(w, 32))
    wg = w.view(256, 16, 32)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    step = (hi - lo) / 15
    minmax = (torch.round((wg - lo) / step) * step + lo).view(256, 512)
    assert _rel(deq, w) < 0.95 * _rel(minmax, w)
    packed, tscale, rscale, offsets, oscale = formats.quantize_int4(w, 32)
    assert tscale.dtype == torch.uint8 and int(tscale.min()) >= 1 and offsets.dtype == torch.int8
    assert rscale.shape == oscale.shape == (256,)


def test_int4_offsets_in_8_bits_cost_nothing():
    """Offsets stored int8 per row (format 3) lose nothing measurable against exact ones: the
    codes are refit for the stored offsets."""
    w = _weight(256, 512)
    packed, tscale, rscale, offsets, oscale = formats.quantize_int4(w, 32)
    deq = formats.dequantize_int4(packed, tscale, rscale, offsets, oscale)
    step = formats.int4_steps(tscale, rscale)[..., None]
    exact = (w.view(256, 16, 32) - step * formats.unpack_int4(packed).view(256, 16, 32).float()).mean(-1, keepdim=True)
    best = (formats.unpack_int4(packed).view(256, 16, 32).float() * step + exact).view(256, 512)
    assert _rel(deq, w) < 1.01 * _rel(best, w)


def test_float_gemv_kernels():
    if not cpu_kernels.available():
        pytest.skip(cpu_kernels.unavailable_reason())
    from fastdia.backends.cpu.packed import GemvLinear

    w = _weight(70, 192)
    for rows in (1, 2, 8, 9):
        x = torch.randn(rows, 192, generator=torch.Generator().manual_seed(rows))
        assert _rel(GemvLinear(w)(x), F.linear(x, w)) < 1e-5
        wb = w.to(torch.bfloat16)  # every kernel build has a bfloat16 GEMV
        got = GemvLinear(wb)(x.to(torch.bfloat16))
        assert got.dtype == torch.bfloat16
        assert _rel(got, F.linear(x.to(torch.bfloat16).float(), wb.float())) < 1e-2


@pytest.mark.parametrize("group", [32, 64])
def test_torch_fallback_kernels_agree(no_kernels, group):
    w = _weight(40, 128)  # 40 rows: the int4 fallback pads to a multiple of 16
    x = torch.randn(2, 128, generator=torch.Generator().manual_seed(3))
    m8, m4 = quant.Int8Linear.from_float(w), quant.Int4Linear.from_float(w, group)
    assert not m4.use_kernel and not m8.use_kernel
    deq8 = formats.dequantize_int8(*formats.quantize_int8(w))
    deq4 = formats.dequantize_int4(*formats.quantize_int4(w, group))
    assert _rel(m8(x), F.linear(x, deq8)) < 1e-2  # bfloat16 activations
    assert _rel(m4(x), F.linear(x, deq4)) < 1e-2


def test_kernels_build_here():
    """Where the CPU has AVX-512 VNNI (and gcc is there), the fast kernels must be in use."""
    if not cpu_features().fastdia_kernels:
        pytest.skip("CPU without AVX-512 VNNI")
    if os.environ.get("FASTDIA_NO_KERNELS"):
        pytest.skip("kernels disabled by FASTDIA_NO_KERNELS")
    assert cpu_kernels.available(), cpu_kernels.unavailable_reason()


def test_plan_keeps_sensitive_layers():
    assert quant.plan("encoder.layers.0.attn.qkv", 64, "int8", 64) == "bf16"
    assert quant.plan("encoder.layers.0.attn.qkv", 64, "int4", 64) == "int8"
    assert quant.plan("decoder.layers.0.self_attn.qkv", 128, "int4", 64) == "int4-query"
    assert quant.plan("decoder.layers.0.self_attn.qkv", 128, "int8", 64) == "int8"
    assert quant.plan("decoder.layers.0.self_attn.o", 128, "int4", 64) == "int8"
    assert quant.plan("decoder.layers.0.cross_attn.q", 128, "int4", 64) == "int4"
    assert quant.plan("decoder.layers.0.cross_attn.kv", 128, "int4", 64) == "int8"
    assert quant.plan("decoder.layers.0.mlp.gate_up", 128, "int4", 64) == "int4"
    assert quant.plan("decoder.layers.0.mlp.down", 96, "int4", 64) == "int8"  # not a multiple of 64
    assert quant.plan("decoder.head", 128, "int8", 64) == "int8"
    assert quant.plan("decoder.head", 128, None, 64) is None
    assert quant.plan("decoder.embedding", 128, "int4", 64) == "int8-embedding"
    assert quant.plan("encoder.embedding", 128, "int4", 64) is None
    with pytest.raises(Exception, match="unknown quantization"):
        quant.check_mode("int3")


def test_row_split_linear_query_rows_int4():
    """"int4-query": the query rows int4, the key/value rows int8, one projection to the caller."""
    w = _weight(96, 128)
    module = quant.make_module("int4-query", w, 32, split=64)
    assert isinstance(module, quant.RowSplitLinear)
    assert isinstance(module.first, quant.Int4Linear) and isinstance(module.rest, quant.Int8Linear)
    assert (module.in_features, module.out_features) == (128, 96)
    for rows in (2, 20):
        x = torch.randn(rows, 128, generator=torch.Generator().manual_seed(rows))
        y, ref = module(x), x @ w.T
        assert y.shape == (rows, 96)
        assert _rel(y[:, :64], ref[:, :64]) < 0.12 and _rel(y[:, 64:], ref[:, 64:]) < 0.02
    with pytest.raises(ValueError):
        quant.make_module("int4-query", w, 32)


# ------------------------------------------------------------------------------------------
# Whole tiny model: guided-logit agreement with float32, teacher-forced


@pytest.fixture(scope="module")
def reference():
    model = load_model("tiny-random", CPU, torch.float32, optimize=False).model
    with torch.inference_mode():
        return teacher_forced_guided(model, Dia1Generator(model, CPU, torch.float32),
                                     [tokenize(DEFAULT_TEXT)], 64, 3.0)


def _guided(model, dtype, tokens):
    with torch.inference_mode():
        got, _ = teacher_forced_guided(model, Dia1Generator(model, CPU, dtype), [tokenize(DEFAULT_TEXT)], 64,
                                       3.0, tokens)
    return got


@pytest.mark.parametrize("mode,dtype,agreement,error", [
    (None, torch.float32, 0.999, 1e-4),  # oneDNN-packed float32: the same model
    (None, torch.bfloat16, 0.90, 0.05),
    ("int8", torch.float32, 0.95, 0.03),
    ("int4", torch.float32, 0.85, 0.10),
    ("int8", torch.bfloat16, 0.90, 0.05),
])
def test_quantized_model_agrees_with_float32(reference, mode, dtype, agreement, error):
    ref, tokens = reference
    model = load_model("tiny-random", CPU, dtype, quantize=mode).model
    got = compare_guided(_guided(model, dtype, tokens), ref)
    assert got["top1_agreement"] >= agreement, got
    assert got["rel_logit_error"] <= error, got


def test_preset_built_quantized_equals_quantizing_in_memory(reference):
    _, tokens = reference
    direct = load_model("tiny-random", CPU, torch.float32, quantize="int4").model
    after = quant.quantize_model(load_model("tiny-random", CPU, torch.float32).model, "int4")
    assert torch.equal(_guided(direct, torch.float32, tokens), _guided(after, torch.float32, tokens))


@pytest.mark.parametrize("mode", [None, "int8", "int4"])
def test_convert_round_trip(tmp_path, reference, mode):
    _, tokens = reference
    out = tmp_path / "converted"
    summary = convert("tiny-random", out, quantize=mode)
    assert summary["quantize"] == (mode or "none") and (out / "model.safetensors").exists()
    loaded = load_model(out, CPU, torch.float32)
    assert loaded.layout == f"fastdia-{mode or 'float'}"
    in_memory = load_model("tiny-random", CPU, torch.float32, quantize=mode).model
    assert torch.equal(_guided(loaded.model, torch.float32, tokens), _guided(in_memory, torch.float32, tokens))


def test_convert_refuses_converted_input(tmp_path):
    from fastdia.errors import FastDiaError

    convert("tiny-random", tmp_path / "a", quantize="int8")
    with pytest.raises(FastDiaError, match="already"):
        convert(tmp_path / "a", tmp_path / "b", quantize="int4")


def test_dia_quantized_generates_with_prompt():
    """Through the facade, with an audio prompt: prefill runs the many-row (non-kernel) paths."""
    tts = Dia.from_pretrained("tiny-random", device="cpu", quantize="int4")
    prompt = torch.randint(0, 1024, (12, 9), generator=torch.Generator().manual_seed(0))
    codes = tts.generate_codes("[S1] Hello there.", audio_prompt=prompt, max_tokens=90, seed=0)
    assert codes.ndim == 2 and codes.shape[1] == 9 and codes.min() >= 0 and codes.max() < 1024


def test_cli_convert(tmp_path, capsys):
    from fastdia.cli.main import main

    assert main(["convert", "tiny-random", str(tmp_path / "q"), "--quantize", "int8"]) == 0
    assert "int8" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "q"), "--json"]) == 0
    assert '"fastdia-int8"' in capsys.readouterr().out


def test_auto_dtype_rule():
    from fastdia.backends.device import BF16_MIN_PARAMETERS, cpu_has_native_bf16, resolve_dtype

    assert resolve_dtype("auto", CPU) == torch.float32
    assert resolve_dtype("auto", CPU, parameters=1_000_000) == torch.float32
    big = resolve_dtype("auto", CPU, parameters=BF16_MIN_PARAMETERS)
    assert big == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert resolve_dtype("auto", CPU, parameters=BF16_MIN_PARAMETERS, quantize="int8") == torch.float32
    assert resolve_dtype("float32", CPU, parameters=BF16_MIN_PARAMETERS) == torch.float32


def test_source_quantization(tmp_path):
    from fastdia.dia1.checkpoint import source_quantization

    convert("tiny-random", tmp_path / "q", quantize="int4")
    convert("tiny-random", tmp_path / "f")
    assert source_quantization(tmp_path / "q") == "int4"
    assert source_quantization(tmp_path / "f") is None
    assert source_quantization("tiny-random") is None
    assert source_quantization(tmp_path / "missing") is None


def test_old_int4_checkpoint_asks_to_convert_again(tmp_path):
    """Formats 1 and 2 stored int4 differently (float scales, float16 offsets); such checkpoints
    must be refused with a clear message, while older int8 ones still load."""
    import json

    from fastdia.errors import CheckpointError

    convert("tiny-random", tmp_path / "q", quantize="int4")
    config = tmp_path / "q" / "config.json"
    raw = json.loads(config.read_text())
    for old in (1, 2):
        raw[quant_store.QUANT_KEY]["format"] = old
        config.write_text(json.dumps(raw))
        with pytest.raises(CheckpointError, match="convert it again"):
            load_model(tmp_path / "q", CPU, torch.float32)
    convert("tiny-random", tmp_path / "q8", quantize="int8")
    config = tmp_path / "q8" / "config.json"
    raw = json.loads(config.read_text())
    raw[quant_store.QUANT_KEY]["format"] = 2
    config.write_text(json.dumps(raw))
    assert isinstance(load_model(tmp_path / "q8", CPU, torch.float32).model.decoder.head, quant.Int8Linear)


def test_embedding_stored_int8():
    model = load_model("tiny-random", CPU, torch.float32, quantize="int8").model
    assert isinstance(model.decoder.embedding, quant.Int8Embedding)
    assert isinstance(model.encoder.embedding, torch.nn.Embedding)
    ref = load_model("tiny-random", CPU, torch.float32).model.decoder.embedding.weight
    ids = torch.tensor([[0, 5, 1027 + 1028]])
    assert _rel(model.decoder.embedding(ids), ref[ids]) < 0.01


def test_loading_keeps_torch_decompositions_unimported():
    """Building models on the meta device must not initialise meta tensors: torch serves meta
    `normal_` through Python decompositions whose import (sympy included) costs ~77 MB of RSS."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from fastdia.dia1.checkpoint import load_model\n"
            "from fastdia.codecs.dac.weights import expected_shapes\n"
            "from fastdia.codecs.dac.codec import DACConfig\n"
            "load_model('tiny-random', torch.device('cpu'), torch.float32, quantize='int4')\n"
            "expected_shapes(DACConfig())\n"
            "print('sympy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"
