"""Dia2 ONNX export + onnxruntime backend on tiny models, against PyTorch and the golden fixtures.

Exports are the slow part (~6 s per graph), so each fixture exports once per module: the
dia2-tiny-random preset (dynamic shapes, with its Mimi), the golden-fixture model folder (its
tokenizer and Mimi asset; codes checked against the reference's), and a second shape with a
text-embedding depformer, no depformer RoPE, a low-rank text table, MHA and a weight group
of several stages including stage 0, exported --static through the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from fastdia.dia2.api import Dia2  # noqa: E402
from fastdia.dia2.checkpoint import load_dia2  # noqa: E402
from fastdia.errors import AudioError, CheckpointError, GenerationError  # noqa: E402
from fastdia.backends.onnx.dia2_compare import top1_agreement_dia2  # noqa: E402
from fastdia.dia2.onnx import export_dia2_onnx  # noqa: E402
from fastdia.backends.onnx.dia2_runtime import OrtDia2Model  # noqa: E402
from fastdia.backends.onnx.common import ExportOptions  # noqa: E402
from fastdia.backends.onnx.manifest import read_manifest  # noqa: E402
from tests.conftest import dia2_fixtures  # noqa: E402

FIXTURES = dia2_fixtures()
SCRIPT = "[S1] Hello there, how are you? [S2] Fine, thanks (laughs)."
GREEDY = dict(temperature=0, text_temperature=0)
CPU = torch.device("cpu")


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random-weight preset" and exporter chatter
        return fn(*args, **kw)


def _torch_model(source):
    """The model's own forward (pure math, plain nn.Linear weights), the exported reference."""
    return load_dia2(source, CPU, torch.float32, optimize=False).model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(torch Dia2, onnx Dia2, folder): dia2-tiny-random, dynamic, with mimi-tiny-random."""
    out = tmp_path_factory.mktemp("onnx-dia2") / "tiny"
    export_dia2_onnx("dia2-tiny-random", out, log=lambda line: None)
    return (quiet(Dia2.from_pretrained, "dia2-tiny-random", device="cpu", dtype="float32"),
            quiet(Dia2.from_pretrained, out), out)


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """The golden-fixture model folder's export (tokenizer and Mimi from the folder)."""
    if not FIXTURES.exists():
        pytest.skip("the Dia2 fixtures are not next to this checkout")
    out = tmp_path_factory.mktemp("onnx-dia2-golden") / "onnx"
    export_dia2_onnx(FIXTURES / "model", out, log=lambda line: None)
    return out


def _wide_config():
    from fastdia.dia2.config import DIA2_PRESETS

    cfg = DIA2_PRESETS["dia2-tiny-random"]
    return dataclasses.replace(
        cfg,
        decoder=dataclasses.replace(cfg.decoder, n_kv_head=4, low_rank_dim=32, n_layer=1),
        depformer=dataclasses.replace(cfg.depformer, text_embedding=True, apply_rope=False),
        runtime=dataclasses.replace(cfg.runtime, weights_schedule=(0, 0, 1, 1, 1, 2, 2)),
    )


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """(torch Dia2, onnx Dia2, folder): the second shape saved as a Dia2 folder, exported --static
    through the CLI (2 rows, 64 cache slots, 48 codec frames)."""
    from safetensors.torch import save_file

    from fastdia.dia2.checkpoint import random_state
    from fastdia.cli.main import main
    from fastdia.dia2.text import builtin_tokenizer

    root = tmp_path_factory.mktemp("onnx-dia2-wide")
    cfg = _wide_config()
    ckpt = root / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(cfg.to_dict()))
    save_file(random_state(cfg, seed=11), str(ckpt / "model.safetensors"))
    builtin_tokenizer()._tok.save(str(ckpt / "tokenizer.json"))
    out = root / "onnx"
    assert quiet(main, ["export", "onnx", str(ckpt), str(out), "--static", "--cache-len", "64", "--codec",
                         "mimi-tiny-random", "--codec-frames", "48"]) == 0
    ref = quiet(Dia2.from_pretrained, ckpt, device="cpu", dtype="float32", codec="mimi-tiny-random")
    return ref, quiet(Dia2.from_pretrained, out), out


def _domains(path) -> set[str]:
    return {n.domain or "ai.onnx" for n in onnx.load(str(path), load_external_data=False).graph.node}


# ------------------------------------------------------------------------------ float32, dynamic


