"""The `asr` extra: Whisper word timings for Dia2 voice prefixes (fastdia/dia2/asr.py) and the order in
which a prefix's timings are chosen (`_words_for` in fastdia/dia2/api.py).

The real path runs faster-whisper on a tiny Whisper built here, offline: a transformers
WhisperForConditionalGeneration converted with CTranslate2, plus a byte-level tokenizer with
Whisper's special tokens. Random weights say nothing useful, so the decoder is wired to say one
thing whatever it hears: token embeddings are zero and every residual branch of the decoder is
zero, so each position's hidden state is its (one-hot) position embedding, and the output
projection maps position p to the p-th token of "<|0.00|> hello world<|1.00|><|endoftext|>", with
a margin that survives int8 arithmetic on every CPU kind (see `_build_tiny_whisper`).
The encoder and cross-attention stay random, so the word times come from real DTW alignment.
"""

from __future__ import annotations

import json
import threading
import warnings

import numpy as np
import pytest

from fastdia import VoicePrompt
from fastdia.dia2 import asr
from fastdia.dia2.api import _words_for
from fastdia.errors import GenerationError, ModelNotFoundError

SPOKEN = " hello world"
RATE = 24000  # Dia2's rate: transcribe_words resamples it to Whisper's 16 kHz


def _build_tiny_whisper(folder) -> str:
    """A CTranslate2 Whisper folder (English-only: vocabulary < 51865) that always says SPOKEN."""
    import ctranslate2
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        WhisperConfig,
        WhisperForConditionalGeneration,
    )

    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
                "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    # faster-whisper suppresses the first token of " -", " '" and " ♪" (and a blank first token);
    # with bytes alone that is the bare space, which every word needs, so give them merges.
    merges = [("Ġ", "-"), ("Ġ", "'"), ("Ġ", "â")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in specials])
    eot = len(vocab)
    ts0 = eot + len(specials)  # <|notimestamps|> + 1: the converter appends the 1501 timestamp tokens
    d_model, positions = 128, 448

    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=ts0 + 1501, num_mel_bins=80, d_model=d_model, encoder_layers=2,
                        decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=128, decoder_ffn_dim=128, max_source_positions=1500,
                        max_target_positions=positions, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
                        decoder_start_token_id=eot + 1, suppress_tokens=[], begin_suppress_tokens=[eot],
                        tie_word_embeddings=False)
    model = WhisperForConditionalGeneration(cfg).eval()
    said = [ts0, *tok.encode(SPOKEN).ids, ts0 + 50, eot]  # <|0.00|> hello world <|1.00|> <|endoftext|>
    dec = model.model.decoder
    with torch.no_grad():
        dec.embed_tokens.weight.zero_()
        for layer in dec.layers:
            for proj in (layer.self_attn.out_proj, layer.encoder_attn.out_proj, layer.fc2):
                proj.weight.zero_()
                proj.bias.zero_()
        dec.layer_norm.weight.fill_(1.0)
        dec.layer_norm.bias.zero_()
        # Position p is hot at index 2p (mod d_model), never at an odd one: an int8 GEMM on an AVX2
        # CPU without VNNI (CTranslate2 int8 through vpmaddubsw) sums adjacent pairs of products in
        # saturating int16, so two hot indices side by side in one output row (a token said at two
        # neighbouring positions, the "ll" of "hello") would saturate and lose that token.
        one_hot = torch.zeros(positions, d_model)
        one_hot[torch.arange(positions), (2 * torch.arange(positions)) % d_model] = 1.0
        dec.embed_positions.weight.copy_(one_hot)
        normed = torch.nn.functional.layer_norm(one_hot, (d_model,))
        model.proj_out.weight.zero_()
        for p, t in enumerate(said):  # logit 64 for the wanted token, about 0 for the rest
            model.proj_out.weight[t] += normed[p]
    hf, ct2 = folder / "hf", folder / "ct2"
    model.save_pretrained(hf)
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(hf)  # the converter reads the vocabulary
    ctranslate2.converters.TransformersConverter(str(hf)).convert(str(ct2))
    tok.save(str(ct2 / "tokenizer.json"))  # else faster-whisper would fetch openai/whisper-tiny's
    (ct2 / "preprocessor_config.json").write_text(json.dumps(
        {"feature_size": 80, "sampling_rate": 16000, "hop_length": 160, "chunk_length": 30, "n_fft": 400}))
    return str(ct2)


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _build_tiny_whisper(tmp_path_factory.mktemp("whisper"))


