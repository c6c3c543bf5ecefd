"""Mimi codec: parity with transformers' MimiModel (the oracle) for decode and encode, stateful
streaming decode against one-shot, strict loading, presets and the Dia2 fixture codec.
Tiny models only, no network."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

from tests.conftest import dia2_fixtures
from fastdia.codecs.mimi.codec import Mimi, PRESETS  # noqa: E402
from fastdia.codecs.mimi.model import MimiConfig  # noqa: E402
from fastdia.errors import AudioError, CheckpointError, ModelNotFoundError  # noqa: E402

HOP = 1920
FIXTURE = dia2_fixtures() / "model" / "mimi"
TINY = dict(
    hidden_size=32,
    num_filters=4,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    intermediate_size=64,
    num_quantizers=8,
    codebook_size=2048,
    codebook_dim=16,
    vector_quantization_hidden_dimension=16,
    upsample_groups=32,
    upsampling_ratios=[8, 6, 5, 4],
    # 250 steps (the release) would need >125 frames before the window matters; 12 steps make
    # a few-second test cross it many times.
    sliding_window=12,
)


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial weights: transformers initialises codebooks to zero, layer scales to 0.01 and
    LayerNorms to identity, which would hide mistakes in the quantizer, scales and norms."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("embed_sum"):
                t.copy_(torch.randn(t.shape, generator=gen))
            elif name.endswith("cluster_usage"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith("initialized"):
                continue
            elif name.endswith("layer_scale.scale"):
                t.copy_(torch.rand(t.shape, generator=gen) * 0.5)
            elif name.endswith(".bias"):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.05)
            elif t.ndim == 1:  # LayerNorm weights
                t.copy_(1 + 0.1 * torch.randn(t.shape, generator=gen))
            else:
                t.copy_(torch.randn(t.shape, generator=gen) / math.sqrt(t[0].numel()))
    return model


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """(transformers MimiModel, its save_pretrained directory)."""
    torch.manual_seed(0)
    hf = transformers.MimiModel(transformers.MimiConfig(**TINY))
    randomize_(hf, seed=1).eval()
    directory = tmp_path_factory.mktemp("mimi") / "tiny"
    hf.save_pretrained(directory)
    return hf, directory


@pytest.fixture(scope="module")
def ours(oracle):
    return Mimi.from_pretrained(oracle[1], device="cpu", dtype="float32")


def random_codes(frames: int, n_q: int = 8, seed: int = 0, batch: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (frames, n_q) if batch is None else (batch, frames, n_q)
    return rng.integers(0, 2048, shape, dtype=np.int64)


def hf_decode(hf, codes: np.ndarray) -> np.ndarray:
    """codes [T, n_q] or [B, T, n_q] -> transformers' audio as float64 [.., N]."""
    batch = codes[None] if codes.ndim == 2 else codes
    with torch.no_grad():
        audio = hf.decode(torch.from_numpy(batch).transpose(1, 2), return_dict=True).audio_values
    out = audio[:, 0].double().numpy()
    return out[0] if codes.ndim == 2 else out


# ------------------------------------------------------------------------------------------
# Parity with transformers
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [1, 2, 7, 40])
def test_decode_matches_transformers(oracle, ours, frames):
    hf, _ = oracle
    codes = random_codes(frames, seed=frames)
    ref = hf_decode(hf, codes)
    got = ours.decode(codes)
    assert got.dtype == np.float32 and got.shape == (frames * HOP,) == ref.shape
    assert np.abs(got - ref).max() < 1e-4, np.abs(got - ref).max()
    assert np.abs(ref).max() > 0.1  # not a trivially silent model


def test_decode_batch_matches_transformers(oracle, ours):
    hf, _ = oracle
    codes = random_codes(9, seed=3, batch=3)
    got = ours.decode(codes)
    assert got.shape == (3, 9 * HOP)
    assert np.abs(got - hf_decode(hf, codes)).max() < 1e-4


@pytest.mark.parametrize("samples", [HOP * 3, HOP * 3 + 7, 5000, 100, 24000])
def test_encode_matches_transformers(oracle, ours, samples):
    hf, _ = oracle
    wave = (np.random.default_rng(samples).standard_normal(samples) * 0.3).astype(np.float32)
    with torch.no_grad():
        ref = hf.encode(torch.from_numpy(wave)[None, None], return_dict=True).audio_codes[0].T.numpy()
    # transformers pads each strided conv's last window with zeros: ceil(N / 1920) frames
    # (24000 samples -> 13, spec 7).
    assert ref.shape == (math.ceil(samples / HOP), 8)
    got = ours.encode(wave, 24000)
    assert got.dtype == np.int64 and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)


