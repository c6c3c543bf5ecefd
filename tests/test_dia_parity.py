"""fastdia's Dia-1 against transformers' DiaForConditionalGeneration on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fastdia import Dia
from fastdia.nn.cache import KVCache
from tests.oracle import BOS, EOS, SHAPES, hf_greedy, save, save_nested, text_inputs

LAYOUTS = ["transformers", "nari-safetensors", "nari-pth"]
TEXTS = ["[S1] Hello there, how are you? [S2] Fine (laughs).", "[S1] Hi.", "[S2] Short one. [S1] Yes!"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, hf_models):
    """Load each (shape, layout) checkpoint once."""
    root = tmp_path_factory.mktemp("dia")
    loaded = {}

    def get(shape: str, layout: str = "transformers", seed: int = 0) -> Dia:
        key = (shape, layout, seed)
        if key not in loaded:
            path = save(hf_models(shape, seed), root / f"{shape}-{layout}-{seed}", layout)
            loaded[key] = Dia.from_pretrained(path, device="cpu")
        return loaded[key]

    return get


def teacher_forced(tts: Dia, tokens, mask, dec):
    """Our logits `(B, T, C, V)` for full decoder inputs, cond and uncond text."""
    model, b, t = tts.model, dec.shape[0], dec.shape[1]
    out = []
    for text in (tokens, torch.zeros_like(tokens)):
        with torch.no_grad():
            enc = model.encoder(text, mask.bool())
            cross = model.decoder.cross_state(enc, mask.bool())
            cache = KVCache(tts.config, b, t, torch.device("cpu"), torch.float32)
            out.append(model.decoder(dec, torch.arange(t).expand(b, t), cache, cross))
    return out


def hf_logits(model, tokens, mask, dec):
    b, t = dec.shape[:2]
    out = []
    for text in (tokens, torch.zeros_like(tokens)):
        with torch.no_grad():
            logits = model(input_ids=text, attention_mask=mask, decoder_input_ids=dec).logits
        out.append(logits.view(b, 9, t, -1).permute(0, 2, 1, 3))
    return out


def random_decoder_input(b: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dec = torch.randint(0, 1024, (b, t, 9), generator=g)
    dec[:, 0] = BOS
    return dec


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_teacher_forced_logits_match(shape, layout, checkpoints, hf_models):
    tts = checkpoints(shape, layout)
    assert tts.layout == ("transformers" if layout == "transformers" else "nari")
    tokens, mask = text_inputs(TEXTS)  # different lengths: padding and masks matter
    dec = random_decoder_input(len(TEXTS), 20)
    ours = teacher_forced(tts, tokens, mask, dec)
    ref = hf_logits(hf_models(shape), tokens, mask, dec)
    for o, r in zip(ours, ref):  # cond, then uncond
        assert o.shape == r.shape
        torch.testing.assert_close(o, r, rtol=1e-5, atol=2e-5)


def test_incremental_decode_equals_full_forward(checkpoints):
    """One position at a time through the static cache == one causal pass."""
    tts = checkpoints("gqa2-2layers")
    tokens, mask = text_inputs(TEXTS[:2])
    dec = random_decoder_input(2, 12, seed=3)
    full = teacher_forced(tts, tokens, mask, dec)[0]
    model = tts.model
    with torch.no_grad():
        cross = model.decoder.cross_state(model.encoder(tokens, mask.bool()), mask.bool())
        cache = KVCache(tts.config, 2, 12, torch.device("cpu"), torch.float32)
        steps = [model.decoder(dec[:, i:i + 1], torch.full((2, 1), i), cache, cross, kv_len=i + 1) for i in range(12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_greedy_single_matches_transformers(shape, checkpoints, hf_models):
    tts = checkpoints(shape)
    text = TEXTS[0]
    ref = hf_greedy(hf_models(shape), [text], max_new_tokens=60)[0]
    ours = tts.generate_codes(text, temperature=0, max_tokens=60)
    np.testing.assert_array_equal(ours, ref.numpy())
    assert ours.dtype == np.int64 and ours.shape[1] == 9


@pytest.mark.parametrize("shape", ["mha-1layer", "gqa4-3layers"])
def test_greedy_batch_matches_transformers(shape, checkpoints, hf_models):
    tts = checkpoints(shape)
    ref = hf_greedy(hf_models(shape), TEXTS, max_new_tokens=48)
    ours = tts.generate_codes(TEXTS, temperature=0, max_tokens=48)
    assert isinstance(ours, list) and len(ours) == len(TEXTS)
    for o, r in zip(ours, ref):
        np.testing.assert_array_equal(o, r.numpy())


def test_greedy_audio_prompt_matches_transformers(checkpoints, hf_models):
    shape = "gqa2-2layers"
    tts = checkpoints(shape)
    prompt = torch.randint(0, 1024, (7, 9), generator=torch.Generator().manual_seed(5))
    ref = hf_greedy(hf_models(shape), [TEXTS[0]], max_new_tokens=40, prompt=prompt)[0]
    # transformers' max_new_tokens counts from the 1 + P known rows; max_tokens is absolute.
    ours = tts.generate_codes(TEXTS[0], temperature=0, max_tokens=40 + 7, audio_prompt=prompt.numpy())
    np.testing.assert_array_equal(ours, ref.numpy())
    assert len(ours) == 40 + 7 - 16 - 7  # cut by the length limit: only new frames come back


def test_cfg_and_topk_options_match_transformers(checkpoints, hf_models):
    shape = "gqa4-3layers"
    tts = checkpoints(shape)
    ref = hf_greedy(hf_models(shape), [TEXTS[2]], max_new_tokens=40, cfg_scale=1.5, top_k=7)[0]
    ours = tts.generate_codes(TEXTS[2], temperature=0, max_tokens=40, cfg_scale=1.5, cfg_filter_top_k=7)
    np.testing.assert_array_equal(ours, ref.numpy())


# ------------------------------------------------------------------------------------- early EOS


@pytest.fixture(scope="module")
def eos_model(tmp_path_factory, hf_models):
    """A model whose channel-0 EOS logit shadows a common code, so EOS comes after a few frames."""
    import copy

    hf = copy.deepcopy(hf_models("gqa2-2layers"))
    first = hf_greedy(hf, [TEXTS[0]], max_new_tokens=60)[0]
    code = int(first[6, 0])  # a code channel 0 emits early on
    with torch.no_grad():
        hf.logits_dense.weight[EOS] = hf.logits_dense.weight[code] * 1.05
    path = save(hf, tmp_path_factory.mktemp("eos") / "m", "transformers")
    return hf, Dia.from_pretrained(path, device="cpu")


def test_early_eos_single_and_batch(eos_model):
    hf, tts = eos_model
    ref = hf_greedy(hf, TEXTS, max_new_tokens=80)
    ours = tts.generate_codes(TEXTS, temperature=0, max_tokens=80)
    lengths = [len(o) for o in ours]
    assert min(lengths) < 80 - 16, f"EOS never came early: {lengths}"
    assert len(set(lengths)) > 1 or lengths[0] < 80 - 16
    for o, r in zip(ours, ref):
        np.testing.assert_array_equal(o, r.numpy())
    single = tts.generate_codes(TEXTS[0], temperature=0, max_tokens=80)
    np.testing.assert_array_equal(single, ref[0].numpy())


def test_batch_items_equal_alone(checkpoints):
    tts = checkpoints("gqa4-3layers")
    batch = tts.generate_codes(TEXTS, temperature=0, max_tokens=50)
    for text, codes in zip(TEXTS, batch):
        np.testing.assert_array_equal(codes, tts.generate_codes(text, temperature=0, max_tokens=50))


def test_batch_with_prompts_equals_alone(checkpoints):
    tts = checkpoints("gqa2-2layers")
    g = torch.Generator().manual_seed(9)
    prompts = [torch.randint(0, 1024, (5, 9), generator=g).numpy(), None]
    batch = tts.generate_codes(TEXTS[:2], temperature=0, max_tokens=50, audio_prompt=prompts)
    for text, prompt, codes in zip(TEXTS, prompts, batch):
        np.testing.assert_array_equal(codes, tts.generate_codes(text, temperature=0, max_tokens=50, audio_prompt=prompt))


# ------------------------------------------------------------------------------------- sampling


def test_seed_reproducible(checkpoints):
    tts = checkpoints("gqa2-2layers")
    a = tts.generate_codes(TEXTS[0], seed=123, max_tokens=40)
    b = tts.generate_codes(TEXTS[0], seed=123, max_tokens=40)
    c = tts.generate_codes(TEXTS[0], seed=124, max_tokens=40)
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)
    batch = tts.generate_codes(TEXTS[:2], seed=123, max_tokens=40)
    np.testing.assert_array_equal(batch[0], a)  # item i uses seed + i, whatever the batch


def test_sampling_respects_top_k_one(checkpoints):
    """top-k 1 leaves one candidate per channel: sampling must equal greedy."""
    tts = checkpoints("mha-1layer")
    greedy = tts.generate_codes(TEXTS[1], temperature=0, cfg_filter_top_k=1, max_tokens=40)
    sampled = tts.generate_codes(TEXTS[1], temperature=1.5, cfg_filter_top_k=1, seed=7, max_tokens=40)
    np.testing.assert_array_equal(sampled, greedy)


# ------------------------------------------------------------------------------------- v0.1


class _RopeAfter(nn.Module):
    """Applies half-split RoPE (positions 0..L-1) to a projection's heads: the v0.1 cross-attention."""

    def __init__(self, proj: nn.Linear, head_dim: int) -> None:
        super().__init__()
        self.proj, self.head_dim = proj, head_dim

    def forward(self, x):
        y = self.proj(x)
        b, length, _ = y.shape
        y = y.view(b, length, -1, self.head_dim)
        half = self.head_dim // 2
        timescale = 10000.0 ** (2 * torch.arange(half, dtype=torch.float32) / self.head_dim)
        angle = torch.arange(length, dtype=torch.float32)[:, None] / timescale  # (L, half)
        cos, sin = angle.cos()[None, :, None], angle.sin()[None, :, None]
        y1, y2 = y[..., :half], y[..., half:]
        return torch.cat((y1 * cos - y2 * sin, y2 * cos + y1 * sin), dim=-1).view(b, length, -1)


def test_v01_nested_config_uses_cross_attention_rope(tmp_path, hf_models):
    import copy

    hf = hf_models("gqa2-2layers")
    tts = Dia.from_pretrained(save_nested(hf, tmp_path / "v01"), device="cpu")
    assert tts.config.cross_attn_rope and tts.config.source_format == "nari" and tts.layout == "nari"
    patched = copy.deepcopy(hf)
    for layer in patched.model.decoder.layers:
        ca = layer.cross_attention
        ca.q_proj = _RopeAfter(ca.q_proj, ca.head_dim)
        ca.k_proj = _RopeAfter(ca.k_proj, ca.head_dim)
    tokens, mask = text_inputs(TEXTS)
    dec = random_decoder_input(len(TEXTS), 16, seed=4)
    ours = teacher_forced(tts, tokens, mask, dec)
    for o, r in zip(ours, hf_logits(patched, tokens, mask, dec)):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=2e-5)
    # And the 0626 semantics (no cross RoPE) really differ on the same weights.
    plain = hf_logits(hf, tokens, mask, dec)[0]
    assert (ours[0] - plain).abs().max() > 1e-2
