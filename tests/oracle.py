"""Tiny random reference models built with transformers (the oracle), saved in every layout.

The conversion to the original nari-labs layout here is written independently of
fastdia.dia1.layouts (straight from spec 2.3), so a bug there cannot hide in both.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from transformers import DiaConfig as HFConfig
from transformers import DiaDecoderConfig, DiaEncoderConfig, DiaForConditionalGeneration

BOS, PAD, EOS = 1026, 1025, 1024
DELAY = [0, 8, 9, 10, 11, 12, 13, 14, 15]

# Several shapes: MHA and GQA ratios 2 and 4 (decoder) and 2 (encoder), head dims that are not 128,
# 1-3 layers.
SHAPES = {
    "mha-1layer": dict(
        enc=dict(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                 num_key_value_heads=2, head_dim=24),
        dec=dict(num_hidden_layers=1, hidden_size=48, intermediate_size=96, num_attention_heads=2,
                 num_key_value_heads=2, head_dim=24, cross_num_attention_heads=2, cross_num_key_value_heads=2,
                 cross_head_dim=24),
    ),
    "gqa2-2layers": dict(
        enc=dict(num_hidden_layers=2, hidden_size=32, intermediate_size=80, num_attention_heads=4,
                 num_key_value_heads=4, head_dim=16),
        dec=dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, cross_num_attention_heads=4, cross_num_key_value_heads=4,
                 cross_head_dim=16),
    ),
    "gqa4-3layers": dict(
        enc=dict(num_hidden_layers=3, hidden_size=40, intermediate_size=64, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=20),
        dec=dict(num_hidden_layers=3, hidden_size=64, intermediate_size=112, num_attention_heads=8,
                 num_key_value_heads=2, head_dim=20, cross_num_attention_heads=4, cross_num_key_value_heads=4,
                 cross_head_dim=12),
    ),
}


def hf_config(shape: str) -> HFConfig:
    s = SHAPES[shape]
    enc = DiaEncoderConfig(**s["enc"])
    dec = DiaDecoderConfig(**s["dec"], cross_hidden_size=s["enc"]["hidden_size"])
    return HFConfig(encoder_config=enc, decoder_config=dec)


def hf_model(shape: str, seed: int = 0) -> DiaForConditionalGeneration:
    """A random float32 transformers Dia, with weights scaled so logits have real spread
    (the default 0.02 init gives near-ties that make greedy decoding fragile)."""
    torch.manual_seed(seed)
    model = DiaForConditionalGeneration(hf_config(shape)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif "embed" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
    return model


def to_nari_state(model: DiaForConditionalGeneration) -> dict[str, torch.Tensor]:
    """transformers names/shapes -> original names with DenseGeneral shapes (inverse of spec 2.3)."""
    cfg = model.config
    e, d = cfg.encoder_config, cfg.decoder_config
    out = {}
    for name, w in model.state_dict().items():
        w = w.detach().clone()
        if name == "logits_dense.weight":
            out["decoder.logits_dense.weight"] = w.t().reshape(d.hidden_size, d.num_channels, d.vocab_size)
            continue
        if name == "model.decoder.embeddings.embed.weight":
            for c, chunk in enumerate(w.split(d.vocab_size)):
                out[f"decoder.embeddings.{c}.weight"] = chunk.clone()
            continue
        assert name.startswith("model."), name
        new = name[len("model."):]
        side = e if new.startswith("encoder.") else d
        if "norm" in new or new == "encoder.embedding.weight":
            out[new] = w
        elif new.endswith("mlp.gate_up_proj.weight"):
            out[new.replace("gate_up_proj", "wi_fused")] = w.t().reshape(w.shape[1], 2, side.intermediate_size)
        elif new.endswith("mlp.down_proj.weight"):
            out[new.replace("down_proj", "wo")] = w.t().contiguous()
        elif new.endswith("o_proj.weight"):
            hd = side.cross_head_dim if "cross_attention" in new else side.head_dim
            out[new] = w.t().reshape(-1, hd, w.shape[0])
        elif new.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            hd = side.cross_head_dim if "cross_attention" in new else side.head_dim
            out[new] = w.t().reshape(w.shape[1], -1, hd)
        else:
            raise AssertionError(f"unhandled tensor {name}")
    return {k: v.contiguous() for k, v in out.items()}


def nested_config(model: DiaForConditionalGeneration) -> dict:
    """The original v0.1 nested config.json for the same architecture."""
    e, d = model.config.encoder_config, model.config.decoder_config
    return {
        "version": "0.1",
        "model": {
            "encoder": {"n_layer": e.num_hidden_layers, "n_embd": e.hidden_size, "n_hidden": e.intermediate_size,
                        "n_head": e.num_attention_heads, "head_dim": e.head_dim},
            "decoder": {"n_layer": d.num_hidden_layers, "n_embd": d.hidden_size, "n_hidden": d.intermediate_size,
                        "gqa_query_heads": d.num_attention_heads, "kv_heads": d.num_key_value_heads,
                        "gqa_head_dim": d.head_dim, "cross_query_heads": d.cross_num_attention_heads,
                        "cross_head_dim": d.cross_head_dim},
            "src_vocab_size": 256, "tgt_vocab_size": 1028, "dropout": 0.0,
            "normalization_layer_epsilon": 1e-5, "weight_dtype": "float32",
            "rope_min_timescale": 1, "rope_max_timescale": 10000,
        },
        "training": {"dtype": "float32"},
        "data": {"text_length": 1024, "audio_length": 3072, "channels": 9, "text_pad_value": 0,
                 "audio_eos_value": EOS, "audio_pad_value": PAD, "audio_bos_value": BOS,
                 "delay_pattern": DELAY},
    }


def save(model: DiaForConditionalGeneration, directory: Path, layout: str) -> Path:
    """Write `model` as a checkpoint directory.

    layouts: "transformers" (save_pretrained), "nari-safetensors" (original names in
    model.safetensors with the transformers-style config, as the 0626 repo may ship),
    "nari-pth" (original names in dia-v0_1.pth, transformers-style config).
    """
    directory.mkdir(parents=True, exist_ok=True)
    if layout == "transformers":
        model.save_pretrained(directory)
        return directory
    model.config.to_json_file(directory / "config.json")
    state = to_nari_state(model)
    if layout == "nari-safetensors":
        save_file(state, str(directory / "model.safetensors"))
    elif layout == "nari-pth":
        torch.save(state, directory / "dia-v0_1.pth")
    else:
        raise ValueError(layout)
    return directory


def save_nested(model: DiaForConditionalGeneration, directory: Path) -> Path:
    """The v0.1 repository layout: nested config.json + dia-v0_1.pth with original names."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(nested_config(model)))
    torch.save(to_nari_state(model), directory / "dia-v0_1.pth")
    return directory


