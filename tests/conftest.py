import warnings

import pytest
import torch

# Tiny models gain nothing from threads, and a busy machine makes thread pools spin.
torch.set_num_threads(1)
warnings.filterwarnings("ignore", message=".*Dia.*DiaProcessor.*")


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
