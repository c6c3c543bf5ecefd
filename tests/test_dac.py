"""DAC codec: parity with transformers' DacModel (the oracle) in every checkpoint layout,
batching, input handling, strict loading and the tiny-random preset."""

from __future__ import annotations

import copy
import fractions
import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

from fastdia.codecs import DAC, DACConfig  # noqa: E402
from fastdia.codecs.dac.codec import PRESETS, preset  # noqa: E402
from fastdia.codecs.dac.weights import save_descript_layout, save_transformers_layout
from fastdia.errors import AudioError, CheckpointError, ModelNotFoundError  # noqa: E402

SR = 44100
TINY_HF = dict(
    encoder_hidden_size=4,
    downsampling_ratios=[2, 4, 8, 8],
    decoder_hidden_size=16,
    n_codebooks=9,
    codebook_size=1024,
    codebook_dim=8,
    sampling_rate=SR,
)


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give a DacModel non-trivial weights: transformers initialises alphas to 1, biases to 0
    and conv weights tiny, which would hide mistakes in snake, biases or scaling."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("alpha"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
            elif p.ndim == 3:  # conv weights, scaled so activations stay O(1)
                fan_in = p.shape[0] * 2 if "conv_t" in name else p.shape[1] * p.shape[2]
                w = torch.randn(p.shape, generator=gen) / fan_in**0.5
                if "res_unit" in name and "conv2" in name:
                    w *= 0.1
                if "out_proj" in name:
                    w /= 3.0
                if name == "decoder.conv2.weight":
                    w *= 0.1
                p.copy_(w)
            else:  # codebooks
                p.copy_(torch.randn(p.shape, generator=gen))
    return model.eval()


