"""Every build of fastdia's CPU kernels this CPU can run (AVX2, AVX2 + AVX-VNNI, AVX-512, AVX-512
BF16) against each other and against an integer reference in torch: int8/int4 bit for bit, the
float kernels and the decode glue bit for bit too (csrc/simd.h: the same 16 lanes, the same
reduction tree, no contraction), and whole greedy generations alike."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from fastdia.backends.cpu import kernels
from fastdia.backends.cpu.features import KERNEL_VARIANTS, cpu_features
from fastdia.quant import formats
from fastdia.quant import modules as quant

BUILDS = cpu_features().kernel_variants if kernels.available() else []
pytestmark = pytest.mark.skipif(not BUILDS, reason=f"fastdia's kernels are off here: {kernels.unavailable_reason()}")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _each_build(fn) -> dict[str, object]:
    out = {}
    for name in BUILDS:
        with kernels.use_variant(name):
            out[name] = fn()
    return out


def _all_equal(results: dict[str, object]) -> None:
    names = list(results)
    if len(names) < 2:
        return
    first = results[names[0]]
    for name in names[1:]:
        got = results[name]
        pairs = zip(first, got) if isinstance(first, tuple) else [(first, got)]
        for a, b in pairs:
            assert torch.equal(a, b), f"{name} differs from {names[0]}: max {(a - b).abs().max().item():.3g}"


def test_the_dispatch_table_is_ordered_and_this_cpu_runs_its_best():
    names = [n for n, _ in KERNEL_VARIANTS]
    assert names == ["avx512bf16", "avx512", "avx2vnni", "avx2"]
    # each build needs at least what every build after it needs
    for (_, better), (_, worse) in zip(KERNEL_VARIANTS, KERNEL_VARIANTS[1:]):
        assert worse - {"avx_vnni"} <= better
    if not os.environ.get(kernels.VARIANT_ENV):
        assert kernels.variant() == BUILDS[0]
    assert kernels.dispatch().startswith(kernels.variant())


def _q8_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """What the int8 kernel computes, in torch: x per row to 15-bit integers, exact integer sums,
    then (sum * row step) * weight scale in float32."""
    amax = x.abs().amax(dim=1, keepdim=True)
    step = torch.where(amax > 0, amax / 16383.0, torch.ones_like(amax))
    xq = torch.round(x * (1.0 / step)).to(torch.int64)
    sums = (xq @ q.to(torch.int64).T).to(torch.float32)
    return sums * step * scale


@pytest.mark.parametrize("m,k,n", [(1, 128, 64), (2, 1024, 63), (3, 256, 40), (7, 3072, 24), (9, 4096, 21),
                                   (17, 2048, 16), (64, 512, 9)])
def test_int8_is_the_integer_reference_in_every_build(m, k, n):
    """Row blocks (1-8 rows, 2 on AVX2), odd N, long rows in groups (K = 4096), 6+ rows at K = 3072
    in chunks: every build returns the reference's bits."""
    q, scale = formats.quantize_int8(torch.randn(n, k, generator=_gen(k)) / math.sqrt(k))
    w = formats.kernel_layout(q, 32, k)
    x = torch.randn(m, k, generator=_gen(m))
    x[0, :5] = 0.0
    results = _each_build(lambda: kernels.q8_gemv(x, w, scale, n))
    _all_equal(results)
    want = _q8_reference(x, q, scale)
    assert torch.equal(next(iter(results.values())), want)


@pytest.mark.parametrize("m,k,n,group", [(1, 256, 64, 64), (2, 1024, 33, 32), (5, 512, 16, 128), (12, 3072, 10, 64)])
def test_int4_is_the_same_in_every_build(m, k, n, group):
    module = quant.Int4Linear.from_float(torch.randn(n, k, generator=_gen(n)) / math.sqrt(k), group)
    assert module.use_kernel
    x = torch.randn(m, k, generator=_gen(k + m))
    _all_equal(_each_build(lambda: module(x)))


@pytest.mark.parametrize("m,k,n", [(1, 64, 31), (2, 1024, 40), (9, 256, 17)])
def test_float32_gemv_is_the_same_in_every_build(m, k, n):
    w = torch.randn(n, k, generator=_gen(n))
    x = torch.randn(m, k, generator=_gen(k))
    results = _each_build(lambda: kernels.float_gemv(x, w))
    _all_equal(results)
    assert torch.allclose(next(iter(results.values())), x @ w.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["int8", "int4", "float32", "bfloat16"])
