"""The `fastdia` command: thin subcommands over the library.

Every flag maps to a library parameter. Errors a user can fix (FastDiaError) print one line and
exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from .errors import FastDiaError

EXIT_USAGE = 2


def _add_model_flags(p: argparse.ArgumentParser, positional: bool = False) -> None:
    if positional:
        p.add_argument("model", help="hub id, local directory, or preset (tiny-random, dia-1.6b-random)")
    else:
        p.add_argument("--model", default="nari-labs/Dia-1.6B-0626",
                       help="hub id, local directory, or preset (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--dtype", default="auto",
                   help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16 (default: auto)")


def cmd_info(args: argparse.Namespace) -> int:
    from . import Dia

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
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastdia", description="Fast inference for Nari Labs' Dia dialogue text-to-speech models."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("info", help="show a model's resolved config, size, checkpoint layout and dtype")
    _add_model_flags(p, positional=True)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Subcommands defined in other modules register themselves here (keeps this file thin).
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except FastDiaError as exc:
        print(f"fastdia: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fastdia: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