def test_logits_match_pytorch(tiny):
    _, _, folder = tiny
    ref, ort = _torch_model("dia2-tiny-random"), OrtDia2Model(folder)
    cfg = ref.config
    g = torch.Generator().manual_seed(0)
    t = 12
    tokens = torch.randint(0, cfg.data.text_vocab_size, (2, t, cfg.data.channels), generator=g)
    tokens[..., 2:] = torch.randint(0, cfg.data.audio_vocab_size, (2, t, cfg.n_codebooks), generator=g)
    positions = torch.arange(t).expand(2, t)
    with torch.inference_mode():
        caches = [m.new_decoder_cache(2, 20) for m in (ref, ort)]
        # A prefill of 12 steps, then one step whose slot differs from its position (as after a prefix).
        outs = [m.transformer(tokens, positions, c, slots=positions) for m, c in zip((ref, ort), caches)]
        step = [m.transformer(tokens[:, :1], positions[:, :1] + 3, c, slots=positions[:, :1] + t, kv_len=t + 1)
                for m, c in zip((ref, ort), caches)]
        for r, o in ((outs[0], outs[1]), (step[0], step[1])):
            for name in ("hidden", "action_logits", "cb0_logits"):
                torch.testing.assert_close(getattr(o, name), getattr(r, name), rtol=0, atol=1e-4)
        for a, b in zip(caches[0].k + caches[0].v, caches[1].k + caches[1].v):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-4)
        deps = [m.new_depformer_cache(2) for m in (ref, ort)]
        hidden, token = step[0].hidden[:, 0], torch.tensor([5, 9])
        for s in range(cfg.n_stages):
            a = ref.depformer.stage(s, hidden, token, deps[0])
            b = ort.depformer.stage(s, hidden, token, deps[1])
            torch.testing.assert_close(b, a, rtol=0, atol=1e-4)
            token = a.argmax(-1)


def test_generation_equals_pytorch_greedy_seeded_and_streamed(tiny):
    torch_tts, onnx_tts, _ = tiny
    assert onnx_tts.model.info["family"] == "dia2" and onnx_tts.is_random
    np.testing.assert_array_equal(onnx_tts.generate_codes(SCRIPT, max_steps=60, **GREEDY),
                                  torch_tts.generate_codes(SCRIPT, max_steps=60, **GREEDY))
    # Seeded: the same draws from logits that agree to ~1e-6. A sampled run follows the other
    # until a draw meets a near-tie at the guidance filter's cut (a few hundred draws in, for
    # these seeds), so the first 16 frames (~110 draws) must be identical.
    for kw in (dict(seed=3), dict(seed=5, cfg_scale=3.0, top_k=20)):
        a = onnx_tts.generate_codes(SCRIPT, max_steps=60, **kw)
        b = torch_tts.generate_codes(SCRIPT, max_steps=60, **kw)
        np.testing.assert_array_equal(a[:16], b[:16])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = onnx_tts.synthesize(SCRIPT, seed=2, max_steps=60)
        chunks = list(onnx_tts.stream(SCRIPT, seed=2, max_steps=60, chunk_seconds=0.16))
    np.testing.assert_allclose(np.concatenate([c.audio for c in chunks]), whole.audio, atol=1e-5, rtol=0)
    assert [w for c in chunks for w in c.words] == list(whole.timestamps)


def test_codec_graph_decodes_like_pytorch(tiny):
    from fastdia.codecs.mimi.codec import Mimi

    _, onnx_tts, _ = tiny
    ref = Mimi.from_pretrained("mimi-tiny-random", device="cpu", dtype="float32")
    assert onnx_tts.codec.codec_id == ref.codec_id
    codes = np.random.RandomState(0).randint(0, 2048, (2, 23, 8))
    np.testing.assert_allclose(onnx_tts.codec.decode(codes), ref.decode(codes), atol=1e-4, rtol=0)
    stream = onnx_tts.codec.stream()
    pieces = [stream.push(codes[0, a:b]) for a, b in ((0, 5), (5, 6), (6, 23))]
    np.testing.assert_allclose(np.concatenate(pieces), ref.decode(codes[0]), atol=1e-4, rtol=0)
    with pytest.raises(AudioError, match="0..2047"):
        onnx_tts.codec.decode(np.full((3, 8), 2048))
    with pytest.raises(AudioError, match="Mimi encoder"):
        onnx_tts.encode(np.zeros(4800, np.float32), 24000)