def test_a_batch_of_more_rows_than_one_pass_gives_each_row_its_solo_bits(kind):
    """130 rows (65 requests with CFG: more than one kernel pass of 64 takes) against each row, and
    a few rows, alone: the bits a request gets do not depend on the size of its batch."""
    k, n = 256, 40
    w = torch.randn(n, k, generator=_gen(3)) / math.sqrt(k)
    if kind == "int8":
        q, scale = formats.quantize_int8(w)
        packed = formats.kernel_layout(q, 32, k)
        fn = lambda x: kernels.q8_gemv(x, packed, scale, n)  # noqa: E731
    elif kind == "int4":
        m = quant.Int4Linear.from_float(w, 32)
        fn = lambda x: kernels.q4_gemv(x, m.qweight, m.tscale, m.rscale, m.offsets, m.oscale, 32, n)  # noqa: E731
    else:
        weight = w.to(torch.bfloat16 if kind == "bfloat16" else torch.float32)
        fn = lambda x: kernels.float_gemv(x, weight)  # noqa: E731
    x = torch.randn(130, k, generator=_gen(4))

    def solo_and_batched():
        whole = fn(x)
        for rows in ([0], [63], [64], [129], [1, 2, 3], list(range(60, 70))):
            assert torch.equal(fn(x[rows]), whole[rows]), rows
        return whole

    _all_equal({b: r for b, r in _each_build(solo_and_batched).items() if kind != "bfloat16" or b != "avx512bf16"})


@pytest.mark.parametrize("m,k,n", [(1, 64, 31), (2, 1024, 40), (9, 256, 17)])
def test_bfloat16_gemv_in_every_build(m, k, n):
    """Bit for bit among the builds that widen bfloat16 to float32; the avx512bf16 build's
    vdpbf16ps (or AMX) sums the same exact products with its own rounding: float32 rounding apart."""
    w = torch.randn(n, k, generator=_gen(n)).to(torch.bfloat16)
    x = torch.randn(m, k, generator=_gen(k))
    results = _each_build(lambda: kernels.float_gemv(x, w))
    want = x.to(torch.bfloat16).double() @ w.double().T
    bound = 1e-5 * (x.to(torch.bfloat16).double().abs() @ w.double().abs().T) + 1e-6
    for name, got in results.items():
        assert ((got.double() - want).abs() <= bound).all(), name
    _all_equal({b: r for b, r in results.items() if b != "avx512bf16"})


def test_decode_glue_is_the_same_in_every_build():
    """RMSNorm with residual, SiLU (the exp polynomial and its 2^n scaling, tails of odd widths),
    self- and cross-attention with float16 K/V and a key mask, the int8 embedding sums."""
    e, f, b, hq, hkv, d, t = 40, 37, 3, 4, 2, 24, 19

    def run():
        lib = kernels._library()
        x = torch.randn(b, e, generator=_gen(1))
        res = torch.randn(b, e, generator=_gen(2))
        wn = torch.rand(e, generator=_gen(3)) + 0.5
        y = torch.empty(b, e)
        lib.fd_add_rmsnorm(x.data_ptr(), res.data_ptr(), wn.data_ptr(), 1e-5, b, e, y.data_ptr())
        gu = torch.randn(b, 2 * f, generator=_gen(4)) * 8
        gu[0, :3] = torch.tensor([-200.0, 90.0, 0.0])
        silu = torch.empty(b, f)
        lib.fd_silu_mul(gu.data_ptr(), b, f, silu.data_ptr())
        qkv = torch.randn(b, (hq + 2 * hkv) * d, generator=_gen(6))
        ang = torch.randn(b, d // 2, generator=_gen(7))
        cos, sin = ang.cos().contiguous(), ang.sin().contiguous()
        kc = torch.randn(b, hkv, t, d, generator=_gen(8))
        vc = torch.randn(b, hkv, t, d, generator=_gen(9))
        pos = torch.tensor([0, 7, t - 1], dtype=torch.int64)
        out = torch.empty(b, hq * d)
        scratch = torch.empty(b * hq * (t + d))
        iscratch = torch.empty(b * hkv * t, dtype=torch.int32)
        lib.fd_self_attn(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), kc.data_ptr(), vc.data_ptr(),
                         pos.data_ptr(), b, hq, hkv, d, t, out.data_ptr(), scratch.data_ptr(), iscratch.data_ptr(), 1)
        q = torch.randn(b, hq * d, generator=_gen(10))
        kh, vh = kc.half().contiguous(), vc.half().contiguous()
        keep = (torch.rand(b, t, generator=_gen(11)) > 0.3).to(torch.uint8)
        cross = torch.empty(b, hq * d)
        lib.fd_cross_attn(q.data_ptr(), kh.data_ptr(), vh.data_ptr(), 1, keep.data_ptr(), b, hq, hkv, d, t,
                          cross.data_ptr(), scratch.data_ptr(), iscratch.data_ptr(), 1)
        tab = torch.randint(-127, 128, (11, 21), dtype=torch.int8, generator=_gen(12))
        tscale = torch.rand(11, generator=_gen(13))
        ids = torch.tensor([[3], [10], [0]], dtype=torch.int64)
        base = torch.randn(b, 21, generator=_gen(14))
        emb = torch.empty(b, 21)
        qptr = torch.tensor([tab.data_ptr()], dtype=torch.int64)
        sptr = torch.tensor([tscale.data_ptr()], dtype=torch.int64)
        assert lib.fd_embed_add(emb.data_ptr(), base.data_ptr(), 1, qptr.data_ptr(), sptr.data_ptr(),
                                ids.data_ptr(), 1, b, 21, 11) == 0
        return x, y, gu, silu, kc, out, cross, emb

    results = _each_build(run)
    _all_equal(results)
    x, y, gu, silu, kc, out, cross, emb = next(iter(results.values()))
    assert torch.allclose(silu, torch.nn.functional.silu(gu[:, :f]) * gu[:, f:], rtol=1e-5, atol=1e-6)
    assert torch.isfinite(out).all() and torch.isfinite(cross).all()