def test_encode_resamples_and_mixes_to_mono(ours):
    rng = np.random.default_rng(5)
    stereo = (rng.standard_normal((16000, 2)) * 0.2).astype(np.float32)
    codes = ours.encode(stereo, 16000)
    assert codes.shape == (math.ceil(24000 / HOP), 8)
    assert codes.min() >= 0 and codes.max() < 2048
    with pytest.raises(AudioError):
        ours.encode(stereo.astype(np.int16), 16000)
    with pytest.raises(AudioError):
        ours.encode(stereo, 0)


def test_round_trip_close_to_transformers_forward(oracle, ours):
    hf, _ = oracle
    wave = (np.random.default_rng(8).standard_normal(HOP * 4) * 0.3).astype(np.float32)
    with torch.no_grad():
        out = hf(torch.from_numpy(wave)[None, None], return_dict=True)
    got = ours.decode(ours.encode(wave, 24000))
    assert np.abs(got - out.audio_values[0, 0].numpy()).max() < 1e-4


# ------------------------------------------------------------------------------------------
# Streaming
# ------------------------------------------------------------------------------------------


def _chunkings(total: int) -> dict[str, list[int]]:
    rng = np.random.default_rng(11)
    random_split, left = [], total
    while left:
        n = int(min(left, rng.integers(1, 6)))
        random_split.append(n)
        left -= n
    return {
        "one-by-one": [1] * total,
        "pairs": [2] * (total // 2) + [total % 2] * (total % 2),
        "uneven": [3, 1, 5, 2, 7, total - 18],
        "random": random_split,
        "all-at-once": [total],
        "with-empty": [0, 4, 0, total - 4],
    }


@pytest.mark.parametrize("name", list(_chunkings(30)))
def test_stream_equals_one_shot(ours, name):
    codes = random_codes(30, seed=21)  # 60 transformer steps: the 12-step window slides a lot
    whole = ours.decode(codes)
    stream = ours.stream()
    pieces, start = [], 0
    for n in _chunkings(30)[name]:
        piece = stream.push(codes[start:start + n])
        assert piece.shape == (n * HOP,) and piece.dtype == np.float32
        pieces.append(piece)
        start += n
    assert stream.finish().size == 0
    joined = np.concatenate(pieces)
    assert joined.shape == whole.shape
    assert np.abs(joined - whole).max() < 1e-4, np.abs(joined - whole).max()


def test_stream_matches_transformers_past_the_window(oracle, ours):
    hf, _ = oracle
    codes = random_codes(25, seed=4)
    stream = ours.stream()
    joined = np.concatenate([stream.push(codes[i:i + 1]) for i in range(25)])
    assert np.abs(joined - hf_decode(hf, codes)).max() < 1e-4


def test_stream_rejects_bad_input(ours):
    stream = ours.stream()
    with pytest.raises(AudioError):
        stream.push(np.zeros((2, 7), np.int64))
    with pytest.raises(AudioError):
        stream.push(np.full((2, 8), 2048))
    stream.finish()
    with pytest.raises(AudioError):
        stream.push(np.zeros((1, 8), np.int64))


# ------------------------------------------------------------------------------------------
# Strict loading
# ------------------------------------------------------------------------------------------


def _copy_with(oracle_dir: Path, dest: Path, edit) -> Path:
    dest.mkdir()
    (dest / "config.json").write_text((oracle_dir / "config.json").read_text())
    state = load_file(str(oracle_dir / "model.safetensors"))
    edit(state)
    save_file(state, str(dest / "model.safetensors"))
    return dest


def test_checkpoint_keys_equal_transformers(oracle, ours):
    saved = load_file(str(oracle[1] / "model.safetensors"))
    assert set(saved) == set(ours.model.state_dict())


def test_strict_loading_names_the_tensor(oracle, tmp_path):
    src = oracle[1]
    key = "decoder_transformer.layers.1.mlp.fc1.weight"
    d = _copy_with(src, tmp_path / "missing", lambda s: s.pop(key))
    with pytest.raises(CheckpointError, match=r"missing tensors: decoder_transformer\.layers\.1\.mlp\.fc1\.weight"):
        Mimi.from_pretrained(d, device="cpu")
    d = _copy_with(src, tmp_path / "extra", lambda s: s.__setitem__("decoder.layers.99.conv.weight", torch.zeros(1)))
    with pytest.raises(CheckpointError, match=r"unexpected tensors: decoder\.layers\.99\.conv\.weight"):
        Mimi.from_pretrained(d, device="cpu")
    d = _copy_with(src, tmp_path / "shape", lambda s: s.__setitem__("upsample.conv.weight", torch.zeros(32, 2, 4)))
    with pytest.raises(CheckpointError, match=r"upsample\.conv\.weight has shape \[32, 2, 4\], expected \[32, 1, 4\]"):
        Mimi.from_pretrained(d, device="cpu")


def test_bad_directories(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        Mimi.from_pretrained(tmp_path / "empty", device="cpu")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps({"model_type": "mimi"}))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Mimi.from_pretrained(tmp_path / "noweights", device="cpu")
    with pytest.raises(ModelNotFoundError):
        Mimi.from_pretrained(tmp_path / "does-not-exist", device="cpu")


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    import huggingface_hub

    from fastdia import hub

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(hub, "_check_reachable", offline)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelNotFoundError, match="kyutai/mimi"):
        Mimi.from_pretrained("kyutai/mimi", device="cpu")