@pytest.fixture
def fresh(monkeypatch, tiny_whisper):
    """Empty model and transcript caches, and $FASTDIA_ASR_MODEL on the tiny Whisper."""
    monkeypatch.setattr(asr, "_models", {})
    monkeypatch.setattr(asr, "_transcripts", type(asr._transcripts)())
    monkeypatch.setenv(asr.MODEL_ENV, tiny_whisper)
    return tiny_whisper


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(np.float32)


def _counting_whisper(monkeypatch):
    """Counts WhisperModel constructions and transcribe calls (the real class does the work)."""
    import faster_whisper

    counts = {"loads": 0, "transcribes": 0}

    class Counting(faster_whisper.WhisperModel):
        def __init__(self, *a, **k):
            counts["loads"] += 1
            super().__init__(*a, **k)

        def transcribe(self, *a, **k):
            counts["transcribes"] += 1
            return super().transcribe(*a, **k)

    monkeypatch.setattr(faster_whisper, "WhisperModel", Counting)
    return counts


def test_transcribe_words_real_model(fresh):
    assert asr.available()
    duration = 2.0
    words = asr.transcribe_words(_noise(duration), RATE)
    assert [w for w, _, _ in words] == SPOKEN.split()  # stripped of the leading spaces
    for word, start, end in words:
        assert isinstance(word, str) and isinstance(start, float) and isinstance(end, float)
        assert 0.0 <= start <= end <= duration
    assert [s for _, s, _ in words] == sorted(s for _, s, _ in words)
    stereo = np.stack([_noise(duration, 1)] * 2, axis=1)  # [N, channels] is averaged to mono
    assert [w for w, _, _ in asr.transcribe_words(stereo, RATE)] == SPOKEN.split()


def test_model_loaded_once_and_transcripts_kept(fresh, monkeypatch):
    counts = _counting_whisper(monkeypatch)
    first = asr.transcribe_words(_noise(1.0, seed=1), RATE)
    second = asr.transcribe_words(_noise(1.5, seed=2), 16000)  # other audio, other rate: same model
    assert first and second
    assert counts == {"loads": 1, "transcribes": 2}
    assert list(asr._models) == [(fresh, "cpu", "int8")]
    model = asr.load_model()
    assert model is asr._models[fresh, "cpu", "int8"] and model is asr.load_model(fresh)
    # The same audio again is answered from the kept transcript, without running Whisper.
    assert asr.transcribe_words(_noise(1.0, seed=1), RATE) == first
    assert counts == {"loads": 1, "transcribes": 2}