def test_manifest_checker_and_ops(tiny):
    _, _, folder = tiny
    raw = json.loads((folder / "config.json").read_text())
    info = raw["fastdia_onnx"]
    assert {"data", "model", "runtime"} <= set(raw) and info["family"] == "dia2" and info["quantize"] is None
    assert set(info["graphs"]) == {"decoder", "depformer_0", "depformer_1", "depformer_2", "depformer_3", "codec"}
    assert info["depformer_groups"] == {"0": [0], "1": [1, 2], "2": [3, 4], "3": [5, 6]}
    dec = info["graphs"]["decoder"]
    assert [i["name"] for i in dec["inputs"]][:4] == ["tokens", "positions", "slots", "cache_k_0"]
    assert dec["inputs"][0]["shape"] == ["rows", "steps", 10]
    assert [o["name"] for o in dec["outputs"]][:4] == ["hidden", "action_logits", "cb0_logits", "new_k_0"]
    dep = info["graphs"]["depformer_1"]
    assert [i["name"] for i in dep["inputs"]][:3] == ["stage", "hidden", "prev_token"]
    assert dep["outputs"][0] == {"name": "logits", "dtype": "float32", "shape": ["rows", 2048]}
    assert info["graphs"]["codec"]["inputs"][0]["shape"] == ["items", 8, "frames"]
    for name, g in info["graphs"].items():
        path = folder / g["file"]
        onnx.checker.check_model(str(path))
        assert _domains(path) == {"ai.onnx"}, name  # no custom or contrib ops in float graphs
        assert not set(g["op_types"]) & {"If", "Loop", "Scan"}, name
        assert g["opset"] == {"ai.onnx": 18} and g["purpose"]
    print({name: g["op_types"] for name, g in info["graphs"].items()})


def test_say_cli_and_load_run_an_export(tiny, tmp_path):
    import soundfile as sf

    import fastdia
    from fastdia.cli.main import main

    _, _, folder = tiny
    assert isinstance(quiet(fastdia.load, folder), Dia2)
    with pytest.raises(CheckpointError, match="Dia2 ONNX export"):
        fastdia.Dia.from_pretrained(folder)
    out = tmp_path / "a.wav"
    assert quiet(main, ["say", SCRIPT, "--model", str(folder), "-o", str(out), "--seed", "1", "--max-steps", "40",
                         "-q"]) == 0
    wave, sr = sf.read(out)
    assert sr == 24000 and len(wave) > 0


# ------------------------------------------------------------------------------ golden fixtures


def test_golden_fixture_export_equals_reference(golden):
    from fastdia.dia2.generation import Dia2Generator
    from fastdia.backends.onnx.dia2_runtime import ort_tokenizer
    from tests.test_dia2_generation import assert_delayed_equal, CASES, run_case

    model = OrtDia2Model(golden)
    assert "tokenizer.json" in model.info["tokenizer_files"]
    tok = ort_tokenizer(golden, model.info)
    data = model.config.data
    ids = tok.text_ids(data.text_pad_token_id, data.text_new_word_token_id, data.text_zero_token_id)
    setup = (Dia2Generator(model, CPU, ids), tok, ids)
    for c in CASES["cases"]:  # every case, the voice-prefix one too (its codes given)
        z = np.load(FIXTURES / c["arrays"])
        r = run_case(setup, c, z)
        assert_delayed_equal(r.extra["delayed"].numpy(), z["audio_delayed"], c)
        np.testing.assert_array_equal(r.codes.T.numpy(), z["audio_codes"])
        assert [list(w) for w in r.timestamps] == c["result"]["timestamps"]
    c = CASES["cases"][0]
    z = np.load(FIXTURES / c["arrays"])
    tts = Dia2.from_pretrained(golden)
    g = c["generation"]
    speech = tts.synthesize(c["script"], cfg_scale=g["cfg_scale"], cfg_filter_k=g["cfg_filter_k"], **GREEDY)
    np.testing.assert_array_equal(speech.codes.T, z["audio_codes"])
    np.testing.assert_allclose(speech.audio, z["waveform"], atol=1e-4, rtol=0)  # through codec.onnx


# ------------------------------------------------------------------------------ static, second shape