# ------------------------------------------------------------------------------------------
# Config, presets, fixture
# ------------------------------------------------------------------------------------------


def test_config_defaults_are_the_release():
    c = MimiConfig()
    assert (c.sampling_rate, c.frame_rate, c.hop_length, c.latent_stride) == (24000, 12.5, 1920, 2)
    assert (c.num_quantizers, c.codebook_size, c.codebook_dim, c.hidden_size, c.head_dim) == (32, 2048, 256, 512, 64)
    hf = transformers.MimiConfig()
    assert c.frame_rate == hf.frame_rate and c.sliding_window == hf.sliding_window
    # An older config.json with top-level rope_theta and frame_rate parses too.
    old = MimiConfig.from_dict({"model_type": "mimi", "rope_theta": 5000.0, "frame_rate": 12.5})
    assert old.rope_theta == 5000.0 and old.frame_rate == 12.5
    with pytest.raises(CheckpointError):
        MimiConfig.from_dict({"model_type": "dac"})


def test_tiny_random_preset():
    a = Mimi.from_pretrained("mimi-tiny-random", device="cpu")
    b = Mimi.from_pretrained("mimi-tiny-random", device="cpu")
    assert (a.sample_rate, a.frame_rate, a.hop_length, a.n_codebooks) == (24000, 12.5, 1920, 8)
    assert a.codec_id == b.codec_id and a.codec_id.startswith("mimi-")
    codes = random_codes(6, seed=2)
    wave = a.decode(codes)
    assert wave.shape == (6 * HOP,) and np.isfinite(wave).all() and 0.001 < np.abs(wave).max() < 5
    np.testing.assert_array_equal(wave, b.decode(codes))
    assert a.encode(wave, 24000).shape == (6, 8)
    assert set(PRESETS) == {"mimi-tiny-random", "mimi-random"}


def test_codec_id_tracks_codebooks(oracle, ours):
    assert ours.codec_id != Mimi.from_pretrained("mimi-tiny-random", device="cpu").codec_id
    assert ours.codec_id == Mimi.from_pretrained(oracle[1], device="cpu", dtype="bfloat16").codec_id


def test_decode_rejects_bad_codes(ours):
    with pytest.raises(AudioError):
        ours.decode(np.zeros((3, 5), np.int64))
    with pytest.raises(AudioError):
        ours.decode(np.full((3, 8), -1))
    with pytest.raises(AudioError):
        ours.decode(np.zeros((3, 8), np.float32))
    assert ours.decode(np.zeros((0, 8), np.int64)).shape == (0,)


@pytest.mark.skipif(not FIXTURE.is_dir(), reason="Dia2 fixture codec not present")
def test_fixture_codec_matches_transformers():
    hf = transformers.MimiModel.from_pretrained(FIXTURE).eval()
    ours = Mimi.from_pretrained(FIXTURE, device="cpu", dtype="float32")
    assert ours.n_codebooks == hf.config.num_quantizers
    codes = random_codes(20, n_q=ours.n_codebooks, seed=9)
    ref = hf_decode(hf, codes)
    got = ours.decode(codes)
    assert got.shape == ref.shape == (20 * HOP,)
    assert np.abs(got - ref).max() < 1e-4, np.abs(got - ref).max()
    stream = ours.stream()
    joined = np.concatenate([stream.push(codes[i:i + 3]) for i in range(0, 20, 3)])
    assert np.abs(joined - got).max() < 1e-4
