import os
import warnings
from pathlib import Path

import pytest
import torch

# Tiny models gain nothing from threads, and a busy machine makes thread pools spin.
torch.set_num_threads(1)
warnings.filterwarnings("ignore", message=".*Dia.*DiaProcessor.*")
# Tests never download: a Dia2 prefix given without word timings must not fetch Whisper large-v3
# when the ASR extra is installed (tests/test_asr.py builds its own tiny Whisper).
os.environ.setdefault("FASTDIA_ASR_MODEL", str(Path(__file__).parent / "no-such-asr-model"))


@pytest.fixture(scope="session")
def hf_models():
    """Cache of tiny transformers Dia models by (shape, seed)."""
    from tests.oracle import hf_model

    cache = {}

    def get(shape: str, seed: int = 0):
        if (shape, seed) not in cache:
            cache[shape, seed] = hf_model(shape, seed)
        return cache[shape, seed]

    return get


@pytest.fixture(scope="session")
def tts():
    """The tiny-random preset on CPU, shared by the streaming, long-script and voice tests."""
    from fastdia import Dia

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Dia.from_pretrained("tiny-random", device="cpu")


def dia2_fixtures() -> Path:
    """The Dia2 golden fixtures: shared/fixtures/dia2 beside this checkout (where CI puts them),
    or $FASTDIA_DIA2_FIXTURES. Under CI they must exist; elsewhere their tests skip."""
    env = os.environ.get("FASTDIA_DIA2_FIXTURES")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "dia2"
    if not path.exists() and os.environ.get("CI"):
        raise RuntimeError(f"the Dia2 fixtures are missing at {path}; CI needs them (shared/ beside the checkout)")
    return path


def amx_code() -> bool:
    """The loaded kernel build carries the AMX path (the AVX-512 builds; the AVX2 ones do not)."""
    from fastdia.backends.cpu import kernels

    return kernels.available() and kernels.variant().startswith("avx512")


def with_amx(mode: str, fn, kinds=("int8",)):
    """`fn()` with the kernels' AMX path in `mode` ("off": AVX-512 only; "emulate": the tile
    instructions emulated in C, csrc/amx.c) for `kinds`, then the mode restored. Returns fn's result
    and the number of emulated tile products it ran (so a test knows the AMX path was taken)."""
    from fastdia.backends.cpu import kernels

    lib = kernels._library()
    before, ops = kernels.set_amx(mode, kinds=kinds), lib.fd_amx_emulated()
    try:
        out = fn()
    finally:
        kernels.set_amx(before)
    return out, lib.fd_amx_emulated() - ops