def test_static_export_has_fixed_shapes_and_matches(wide):
    torch_tts, onnx_tts, folder = wide
    info = read_manifest(folder)
    assert info["static"] and info["static_shapes"]["cache_len"] == 64
    assert set(info["graphs"]) == {"decoder", "depformer_0", "depformer_1", "depformer_2", "codec"}
    for name, g in info["graphs"].items():
        for value in g["inputs"] + g["outputs"]:
            assert all(isinstance(d, int) for d in value["shape"]), (name, value)
        assert not set(g["op_types"]) & {"If", "Loop", "Scan"}, name
        onnx.checker.check_model(str(folder / g["file"]))
    names = [i["name"] for i in info["graphs"]["depformer_0"]["inputs"]]
    assert names[-2:] == ["text_main", "text_second"]  # the group holding stage 0 embeds the text
    assert "text_main" not in [i["name"] for i in info["graphs"]["depformer_1"]["inputs"]]
    assert info["graphs"]["decoder"]["inputs"][0]["shape"] == [2, 1, 10]
    for kw in (GREEDY, dict(seed=4)):
        np.testing.assert_array_equal(onnx_tts.generate_codes(SCRIPT, max_steps=50, **kw),
                                      torch_tts.generate_codes(SCRIPT, max_steps=50, **kw))
    with pytest.raises(GenerationError, match="static export holds 64"):
        onnx_tts.generate_codes(SCRIPT + " " + SCRIPT + " " + SCRIPT, max_steps=100, **GREEDY)
    codes = np.random.RandomState(1).randint(0, 2048, (40, 8))  # within the 48-frame codec window
    np.testing.assert_allclose(onnx_tts.decode(codes), torch_tts.decode(codes), atol=1e-4, rtol=0)
    assert onnx_tts.decode(np.zeros((100, 8), np.int64)).shape == (100 * 1920,)  # in windows


def test_static_rows_split_in_groups(wide):
    """The server's slot batches give a static graph more rows than it takes: they go in groups."""
    torch_tts, onnx_tts, _ = wide
    ort, ref = onnx_tts.model, _torch_model(torch_tts._loaded.directory)
    tokens = torch.randint(0, 400, (6, 1, 10), generator=torch.Generator().manual_seed(2))
    positions = torch.tensor([[0], [0], [3], [3], [5], [5]])
    with torch.inference_mode():
        a = ref.transformer(tokens, positions, ref.new_decoder_cache(6, 64), slots=positions)
        b = ort.transformer(tokens, positions, ort.new_decoder_cache(6, 64), slots=positions)
    torch.testing.assert_close(b.cb0_logits, a.cb0_logits, rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------ quantized


@pytest.mark.parametrize("mode", ["int8", "int4", "qdq"])
def test_quantized_exports_run_and_agree(tiny, mode, tmp_path):
    from fastdia.backends.onnx.requantize import quantize_export

    _, _, folder = tiny
    info = quiet(quantize_export, folder, tmp_path / mode, mode, block_size=16, log=lambda line: None)
    for g in info["graphs"].values():
        onnx.checker.check_model(str(tmp_path / mode / g["file"]))
    quantized = [n for n in info["graphs"] if n != "codec"]
    ops = set().union(*(info["graphs"][n]["op_types"] for n in quantized))
    domains = set().union(*(_domains(tmp_path / mode / info["graphs"][n]["file"]) for n in quantized))
    if mode == "int4":
        assert "com.microsoft.MatMulNBits" in ops and domains == {"ai.onnx", "com.microsoft"}
    else:
        assert domains == {"ai.onnx"}  # int8 and QDQ: standard ops only
        assert ({"MatMulInteger", "DynamicQuantizeLinear"} if mode == "int8"
                else {"QuantizeLinear", "DequantizeLinear"}) <= ops
    for n in quantized:  # every depformer graph is quantized too, not only the decoder
        assert any(op in info["graphs"][n]["op_types"] for op in
                   ("MatMulInteger", "com.microsoft.MatMulNBits", "QuantizeLinear")), n
    tts = quiet(Dia2.from_pretrained, tmp_path / mode)
    codes = tts.generate_codes(SCRIPT, seed=1, max_steps=40)
    assert codes.shape[1] == 8 and len(codes) > 0
    result = top1_agreement_dia2(folder, tmp_path / mode)
    size = sum(g["bytes"] for g in info["graphs"].values())
    print(f"{mode}: {size / 1e6:.2f} MB, top-1 agreement {result['top1']:.4f} over {result['positions']} cells")
    assert result["top1"] > 0.6


# ------------------------------------------------------------------------------ errors


def test_errors(tiny):
    _, _, folder = tiny
    with pytest.raises(GenerationError, match="ONNX export"):
        Dia2.from_pretrained(folder, quantize="int8")
    with pytest.raises(GenerationError, match="rows"):
        ExportOptions(static=True, rows=3)
