"""The AMX kernels (csrc/amx.c) against the AVX-512 kernels.

This machine kind has no AMX, so the tile instructions run in their C emulation
(`set_amx("emulate")`): the tiling, the B-tile layouts, the gathered A tiles of grouped weights,
the row and pair tails and the split of int16 activations into bytes are all checked bit for bit.
On a CPU with AMX the same comparison (`amx_self_check`) runs the real instructions when the
kernels load, and a test below checks that it passed."""

from __future__ import annotations

import math

import pytest
import torch

from fastdia.backends.cpu import kernels
from fastdia.backends.cpu.features import cpu_features
from fastdia.quant import formats
from tests.conftest import amx_code, with_amx

pytestmark = pytest.mark.skipif(not amx_code(), reason=f"no AMX path in the kernels here (build "
                                f"{kernels.variant()}: {kernels.unavailable_reason() or 'AMX comes with AVX-512'})")


BOTH = ("int8", "bf16")


def _q8(m: int, k: int, n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    q, scale = formats.quantize_int8(torch.randn(n, k, generator=gen) / math.sqrt(k))
    x = torch.randn(m, k, generator=gen)
    x[0, : k // 2] *= 1e-3  # small and large activations: both bytes of the int16 codes matter
    return x, formats.kernel_layout(q, 32, k), scale


@pytest.mark.parametrize("m,k,n", [
    (4, 64, 32),      # the fewest rows AMX takes; one tile of 16 pairs, no tail
    (8, 96, 69),      # odd N: 35 pairs, two tiles and an AVX-512 tail with the padding row
    (9, 128, 64),     # a second block of 8 rows with one row in it
    (25, 64, 40),     # four blocks of rows: two passes over the accumulator tiles
    (64, 32, 34),     # a prefill block
    (6, 3072, 36),    # 6+ rows at K = 3072: the tail pairs take the split AVX-512 path
    (12, 4096, 70),   # grouped weights: A tiles gathered from chunk-major groups
])
def test_int8_amx_is_bitwise_avx512(m, k, n):
    x, w, scale = _q8(m, k, n, seed=m * k + n)
    want, _ = with_amx("off", lambda: kernels.q8_gemv(x, w, scale, n))
    got, products = with_amx("emulate", lambda: kernels.q8_gemv(x, w, scale, n))
    tiles, chunks, row_blocks = (n + 1) // 2 // 16, k // 32, -(-m // 8)
    assert products == tiles * chunks * row_blocks * 2  # hi and lo bytes
    assert torch.equal(got, want)


def test_int8_amx_leaves_few_rows_to_avx512():
    """One utterance (2 rows) streams its weights from DRAM either way: it stays on AVX-512."""
    x, w, scale = _q8(2, 64, 64, seed=3)
    _, products = with_amx("emulate", lambda: kernels.q8_gemv(x, w, scale, 64), BOTH)
    assert products == 0


@pytest.mark.skipif(kernels.variant() != "avx512bf16", reason="AMX's bfloat16 path is in the avx512bf16 build")
@pytest.mark.parametrize("m,k,n", [(1, 64, 32), (2, 96, 40), (17, 64, 48), (64, 32, 20)])
def test_bf16_amx_matches_avx512(m, k, n):
    gen = torch.Generator().manual_seed(m + k + n)
    w = torch.randn(n, k, generator=gen).to(torch.bfloat16)
    x = torch.randn(m, k, generator=gen)
    want, _ = with_amx("off", lambda: kernels.float_gemv(x, w), BOTH)
    got, products = with_amx("emulate", lambda: kernels.float_gemv(x, w), ("bf16",))
    assert products == (n // 16) * (k // 32) * -(-m // 16)
    exact = x.to(torch.bfloat16).double() @ w.double().T
    bound = 1e-5 * (x.to(torch.bfloat16).double().abs() @ w.double().abs().T)
    assert bool(((got.double() - exact).abs() <= bound).all())
    assert bool(((want.double() - exact).abs() <= bound).all())


def test_self_check_passes_emulated():
    assert with_amx("emulate", kernels.amx_self_check, BOTH)[0] is None


def test_amx_status_matches_the_cpu():
    """Where the CPU lists AMX, the kernels took it (the self-check passed) unless it was turned off
    or the OS withholds tile state (the status says which); elsewhere the hardware mode is refused
    rather than run into an illegal instruction."""
    flags = cpu_features().flags
    status = kernels.amx_status()
    if {"amx_tile", "amx_int8", "amx_bf16", "avx512_bf16"} <= flags:
        assert status == "on" or (status.startswith("off (") and "self-check" not in status)
    else:
        assert status == "not present"
        with pytest.raises(RuntimeError, match="refused"):
            kernels.set_amx("on")
        assert kernels.set_amx("off") == "off"



@pytest.mark.filterwarnings("ignore:the audio prompt leaves")  # a short budget keeps the emulation quick
def test_dia1_int8_prompt_and_batch_on_amx_tiles():
    """Dia-1 int8 with an audio prompt (the prefill runs the kernels on blocks of up to 64 rows) and
    two texts at once: the same greedy codes with the int8 AMX kernel (emulated) as with AVX-512.
    int8 mode keeps the encoder in bfloat16, whose AMX rounding is not vdpbf16ps's (checked to
    float32 rounding above), so the bfloat16 kernel stays on AVX-512 here."""
    from fastdia import Dia

    tts = Dia.from_pretrained("tiny-random", device="cpu", quantize="int8")
    prompt = torch.randint(0, 1024, (12, 9), generator=torch.Generator().manual_seed(0))

    def run():
        one = tts.generate_codes("[S1] Hello there.", audio_prompt=prompt, max_tokens=80, temperature=0)
        two = tts.generate_codes(["[S1] Hello there.", "[S2] Something else (laughs)."], max_tokens=40,
                                 temperature=0)
        return [one, *two]

    want, _ = with_amx("off", run)
    got, products = with_amx("emulate", run)
    assert products > 0
    assert all(a.shape == b.shape and (a == b).all() for a, b in zip(got, want))
