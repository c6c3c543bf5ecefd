"""ONNX export + onnxruntime backend on tiny random models, against PyTorch and transformers.

Exports are the slow part (~10 s per graph), so each fixture exports once per module and the
tests share it: a GQA-4 model in the transformers layout (dynamic shapes, with the codec), a v0.1
nested-config model (cross-attention RoPE, original layout) with an early EOS, and an MHA model
exported --static through the CLI.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from fastdia import Dia  # noqa: E402
from fastdia.errors import GenerationError  # noqa: E402
from fastdia.backends.onnx.dia1_compare import teacher_forced_logits, top1_agreement  # noqa: E402
from fastdia.backends.onnx.common import ExportOptions  # noqa: E402
from fastdia.dia1.onnx import export_onnx  # noqa: E402
from fastdia.backends.onnx.manifest import read_manifest  # noqa: E402
from fastdia.text import tokenize  # noqa: E402
from tests.oracle import EOS, hf_greedy, save, save_nested  # noqa: E402

TEXTS = ["[S1] Hello there, how are you? [S2] Fine (laughs).", "[S1] Hi.", "[S2] Short one. [S1] Yes!"]


def _quiet_load(path, **kw) -> Dia:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if read_manifest(path) is not None:
            return Dia.from_pretrained(path, device="cpu", **kw)
        # The reference is the model's own forward (pure math) with plain nn.Linear weights, as
        # exported; the CPU fast paths (packed linears, fused step) have their own tests.
        from fastdia.dia1.checkpoint import load_model

        cpu = torch.device("cpu")
        tts = Dia(load_model(path, cpu, torch.float32, optimize=False), cpu, torch.float32)
    tts._generator.decode = tts.model.decoder
    return tts


@pytest.fixture(scope="module")
def gqa(tmp_path_factory, hf_models):
    """(hf model, torch Dia, onnx Dia, export folder): gqa4-3layers, transformers layout, dynamic, with codec."""
    root = tmp_path_factory.mktemp("onnx-gqa")
    hf = hf_models("gqa4-3layers")
    ckpt = save(hf, root / "ckpt", "transformers")
    out = root / "onnx"
    export_onnx(ckpt, out, ExportOptions(codec="tiny-random"), log=lambda line: None)
    return hf, _quiet_load(ckpt), _quiet_load(out), out


@pytest.fixture(scope="module")
def v01_eos(tmp_path_factory, hf_models):
    """(torch Dia, onnx Dia): gqa2-2layers whose EOS logit shadows a common code, saved with the
    v0.1 nested config (cross-attention RoPE) and original tensor names."""
    import copy

    hf = copy.deepcopy(hf_models("gqa2-2layers"))
    first = hf_greedy(hf, [TEXTS[0]], max_new_tokens=60)[0]
    with torch.no_grad():
        hf.logits_dense.weight[EOS] = hf.logits_dense.weight[int(first[6, 0])] * 1.05
    root = tmp_path_factory.mktemp("onnx-v01")
    ckpt = save_nested(hf, root / "ckpt")
    out = root / "onnx"
    export_onnx(ckpt, out, ExportOptions(codec="none"), log=lambda line: None)
    torch_tts = _quiet_load(ckpt)
    assert torch_tts.config.cross_attn_rope
    return torch_tts, _quiet_load(out)


@pytest.fixture(scope="module")
def static(tmp_path_factory, hf_models):
    """(torch Dia, onnx Dia, folder): mha-1layer in the original safetensors layout, exported
    --static through the CLI (text 96 bytes, cache 64 slots, 2 rows)."""
    from fastdia.cli.main import main

    root = tmp_path_factory.mktemp("onnx-static")
    ckpt = save(hf_models("mha-1layer"), root / "ckpt", "nari-safetensors")
    out = root / "onnx"
    assert main(["export", "onnx", str(ckpt), str(out), "--static", "--text-len", "96", "--cache-len", "64",
                 "--codec", "none"]) == 0
    return _quiet_load(ckpt), _quiet_load(out), out


def _graphs(folder):
    info = read_manifest(folder)
    return info, {name: folder / g["file"] for name, g in info["graphs"].items()}


def _domains(path) -> set[str]:
    model = onnx.load(str(path), load_external_data=False)
    return {n.domain or "ai.onnx" for n in model.graph.node}


# ------------------------------------------------------------------------------ float32, dynamic


def test_logits_match_pytorch(gqa):
    _, torch_tts, onnx_tts, _ = gqa
    text = tokenize(TEXTS[0])
    grid = torch.randint(0, 1024, (24, 9), generator=torch.Generator().manual_seed(3))
    grid[0] = 1026
    with torch.inference_mode():
        ref = teacher_forced_logits(torch_tts.model, text, grid)  # one causal pass (a prefill)
        got = teacher_forced_logits(onnx_tts.model, text, grid)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)


def test_greedy_matches_transformers_single_and_batch(gqa):
    hf, torch_tts, onnx_tts, _ = gqa
    assert onnx_tts.layout == "onnx"
    ref = hf_greedy(hf, TEXTS, max_new_tokens=48)
    ours = onnx_tts.generate_codes(TEXTS, temperature=0, max_tokens=48)
    for o, r in zip(ours, ref):
        np.testing.assert_array_equal(o, r.numpy())
    single = onnx_tts.generate_codes(TEXTS[0], temperature=0, max_tokens=48)
    np.testing.assert_array_equal(single, ref[0].numpy())


def test_sampling_prompt_stream_and_long_script_equal_pytorch(gqa):
    _, torch_tts, onnx_tts, _ = gqa
    kw = dict(seed=7, max_tokens=60, cfg_scale=2.0, temperature=1.1, top_p=0.9, cfg_filter_top_k=20)
    np.testing.assert_array_equal(onnx_tts.generate_codes(TEXTS[2], **kw), torch_tts.generate_codes(TEXTS[2], **kw))
    prompt = np.random.RandomState(1).randint(0, 1024, (6, 9))
    a = onnx_tts.generate_codes(TEXTS[0], temperature=0, max_tokens=50, audio_prompt=prompt, prompt_text="[S1] Yes.")
    b = torch_tts.generate_codes(TEXTS[0], temperature=0, max_tokens=50, audio_prompt=prompt, prompt_text="[S1] Yes.")
    np.testing.assert_array_equal(a, b)
    long = " ".join(TEXTS * 2)
    a = onnx_tts.generate_codes(long, seed=3, max_tokens=40, chunk_tokens=40)
    np.testing.assert_array_equal(a, torch_tts.generate_codes(long, seed=3, max_tokens=40, chunk_tokens=40))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        streamed = np.concatenate(list(onnx_tts.stream(TEXTS[0], seed=3, max_tokens=60, chunk_seconds=0.1)))
        whole = onnx_tts.generate(TEXTS[0], seed=3, max_tokens=60)
    np.testing.assert_allclose(streamed, whole, atol=1e-5)


def test_codec_graph_decodes_like_pytorch(gqa):
    from fastdia.codecs.dac.codec import DAC

    _, _, onnx_tts, _ = gqa
    ref = DAC.from_pretrained("tiny-random", device="cpu", dtype="float32")
    assert onnx_tts.codec.codec_id == ref.codec_id
    rng = np.random.RandomState(0)
    items = [rng.randint(0, 1024, (n, 9)) for n in (30, 17)]
    for got, want in zip(onnx_tts.decode(items), ref.decode(items)):  # a padded batch: lengths input
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_manifest_checker_and_ops(gqa):
    _, _, _, folder = gqa
    info, paths = _graphs(folder)
    raw = json.loads((folder / "config.json").read_text())
    assert raw["model_type"] == "dia" and info["quantize"] is None and not info["static"]
    dec = info["graphs"]["decoder"]
    names = [i["name"] for i in dec["inputs"]]
    assert names[:3] == ["tokens", "positions", "text_mask"] and "cache_k_0" in names and "cross_v_2" in names
    assert [o["name"] for o in dec["outputs"]][:2] == ["logits", "new_k_0"]
    assert dec["inputs"][0]["shape"] == ["rows", "frames", 9]
    assert [o["name"] for o in info["graphs"]["encoder"]["outputs"]][0] == "cross_k_0"
    for name, path in paths.items():
        onnx.checker.check_model(str(path))
        ops = set(info["graphs"][name]["op_types"])
        assert _domains(path) == {"ai.onnx"}, name  # no custom or contrib ops in float graphs
        assert not ops & {"If", "Loop", "Scan"}, name
        assert info["graphs"][name]["opset"] == {"ai.onnx": 18}
    print({name: g["op_types"] for name, g in info["graphs"].items()})


def test_say_cli_runs_an_export(gqa, tmp_path):
    import soundfile as sf

    from fastdia.cli.main import main

    _, _, _, folder = gqa
    out = tmp_path / "a.wav"
    assert main(["say", TEXTS[1], "--model", str(folder), "-o", str(out), "--seed", "1", "--max-tokens", "40",
                 "-q"]) == 0
    wave, sr = sf.read(out)
    assert sr == 44100 and len(wave) > 0


# ------------------------------------------------------------------------------ v0.1 + early EOS


def test_v01_cross_rope_early_eos_batch_and_prompt(v01_eos):
    torch_tts, onnx_tts = v01_eos
    ours = onnx_tts.generate_codes(TEXTS, temperature=0, max_tokens=80)
    ref = torch_tts.generate_codes(TEXTS, temperature=0, max_tokens=80)
    assert min(len(o) for o in ours) < 80 - 16, "EOS never came early"
    for o, r in zip(ours, ref):
        np.testing.assert_array_equal(o, r)
    prompt = np.random.RandomState(5).randint(0, 1024, (7, 9))
    np.testing.assert_array_equal(
        onnx_tts.generate_codes(TEXTS[0], temperature=0, max_tokens=60, audio_prompt=prompt),
        torch_tts.generate_codes(TEXTS[0], temperature=0, max_tokens=60, audio_prompt=prompt))


# ------------------------------------------------------------------------------ static


def test_static_export_has_fixed_shapes_and_matches(static):
    torch_tts, onnx_tts, folder = static
    info, paths = _graphs(folder)
    assert info["static"] and onnx_tts.layout == "onnx-static"
    for name, g in info["graphs"].items():
        for value in g["inputs"] + g["outputs"]:
            assert all(isinstance(d, int) for d in value["shape"]), (name, value)
        assert not set(g["op_types"]) & {"If", "Loop", "Scan", "Shape", "Range"}, name
        onnx.checker.check_model(str(paths[name]))
    assert info["graphs"]["decoder"]["inputs"][0]["shape"] == [2, 1, 9]
    assert info["graphs"]["decoder"]["inputs"][3]["shape"][2] == 96  # cross K over the padded text
    for kw in (dict(), dict(audio_prompt=np.random.RandomState(2).randint(0, 1024, (5, 9)))):
        np.testing.assert_array_equal(onnx_tts.generate_codes(TEXTS[0], temperature=0, max_tokens=60, **kw),
                                      torch_tts.generate_codes(TEXTS[0], temperature=0, max_tokens=60, **kw))
    ours = onnx_tts.generate_codes(TEXTS[:2], seed=4, max_tokens=50)  # 4 rows: two calls of 2 per step
    for o, r in zip(ours, torch_tts.generate_codes(TEXTS[:2], seed=4, max_tokens=50)):
        np.testing.assert_array_equal(o, r)
    with pytest.raises(GenerationError, match="static export"):
        onnx_tts.generate_codes(TEXTS[1], max_tokens=65)


# ------------------------------------------------------------------------------ quantized


@pytest.mark.parametrize("mode", ["int8", "int4", "qdq"])
def test_quantized_exports_run_and_agree(gqa, mode, tmp_path):
    from fastdia.backends.onnx.requantize import quantize_export

    _, _, float_tts, folder = gqa
    info = quantize_export(folder, tmp_path / mode, mode, block_size=16, log=lambda line: None)
    paths = {name: tmp_path / mode / g["file"] for name, g in info["graphs"].items()}
    for name, path in paths.items():
        onnx.checker.check_model(str(path))
    dec_ops = set(info["graphs"]["decoder"]["op_types"])
    domains = _domains(paths["decoder"]) | _domains(paths["encoder"])
    if mode == "int4":
        assert "com.microsoft.MatMulNBits" in dec_ops and domains == {"ai.onnx", "com.microsoft"}
        levels = {a.i for n in onnx.load(str(paths["decoder"]), load_external_data=False).graph.node
                  if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"}
        assert levels == {4}  # int8 activations: onnxruntime's integer kernels
        assert all(op.startswith("com.microsoft.") is False or op == "com.microsoft.MatMulNBits" for op in dec_ops)
    else:
        assert domains == {"ai.onnx"}  # int8 and QDQ: standard ops only
        assert ({"MatMulInteger", "DynamicQuantizeLinear"} if mode == "int8"
                else {"QuantizeLinear", "DequantizeLinear"}) <= dec_ops
        assert "MatMulNBits" not in " ".join(dec_ops)
    if mode == "qdq":
        assert info["graphs"]["decoder"]["opset"] == {"ai.onnx": 21}
    quant = _quiet_load(tmp_path / mode)
    codes = quant.generate_codes(TEXTS[0], seed=1, max_tokens=48)
    assert codes.shape[1] == 9 and len(codes) > 0
    result = top1_agreement(float_tts.model, quant.model, max_tokens=64)
    size = sum(g["bytes"] for g in info["graphs"].values())
    float_size = sum(g["bytes"] for g in read_manifest(folder)["graphs"].values())
    print(f"{mode}: {size / 1e6:.2f} MB (float32 {float_size / 1e6:.2f} MB), top-1 agreement {result['top1']:.4f}")
    assert result["top1"] > 0.6


def test_direct_qdq_export_calibrates_on_its_own_float_graphs(tmp_path):
    """`export_onnx(..., quantize="qdq")` in one go (what `fastdia export onnx --quantize qdq`
    runs): the float graphs it calibrates on are a complete export first."""
    from fastdia.backends.onnx.common import ExportOptions
    from fastdia.dia1.onnx import export_onnx

    options = ExportOptions(quantize="qdq", codec="none", calibration_scripts=(TEXTS[0],), calibration_max_tokens=24)
    info = export_onnx("tiny-random", tmp_path / "qdq", options, log=lambda line: None)
    assert info["quantize"] == "qdq" and not (tmp_path / "qdq" / ".float").exists()
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(info["graphs"]["decoder"]["op_types"])
    codes = _quiet_load(tmp_path / "qdq").generate_codes(TEXTS[0], seed=1, max_tokens=40)
    assert codes.shape[1] == 9 and len(codes) > 0


# ------------------------------------------------------------------------------ errors


def test_cli_errors_are_one_line(capsys, tmp_path):
    from fastdia.cli.main import main

    assert main(["export", "onnx", "tiny-random", str(tmp_path / "x"), "--static", "--rows", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastdia: error:") and "rows" in err[0]
    with pytest.raises(GenerationError, match="backend"):
        Dia.from_pretrained("tiny-random", backend="tensorrt")