# ---------------------------------------------------------------------------------------------
# Running the oracle


def delayed(undelayed: torch.Tensor) -> torch.Tensor:
    """(B, T, C) -> delayed grid with BOS before the start (loops, independent of fastdia)."""
    b, t, c = undelayed.shape
    out = torch.empty_like(undelayed)
    for ch in range(c):
        for row in range(t):
            src = row - DELAY[ch]
            out[:, row, ch] = BOS if src < 0 else undelayed[:, src, ch]
    return out


def text_inputs(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [list(t.encode().replace(b"[S1]", b"\x01").replace(b"[S2]", b"\x02")) for t in texts]
    s = max(len(i) for i in ids)
    tokens = torch.zeros((len(ids), s), dtype=torch.long)
    for k, i in enumerate(ids):
        tokens[k, : len(i)] = torch.tensor(i)
    return tokens, (tokens != 0).long()


@torch.no_grad()
def hf_greedy(model, texts: list[str], max_new_tokens: int, cfg_scale: float = 3.0, top_k: int = 45,
              prompt: torch.Tensor | None = None) -> list[torch.Tensor]:
    """transformers generate (greedy) -> per item reverted codes (T_i, 9) of the new frames only."""
    tokens, mask = text_inputs(texts)
    # The delayed start grid, as DiaProcessor builds it: BOS, prompt frames, then 15 PAD rows
    # (PAD is transformers' "to generate" marker); teacher forcing comes from this grid.
    b = len(texts)
    p = 0 if prompt is None else prompt.shape[0]
    assert prompt is None or b == 1
    undel = torch.full((b, 1 + p + 15, 9), PAD, dtype=torch.long)
    undel[:, 0] = BOS
    if p:
        undel[0, 1:1 + p] = prompt
    grid = delayed(undel)
    kwargs = dict(decoder_input_ids=grid, decoder_attention_mask=torch.ones((b, grid.shape[1]), dtype=torch.long))
    out = model.generate(input_ids=tokens, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                         guidance_scale=cfg_scale, top_k=top_k, **kwargs)
    results = []
    for seq in out:  # (T, 9) delayed
        t = seq.shape[0]
        frames = torch.stack([seq[DELAY[c]: t - 15 + DELAY[c], c] for c in range(9)], dim=1)  # reverted
        start = 1 + p
        ch0 = seq[:, 0]
        eos = (ch0[start:] == EOS).nonzero()
        end = start + int(eos[0]) if len(eos) else frames.shape[0]
        results.append(frames[start:end])
    return results