def test_concurrent_first_calls_load_one_model(fresh, monkeypatch):
    counts = _counting_whisper(monkeypatch)
    got = []
    threads = [threading.Thread(target=lambda: got.append(asr.load_model())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts["loads"] == 1 and len(got) == 4 and all(m is got[0] for m in got)


def test_unloadable_model_is_a_clear_error_remembered(fresh, monkeypatch, tmp_path):
    counts = _counting_whisper(monkeypatch)
    monkeypatch.setenv(asr.MODEL_ENV, str(tmp_path / "no-such-whisper"))
    for _ in range(2):
        with pytest.raises(ModelNotFoundError, match="FASTDIA_ASR_MODEL to a local CTranslate2 Whisper folder"):
            asr.transcribe_words(_noise(0.5), RATE)
    # Not a folder, so faster-whisper asks the hub, which fails; tried once, the failure then kept.
    assert counts["loads"] == 1 and len(asr._models) == 1
    monkeypatch.setenv(asr.MODEL_ENV, fresh)  # another model name tries afresh
    assert asr.transcribe_words(_noise(0.5), RATE)


def test_bad_waveforms_are_audio_errors(fresh):
    from fastdia.errors import AudioError

    with pytest.raises(AudioError, match="non-empty"):
        asr.transcribe_words(np.zeros(0, np.float32), RATE)
    with pytest.raises(AudioError, match="sample rate"):
        asr.transcribe_words(_noise(0.5), 0)


def test_words_for_uses_the_real_asr(fresh):
    wave, seconds = _noise(2.0), 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # timings from ASR: no spread, no warning
        heard = _words_for(VoicePrompt(wave, RATE), seconds, 1, wave, RATE)
        assert [w for w, _, _ in heard] == ["hello", "world"]
        # A given text with as many words keeps its spelling and takes the recognised times.
        spelled = _words_for(VoicePrompt(wave, RATE, text="[S1] Hello, world!"), seconds, 1, wave, RATE)
        assert spelled == [("Hello,", *heard[0][1:]), ("world!", *heard[1][1:])]
        # A text that does not match word for word yields to what was heard.
        assert _words_for(VoicePrompt(wave, RATE, text="[S1] Hi there you"), seconds, 1, wave, RATE) == heard


def test_facade_prefix_without_transcript_uses_asr(fresh):
    from fastdia import Dia2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preset = Dia2.from_pretrained("dia2-tiny-random", device="cpu")
    wave = _noise(0.8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "spread evenly" warning: the words came from Whisper
        words, codes = preset._voice(VoicePrompt(wave, RATE), 1)
        assert [w for w, _, _ in words] == ["hello", "world"] and codes.shape[0] > 0
        out = preset.generate_codes("[S1] Hi.", seed=1, max_steps=30, prefix_speaker_1=VoicePrompt(wave, RATE))
    assert out is not None


# The order of sources, with transcribe_words replaced (the real path is tested above).

def _fake_asr(monkeypatch, result=None, error=None):
    calls = []

    def fake(wave, sample_rate, model=None):
        calls.append(sample_rate)
        if error is not None:
            raise error
        return list(result)

    monkeypatch.setattr(asr, "available", lambda: True)
    monkeypatch.setattr(asr, "transcribe_words", fake)
    return calls


WAVE = np.zeros(RATE, np.float32)
HEARD = [("one", 0.1, 0.4), ("two", 0.5, 0.9)]


def test_given_words_win_over_asr(monkeypatch):
    calls = _fake_asr(monkeypatch, HEARD)
    got = _words_for(VoicePrompt(WAVE, RATE, text="a b", words=[("a", 0.0, 0.2), ("b", 0.3, 0.5)]), 1.0, 1, WAVE, RATE)
    assert got == [("a", 0.0, 0.2), ("b", 0.3, 0.5)] and calls == []


def test_asr_when_no_words(monkeypatch):
    calls = _fake_asr(monkeypatch, HEARD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _words_for(VoicePrompt(WAVE, RATE), 1.0, 1, WAVE, RATE) == HEARD
        assert _words_for(VoicePrompt(WAVE, RATE, text="[S1] Uno dos"), 1.0, 1, WAVE, RATE) == [
            ("Uno", 0.1, 0.4), ("dos", 0.5, 0.9)]
    assert calls == [RATE, RATE]


def test_asr_failure_falls_back_to_text_with_the_reason(monkeypatch):
    _fake_asr(monkeypatch, error=ModelNotFoundError("cannot load the Whisper model 'large-v3'"))
    with pytest.warns(UserWarning, match=r"spread evenly.*speech recognition failed: cannot load the Whisper"):
        got = _words_for(VoicePrompt(WAVE, RATE, text="[S1] a b"), 1.0, 1, WAVE, RATE)
    assert got == [("a", 0.0, 0.5), ("b", 0.5, 1.0)]
    with pytest.raises(GenerationError, match="no transcript.*speech recognition failed: cannot load"):
        _words_for(VoicePrompt(WAVE, RATE), 1.0, 1, WAVE, RATE)


def test_asr_hearing_nothing_falls_back_to_text(monkeypatch):
    _fake_asr(monkeypatch, [])
    with pytest.warns(UserWarning, match="heard no words"):
        assert _words_for(VoicePrompt(WAVE, RATE, text="a b"), 1.0, 1, WAVE, RATE) == [("a", 0.0, 0.5), ("b", 0.5, 1.0)]
    with pytest.raises(GenerationError, match="needs its transcript.*heard no words"):
        _words_for(VoicePrompt(WAVE, RATE), 1.0, 2, WAVE, RATE)


def test_without_the_extra_text_is_spread_with_a_warning(monkeypatch):
    monkeypatch.setattr(asr, "available", lambda: False)
    monkeypatch.setattr(asr, "transcribe_words", lambda *a, **k: pytest.fail("ASR used without the extra"))
    with pytest.warns(UserWarning, match=r'spread evenly.*pip install "fastdia\[asr\]"'):
        got = _words_for(VoicePrompt(WAVE, RATE, text="[S2] a b c d"), 2.0, 2, WAVE, RATE)
    assert got == [("a", 0.0, 0.5), ("b", 0.5, 1.0), ("c", 1.0, 1.5), ("d", 1.5, 2.0)]
    with pytest.raises(GenerationError, match=r'text= \(or words= with timings\) or pip install "fastdia\[asr\]"'):
        _words_for(VoicePrompt(WAVE, RATE), 1.0, 1, WAVE, RATE)