def hf_decode(model, codes_t9: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        codes = torch.from_numpy(codes_t9).T[None]  # (1, 9, T)
        return model.decode(audio_codes=codes).audio_values[0].numpy()


def hf_encode(model, wave: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.encode(torch.from_numpy(wave)[None, None], n_quantizers=9).audio_codes[0].T.numpy()


def test_wave(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    wave = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * rng.standard_normal(n)
    return wave.astype(np.float32)


test_wave.__test__ = False  # a helper, not a test


def perturb_descript_v(path, seed: int = 0) -> None:
    """Rescale every weight_v row by a random positive factor (weight norm is invariant to it),
    so folding has to divide by the right norm: per *input* channel for transposed convs."""
    gen = torch.Generator().manual_seed(seed)
    obj = torch.load(path, weights_only=True)
    for k, v in obj["state_dict"].items():
        if k.endswith("weight_v"):
            scale = torch.rand((v.shape[0],) + (1,) * (v.ndim - 1), generator=gen) * 3 + 0.2
            obj["state_dict"][k] = v * scale
    torch.save(obj, path)


# ------------------------------------------------------------------------------------------
# Fixtures: one tiny transformers model, saved in every layout we accept
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_hf():
    torch.manual_seed(0)
    return randomize_(transformers.DacModel(transformers.DacConfig(**TINY_HF)), seed=1)


@pytest.fixture(scope="module")
def tiny_config(tiny_hf) -> DACConfig:
    return DACConfig.from_dict(tiny_hf.config.to_dict())


@pytest.fixture(scope="module")
def layouts(tiny_hf, tiny_config, tmp_path_factory):
    """name -> path accepted by DAC.from_pretrained."""
    root = tmp_path_factory.mktemp("dac_layouts")
    out = {}
    tiny_hf.save_pretrained(root / "hf")  # transformers' own writer, folded weights
    out["transformers"] = root / "hf"
    out["transformers-weight_g"] = save_transformers_layout(
        tiny_hf.state_dict(), tiny_config, root / "legacy", weight_norm="legacy"
    )
    # transformers' own weight norm (torch parametrizations: ...parametrizations.weight.original0/1)
    wn = copy.deepcopy(tiny_hf)
    wn.apply_weight_norm()
    (root / "param").mkdir()
    state = {k: v.contiguous() for k, v in wn.state_dict().items()}
    assert any(".parametrizations.weight.original1" in k for k in state)
    save_file(state, str(root / "param" / "model.safetensors"))
    (root / "param" / "config.json").write_text((root / "hf" / "config.json").read_text())
    out["transformers-parametrizations"] = root / "param"
    pth = save_descript_layout(tiny_hf.state_dict(), tiny_config, root / "descript" / "weights.pth")
    perturb_descript_v(pth)
    out["descript-file"] = pth
    out["descript-dir"] = pth.parent
    return out


@pytest.fixture(scope="module")
def tiny_dac(layouts) -> DAC:
    return DAC.from_pretrained(layouts["transformers"], device="cpu")


# ------------------------------------------------------------------------------------------
# Parity with transformers
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout",
    ["transformers", "transformers-weight_g", "transformers-parametrizations", "descript-file", "descript-dir"],
)
def test_decode_and_encode_match_transformers(layout, layouts, tiny_hf):
    dac = DAC.from_pretrained(layouts[layout], device="cpu", dtype="float32")
    assert (dac.sample_rate, dac.hop_length) == (44100, 512)
    assert dac.dtype == torch.float32 and dac.device.type == "cpu"
    codes = np.random.default_rng(0).integers(0, 1024, size=(23, 9))
    ours = dac.decode(codes)
    ref = hf_decode(tiny_hf, codes)
    assert ours.dtype == np.float32 and ours.shape == (23 * 512,)
    assert ref.std() > 0.05  # the random model produces a real signal, not ~0
    assert np.abs(ours - ref).max() < 1e-4

    wave = test_wave(40 * 512)
    np.testing.assert_array_equal(dac.encode(wave, SR), hf_encode(tiny_hf, wave))


def test_encode_pads_to_hop(tiny_dac, tiny_hf):
    wave = test_wave(10 * 512 + 100, seed=3)
    codes = tiny_dac.encode(wave, SR)
    assert codes.shape == (11, 9) and codes.dtype == np.int64
    padded = np.concatenate([wave, np.zeros(512 - 100, np.float32)])
    np.testing.assert_array_equal(codes, hf_encode(tiny_hf, padded))


def test_saved_transformers_layout_loads_in_transformers(tiny_hf, tiny_dac, tmp_path):
    save_transformers_layout(tiny_dac, tiny_dac.config, tmp_path / "ours")
    reloaded = transformers.DacModel.from_pretrained(tmp_path / "ours").eval()
    codes = np.random.default_rng(5).integers(0, 1024, size=(6, 9))
    np.testing.assert_allclose(hf_decode(reloaded, codes), hf_decode(tiny_hf, codes), atol=1e-6)


def test_full_size_44khz_config(tmp_path):
    """The released architecture (76.6 M parameters) with random weights, both layouts."""
    torch.manual_seed(0)
    hf = randomize_(transformers.DacModel(transformers.DacConfig(sampling_rate=SR)), seed=2)
    hf.save_pretrained(tmp_path / "hf")
    config = DACConfig.from_dict(json.loads((tmp_path / "hf" / "config.json").read_text()))
    assert config == preset("dac-44khz")
    pth = save_descript_layout(hf.state_dict(), config, tmp_path / "weights.pth")

    # Tensor counts and a few names/shapes from spec 5.7.
    hf_state = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert len(hf_state) == 223
    orig = torch.load(pth, weights_only=True)["state_dict"]
    assert len(orig) == 301
    assert sum(v.numel() for v in hf_state.values()) == 76_620_777
    assert orig["decoder.model.1.block.1.weight_v"].shape == (1536, 768, 16)
    assert orig["decoder.model.1.block.1.weight_g"].shape == (1536, 1, 1)  # per input channel
    assert orig["encoder.block.4.block.4.weight_v"].shape == (1024, 512, 16)
    assert orig["encoder.block.6.weight_v"].shape == (1024, 1024, 3)
    assert orig["decoder.model.6.weight_v"].shape == (1, 96, 7)
    assert orig["encoder.block.5.alpha"].shape == (1, 1024, 1)
    del orig, hf_state
    perturb_descript_v(pth, seed=1)

    codes = np.random.default_rng(1).integers(0, 1024, size=(8, 9))
    ref = hf_decode(hf, codes)
    wave = test_wave(4096, seed=1)
    ref_codes = hf_encode(hf, wave)
    for source in (tmp_path / "hf", pth):
        dac = DAC.from_pretrained(source, device="cpu")
        ours = dac.decode(codes)
        assert ours.shape == (8 * 512,)
        assert np.abs(ours - ref).max() < 1e-4, source
        np.testing.assert_array_equal(dac.encode(wave, SR), ref_codes)
        del dac


# ------------------------------------------------------------------------------------------
# Batching
# ------------------------------------------------------------------------------------------


def test_batched_decode_equals_one_at_a_time(tiny_dac):
    rng = np.random.default_rng(7)
    items = [rng.integers(0, 1024, size=(t, 9)) for t in (5, 17, 1, 12, 17)]
    batched = tiny_dac.decode(items)
    assert isinstance(batched, list) and len(batched) == len(items)
    for codes, wave in zip(items, batched):
        alone = tiny_dac.decode(codes)
        assert wave.shape == (codes.shape[0] * 512,)
        assert np.abs(wave - alone).max() < 1e-5
    # An empty item gives empty audio without disturbing the others; a 3-D array is a batch.
    assert tiny_dac.decode([np.zeros((0, 9), np.int64), items[2]])[0].shape == (0,)
    stacked = tiny_dac.decode(np.stack([items[1], items[4]]))
    assert stacked.shape == (2, 17 * 512)
    assert np.abs(stacked[0] - batched[1]).max() < 1e-5
    assert tiny_dac.decode([]) == []


def test_batched_encode_equals_one_at_a_time(tiny_dac):
    waves = [test_wave(n, seed=i) for i, n in enumerate((3000, 20 * 512, 512, 9000))]
    batched = tiny_dac.encode(waves, SR)
    for wave, codes in zip(waves, batched):
        np.testing.assert_array_equal(codes, tiny_dac.encode(wave, SR))
        assert codes.shape == (-(-len(wave) // 512), 9)


def test_decode_tensor_lengths(tiny_dac):
    codes = torch.randint(0, 1024, (2, 9, 10), generator=torch.Generator().manual_seed(0))
    full = tiny_dac.decode_tensor(codes)
    assert full.shape == (2, 1, 10 * 512)
    masked = tiny_dac.decode_tensor(codes, lengths=torch.tensor([10, 4]))
    alone = tiny_dac.decode_tensor(codes[1:, :, :4])
    assert torch.allclose(masked[0], full[0], atol=1e-6)
    assert torch.allclose(masked[1, :, : 4 * 512], alone[0], atol=1e-5)
    assert tiny_dac.encode_tensor(torch.zeros(1, 1, 1024)).shape == (1, 9, 2)


# ------------------------------------------------------------------------------------------
# Input handling
# ------------------------------------------------------------------------------------------


def test_out_of_range_codes_become_zero(tiny_dac):
    codes = np.random.default_rng(2).integers(0, 1024, size=(6, 9))
    bad = codes.copy()
    bad[0, 0], bad[3, 4], bad[5, 8] = -1, 1024, 99999
    fixed = codes.copy()
    fixed[0, 0] = fixed[3, 4] = fixed[5, 8] = 0
    np.testing.assert_array_equal(tiny_dac.decode(bad), tiny_dac.decode(fixed))
    # torch input, other int dtypes
    np.testing.assert_array_equal(tiny_dac.decode(torch.from_numpy(fixed).int()), tiny_dac.decode(fixed))
    as_tensor = torch.from_numpy(bad).T[None]  # (1, 9, T)
    np.testing.assert_array_equal(tiny_dac.decode_tensor(as_tensor)[0, 0].numpy(), tiny_dac.decode(fixed))


@pytest.mark.parametrize(
    "codes, message",
    [
        (np.zeros((4, 8), np.int64), r"\[T, 9\]"),
        (np.zeros(9, np.int64), r"\[T, 9\]"),
        (np.zeros((4, 9), np.float32), "integer"),
        ([np.zeros((4, 9), np.int64), np.zeros((4, 3), np.int64)], r"codes\[1\]"),
    ],
)
def test_decode_rejects_bad_codes(tiny_dac, codes, message):
    with pytest.raises(AudioError, match=message):
        tiny_dac.decode(codes)


def test_encode_downmixes_and_resamples(tiny_dac):
    from fastdia.audio import resample

    left, right = test_wave(5000, seed=1), test_wave(5000, seed=2)
    stereo = np.stack([left, right], axis=1)  # soundfile's [N, C]
    np.testing.assert_array_equal(tiny_dac.encode(stereo, SR), tiny_dac.encode((left + right) / 2, SR))
    np.testing.assert_array_equal(tiny_dac.encode(torch.from_numpy(stereo), SR), tiny_dac.encode(stereo, SR))

    wave16 = test_wave(16000, seed=4)
    codes = tiny_dac.encode(wave16, 16000)
    assert codes.shape == (87, 9)  # 1 s -> ceil(44100 / 512)
    np.testing.assert_array_equal(codes, tiny_dac.encode(resample(wave16, 16000, SR), SR))


@pytest.mark.parametrize(
    "wave, sr, message",
    [
        (np.zeros((2, 5000), np.float32), SR, "transpose"),
        (np.zeros(0, np.float32), SR, "empty"),
        (np.zeros((3, 3, 3), np.float32), SR, r"\[N\] or \[N, channels\]"),
        (np.zeros(100, np.int16), SR, "float"),
        (np.full(100, np.nan, np.float32), SR, "NaN"),
        (np.zeros(100, np.float32), 0, "sample_rate"),
    ],
)
def test_encode_rejects_bad_waves(tiny_dac, wave, sr, message):
    with pytest.raises(AudioError, match=message):
        tiny_dac.encode(wave, sr)


def test_bfloat16_runs(layouts, tiny_dac):
    dac = DAC.from_pretrained(layouts["transformers"], device="cpu", dtype="bfloat16")
    assert dac.dtype == torch.bfloat16
    codes = np.random.default_rng(3).integers(0, 1024, size=(4, 9))
    wave = dac.decode(codes)
    assert wave.dtype == np.float32 and wave.shape == (2048,)
    assert np.abs(wave - tiny_dac.decode(codes)).max() < 0.2  # bf16 is coarse but sane


# ------------------------------------------------------------------------------------------
# Strict loading
# ------------------------------------------------------------------------------------------


def _edit_safetensors(src, dst, edit):
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    state = load_file(str(src / "model.safetensors"))
    edit(state)
    save_file(state, str(dst / "model.safetensors"))
    return dst


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("decoder.block.1.res_unit2.conv1.bias"), r"missing tensors: decoder\.block\.1\.res_unit2\.conv1\.bias"),
        (lambda s: s.__setitem__("decoder.extra.weight", torch.zeros(3)), r"unexpected tensors: decoder\.extra\.weight"),
        (
            lambda s: s.__setitem__("quantizer.quantizers.3.codebook.weight", torch.zeros(1024, 4)),
            r"quantizer\.quantizers\.3\.codebook\.weight has shape \[1024, 4\], expected \[1024, 8\]",
        ),
    ],
)
def test_strict_loading_transformers_layout(layouts, tmp_path, edit, message):
    bad = _edit_safetensors(layouts["transformers"], tmp_path / "bad", edit)
    with pytest.raises(CheckpointError, match=message):
        DAC.from_pretrained(bad, device="cpu")


def test_strict_loading_descript_layout(layouts, tmp_path):
    obj = torch.load(layouts["descript-file"], weights_only=True)
    missing = copy.deepcopy(obj)
    del missing["state_dict"]["decoder.model.2.block.1.bias"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"decoder\.block\.1\.conv_t1\.bias \(descript: decoder\.model\.2\.block\.1\.bias\)"):
        DAC.from_pretrained(tmp_path / "missing.pth", device="cpu")

    orphan = copy.deepcopy(obj)
    del orphan["state_dict"]["encoder.block.1.block.0.block.1.weight_g"]
    torch.save(orphan, tmp_path / "orphan.pth")
    with pytest.raises(CheckpointError, match=r"encoder\.block\.1\.block\.0\.block\.1\.weight_g is missing"):
        DAC.from_pretrained(tmp_path / "orphan.pth", device="cpu")

    shape = copy.deepcopy(obj)
    shape["state_dict"]["encoder.block.5.alpha"] = torch.ones(1, 7, 1)
    torch.save(shape, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"encoder\.snake1\.alpha \(descript: encoder\.block\.5\.alpha\) has shape \[1, 7, 1\]"):
        DAC.from_pretrained(tmp_path / "shape.pth", device="cpu")

    extra = copy.deepcopy(obj)
    extra["state_dict"]["decoder.model.9.alpha"] = torch.ones(1, 2, 1)
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected tensors: decoder\.model\.9\.alpha"):
        DAC.from_pretrained(tmp_path / "extra.pth", device="cpu")


def test_unsafe_or_broken_files(layouts, tmp_path):
    obj = torch.load(layouts["descript-file"], weights_only=True)
    obj["metadata"]["extra"] = fractions.Fraction(1, 3)  # not allowed by weights_only unpickling
    torch.save(obj, tmp_path / "unsafe.pth")
    with pytest.raises(CheckpointError, match="weights_only=False"):
        DAC.from_pretrained(tmp_path / "unsafe.pth", device="cpu")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        DAC.from_pretrained(tmp_path / "junk.pth", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no DAC weights"):
        DAC.from_pretrained(tmp_path / "empty", device="cpu")
    with pytest.raises(ModelNotFoundError):
        DAC.from_pretrained(tmp_path / "does-not-exist", device="cpu")


# ------------------------------------------------------------------------------------------
# Config and presets
# ------------------------------------------------------------------------------------------


def test_config_parsing():
    full = preset("dac-44khz")
    assert full.hop_length == 512 and full.latent_dim == 1024 and full.sample_rate == 44100
    hf = DACConfig.from_dict(transformers.DacConfig(sampling_rate=SR).to_dict())
    assert hf == full
    descript = DACConfig.from_dict(
        {"encoder_dim": 64, "encoder_rates": [2, 4, 8, 8], "latent_dim": None, "decoder_dim": 1536,
         "decoder_rates": [8, 8, 4, 2], "n_codebooks": 9, "codebook_size": 1024, "codebook_dim": 8,
         "quantizer_dropout": 0.5, "sample_rate": 44100}
    )
    assert descript == full
    assert DACConfig.from_dict(full.to_transformers_dict()) == full
    assert DACConfig.from_dict(full.to_descript_kwargs()) == full
    with pytest.raises(CheckpointError, match="not a DAC config"):
        DACConfig.from_dict({"model_type": "dia"})
    with pytest.raises(CheckpointError, match="tiny-random"):
        preset("nope")


def test_tiny_random_preset():
    assert set(PRESETS) >= {"dac-44khz", "tiny-random"}
    a = DAC.from_pretrained("tiny-random", device="cpu")
    torch.manual_seed(12345)  # the global RNG must not matter
    b = DAC.from_pretrained("tiny-random", device="cpu")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    n_bytes = sum(v.numel() * 4 for v in sa.values())
    assert 100_000 < n_bytes < 1_000_000  # a few hundred KB
    assert (a.sample_rate, a.hop_length, a.config.n_codebooks, a.config.codebook_size) == (44100, 512, 9, 1024)

    codes = a.encode(test_wave(SR), SR)  # 1 s
    assert codes.shape == (87, 9) and codes.min() >= 0 and codes.max() < 1024
    wave = a.decode(codes)
    assert wave.shape == (87 * 512,) and np.isfinite(wave).all() and 0.01 < wave.std() < 1
    np.testing.assert_array_equal(wave, b.decode(codes))


def test_chunked_decode_equals_one_shot():
    """Long inputs decode in overlapping windows (bounded memory) with the same result."""
    dac = DAC.from_pretrained("tiny-random", device="cpu")
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 1024, (2, 9, 300), generator=g)
    lengths = torch.tensor([300, 251])
    whole = dac.decode_tensor(codes, lengths)
    chunked = dac.decode_chunked(codes, lengths, chunk=64)
    torch.testing.assert_close(chunked[0], whole[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked[1, :, : 251 * 512], whole[1, :, : 251 * 512], atol=1e-5, rtol=0)
    # The numpy path chunks by itself past CHUNK_FRAMES.
    long_codes = torch.randint(0, 1024, (DAC.CHUNK_FRAMES + 100, 9), generator=g).numpy()
    wave = dac.decode(long_codes)
    ref = dac.decode_tensor(torch.from_numpy(long_codes).T[None])[0, 0].numpy()
    assert wave.shape == ref.shape == ((DAC.CHUNK_FRAMES + 100) * 512,)
    np.testing.assert_allclose(wave, ref, atol=1e-5)
