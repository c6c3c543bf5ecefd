"""`fastdia info`: this machine's CPU paths, and a model's resolved config, size, layout and dtype."""

from __future__ import annotations

import argparse
import json

from .common import add_model_flags


def _info_dia2(args: argparse.Namespace) -> int:
    import dataclasses

    from ..dia2.api import Dia2

    tts = Dia2.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    cfg = tts.config
    info = {"model": args.model, "family": "dia2", "parameters": tts.num_parameters(), "device": str(tts.device),
            "dtype": str(tts.dtype).removeprefix("torch."), "codec": str(tts.codec_source),
            "config": dataclasses.asdict(cfg), "system": _system()}
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    d, dp, data = cfg.decoder, cfg.depformer, cfg.data
    print(f"model              {args.model}   (Dia2)")
    print(f"parameters         {info['parameters']:,}")
    print(f"device / dtype     {info['device']} / {info['dtype']}")
    print(f"decoder            {d.n_layer} layers, width {d.d_model}, MLP {d.d_ff}, {d.n_head} heads x {d.head_dim} "
          f"({d.n_kv_head} KV)")
    print(f"depformer          {cfg.n_stages} stages, {dp.n_layer} layers, width {dp.d_model}, MLP {dp.d_ff}, "
          f"weight groups {list(cfg.runtime.weights_schedule)}")
    print(f"codebooks          {data.n_codebooks} x {data.codebook_size}, delays {list(data.delay_pattern)}")
    print(f"text               vocab {data.text_vocab_size}, second stream {data.second_stream_ahead} words ahead")
    print(f"context            {cfg.runtime.max_context_steps} steps ({cfg.runtime.max_context_steps / 12.5:.0f} s)")
    print(f"codec              {info['codec']}")
    _print_system(info["system"])
    return 0


def _system() -> dict:
    from ..backends.cpu.report import cpu_report

    return cpu_report()


def _print_system(report: dict) -> None:
    from ..backends.cpu.report import report_lines

    print("\n".join(report_lines(report)))


def cmd_info(args: argparse.Namespace) -> int:
    from .. import Dia
    from ..dia2.config import is_dia2

    if args.model is None:  # the machine alone: CPU, features, what each variant runs on, versions
        report = _system()
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            _print_system(report)
        return 0
    if is_dia2(args.model):
        return _info_dia2(args)
    tts = Dia.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    cfg = tts.config
    info = {
        "model": args.model,
        "checkpoint_layout": tts.layout,
        "config_format": cfg.source_format,
        "parameters": tts.num_parameters(),
        "device": str(tts.device),
        "dtype": str(tts.dtype).removeprefix("torch."),
        "cross_attention_rope": cfg.cross_attn_rope,
        "config": cfg.to_dict(),
        "system": _system(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    e, d = cfg.encoder, cfg.decoder
    print(f"model              {args.model}")
    print(f"checkpoint layout  {tts.layout}   (config format: {cfg.source_format})")
    print(f"parameters         {info['parameters']:,}")
    print(f"device / dtype     {info['device']} / {info['dtype']}")
    print(f"encoder            {e.n_layer} layers, width {e.d_model}, MLP {e.d_ff}, "
          f"{e.n_head} heads x {e.head_dim} ({e.n_kv_head} KV), vocab {e.vocab_size}, {e.max_positions} positions")
    print(f"decoder            {d.n_layer} layers, width {d.d_model}, MLP {d.d_ff}, "
          f"{d.n_head} heads x {d.head_dim} ({d.n_kv_head} KV), {d.n_channels} channels x {d.vocab_size}, "
          f"{d.max_positions} positions")
    print(f"cross-attention    {d.cross_n_head} heads x {d.cross_head_dim} ({d.cross_n_kv_head} KV), "
          f"RoPE {'on (v0.1 weights)' if cfg.cross_attn_rope else 'off'}")
    print(f"tokens             BOS {cfg.bos_id}, EOS {cfg.eos_id}, PAD {cfg.pad_id}; "
          f"delay pattern {list(cfg.delay_pattern)}")
    print(f"norm eps / RoPE    {cfg.norm_eps} / base {cfg.rope_theta:g}")
    _print_system(info["system"])
    return 0


def add_info(sub) -> None:
    p = sub.add_parser("info", help="show this machine's CPU paths, and a model's config, size, layout and dtype",
                       description="Without MODEL: the CPU, its ISA features, the kernel set and fallback each "
                                   "variant (float32, bfloat16, int8, int4) uses here, and library versions. "
                                   "With MODEL: its resolved config, size, checkpoint layout and dtype too.")
    add_model_flags(p, positional=True)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)