def _sampled_codes(build: str) -> dict:
    """Sampled codes (seed 0) of the tiny Dia-1 and Dia2 models in float32, int8 and int4 in a child process running
    build `build` (a whole process: the model's layer plans are prepared against one library)."""
    script = (
        "import json, fastdia\n"
        "from fastdia.backends.cpu import kernels\n"
        "out = {'build': kernels.variant()}\n"
        "for model, length in (('tiny-random', 'max_tokens'), ('dia2-tiny-random', 'max_steps')):\n"
        "    for q in (None, 'int8', 'int4'):\n"
        "        tts = fastdia.load(model, quantize=q)\n"
        "        codes = tts.generate_codes('[S1] Same bits on every CPU. [S2] Yes.', seed=0, **{length: 40})\n"
        "        out[model + '/' + str(q)] = codes.tolist()\n"
        "print(json.dumps(out))\n"
    )
    env = dict(os.environ, **{kernels.VARIANT_ENV: build})
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_whole_generations_are_the_same_in_every_build():
    """Sampled codes equal in the best and the lowest build, and in every build without the
    bfloat16 kernel. The one exception is a real one: Dia-1's int8 mode keeps its encoder in
    bfloat16, which the avx512bf16 build multiplies with vdpbf16ps or AMX (bfloat16 products)
    and the others in float32 blocks through torch, so those codes may differ there."""
    if len(BUILDS) < 2:
        pytest.skip(f"this CPU runs one build only ({BUILDS})")
    wanted = [BUILDS[0], BUILDS[-1]] + [b for b in BUILDS[1:-1] if b == "avx512"]
    runs = {b: _sampled_codes(b) for b in wanted}
    for b, run in runs.items():
        assert run.pop("build") == b
    lowest = runs[BUILDS[-1]]
    for b, run in runs.items():
        for key in run:
            if b == "avx512bf16" and key == "tiny-random/int8":
                continue
            assert run[key] == lowest[key], (b, key)


def test_version_names_the_dispatch():
    env = dict(os.environ, **{kernels.VARIANT_ENV: BUILDS[-1]})
    proc = subprocess.run([sys.executable, "-m", "fastdia", "--version"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("fastdia ") and f"CPU kernels: {BUILDS[-1]}" in proc.stdout


def test_a_build_the_cpu_cannot_run_is_refused_with_a_warning():
    """`FASTDIA_KERNELS` naming an unknown build, or one above this CPU, warns once and loads the
    best build instead (never an illegal instruction); `use_variant` refuses it outright."""
    script = ("import warnings, json\nwarnings.simplefilter('always')\n"
              "from fastdia.backends.cpu import kernels\n"
              "with warnings.catch_warnings(record=True) as w:\n"
              "    ok = kernels.available()\n"
              "print(json.dumps({'variant': kernels.variant(), 'warnings': [str(x.message) for x in w]}))\n")
    env = dict(os.environ, **{kernels.VARIANT_ENV: "avx1024"})
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["variant"] == BUILDS[0]
    assert any("FASTDIA_KERNELS=avx1024 ignored" in w for w in out["warnings"]), out
    with pytest.raises(ValueError, match="cannot run"):
        with kernels.use_variant("avx1024"):
            pass


def test_a_build_that_cannot_be_had_falls_to_the_next_one_down():
    """A compiler too old for one build's flags must cost that build only, not the kernels."""
    tried = []

    def build(variant):
        tried.append(variant)
        if variant == "avx2vnni":
            raise RuntimeError("compiling fastdia's CPU kernels (avx2vnni) failed: unrecognized -mavxvnni")
        return f"lib-{variant}"

    assert kernels._load_first(["avx2vnni", "avx2"], build) == ("lib-avx2", "avx2", None)
    assert tried == ["avx2vnni", "avx2"]
    lib, name, why = kernels._load_first(["avx2vnni"], build)
    assert lib is None and name is None and "unrecognized -mavxvnni" in why
    assert kernels._candidates(BUILDS[0]) == BUILDS
