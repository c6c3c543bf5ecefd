"""`fastdia convert`: save a model in fastdia's layout, optionally int8/int4, for fast loading."""

from __future__ import annotations

import argparse


def cmd_convert(args: argparse.Namespace) -> int:
    from ..loader import convert

    summary = convert(args.model, args.out_dir, args.quantize, args.group_size, args.dtype)
    print(f"wrote {summary['out']} ({summary['quantize']}, {summary['bytes'] / 1e9:.2f} GB) "
          f"in {summary['seconds']:.1f} s; load it with fastdia.load({summary['out']!r}) "
          f"or --model {summary['out']}")
    return 0


def add_convert(sub) -> None:
    p = sub.add_parser("convert", help="save a model in fastdia's layout, optionally int8/int4, for fast loading",
                       description="Save a checkpoint in fastdia's own layout, optionally quantized, for fast loads.")
    p.add_argument("model", help="hub id, local directory, or preset")
    p.add_argument("out_dir", help="directory to write (config.json + model.safetensors)")
    p.add_argument("--quantize", choices=["none", "int8", "int4"], default=None,
                   help="weight-only quantization (default: none, float in our fused layout)")
    p.add_argument("--group-size", type=int, default=None, help="int4 group size (32, 64, 128, 256; default 32)")
    p.add_argument("--dtype", default="float32", help="dtype of the float tensors: float32 or bfloat16")
    p.set_defaults(func=cmd_convert)
