"""`fastdia export onnx MODEL OUT_DIR`: the argparse wiring (the work is in export.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import FastDiaError


class MissingExtraError(FastDiaError):
    """The onnx extra is not installed."""


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a model to another runtime's format (onnx)",
                       description="Export a model for another runtime.")
    formats = p.add_subparsers(dest="format", metavar="FORMAT")
    formats.required = True
    o = formats.add_parser(
        "onnx", help="ONNX graphs (encoder, decoder step, DAC decoder) + a manifest for onnxruntime and NPUs",
        description="Write encoder.onnx, decoder.onnx, codec.onnx and config.json (the manifest) to OUT_DIR "
                    "(Dia2: decoder.onnx, depformer_<group>.onnx per weight group, codec.onnx with Mimi). "
                    "Load the folder with Dia.from_pretrained(OUT_DIR) (Dia2.from_pretrained for Dia2) or "
                    "`fastdia say --model OUT_DIR`.")
    o.add_argument("model", help="hub id, local directory, or preset (a float checkpoint)")
    o.add_argument("out_dir", help="directory to write")
    o.add_argument("--quantize", choices=["int8", "int4", "qdq"], default=None,
                   help="int8: int8 weights, dynamic activations (MatMulInteger); int4: onnxruntime MatMulNBits; "
                        "qdq: static QDQ, uint8 weights / uint16 activations, calibrated (default: float32)")
    o.add_argument("--static", action="store_true",
                   help="fixed shapes for NPUs (QNN): batch, text length and cache length fixed, one frame per call")
    o.add_argument("--rows", type=int, default=2, help="--static batch in CFG rows, 2 per utterance (default 2)")
    o.add_argument("--text-len", type=int, default=1024, help="--static text length in bytes (default 1024)")
    o.add_argument("--cache-len", type=int, default=None,
                   help="--static self-attention cache length (default: the model's 3072 positions; "
                        "Dia2: max_context_steps + 1)")
    o.add_argument("--codec-frames", type=int, default=256, help="--static codec window in frames (default 256)")
    o.add_argument("--block-size", type=int, default=32, help="int4 block size (default 32)")
    o.add_argument("--accuracy-level", type=int, choices=range(5), default=4,
                   help="int4 MatMulNBits accuracy level: 4 = int8 activations, integer kernels (default); "
                        "0 = dequantize to float32")
    o.add_argument("--codec", default=None,
                   help="DAC source for codec.onnx (default descript/dac_44khz; tiny-random for presets; Dia2: a Mimi "
                        "source, default the model's); 'none' skips it")
    o.add_argument("--agreement", action="store_true",
                   help="after a quantized export, report top-1 agreement with the float32 graphs")
    o.set_defaults(func=cmd_export_onnx)


def cmd_export_onnx(args: argparse.Namespace) -> int:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(f"export onnx needs the onnx extra: pip install 'fastdia[onnx]' ({exc.name} is missing)")
    from ..dia2.config import is_dia2
    from ..backends.onnx.common import ExportOptions
    from ..dia1.onnx import export_onnx

    options = ExportOptions(static=args.static, quantize=args.quantize, rows=args.rows, text_len=args.text_len,
                            cache_len=args.cache_len, codec_frames=args.codec_frames, block_size=args.block_size,
                            accuracy_level=args.accuracy_level,
                            codec=args.codec)
    dia2 = is_dia2(args.model)
    if dia2:  # decoder, depformer per weight group, Mimi decoder (fastdia.backends.onnx.dia2_export)
        from ..dia2.onnx import export_dia2_onnx as export_onnx
    info = export_onnx(args.model, args.out_dir, options, log=lambda line: print(f"  {line}", flush=True))
    total = sum(g["bytes"] for g in info["graphs"].values())
    for name, g in info["graphs"].items():
        print(f"{name}: {g['file']} {g['bytes'] / 1e6:.1f} MB")
    print(f"wrote {args.out_dir} ({info['quantize'] or 'float32'}{', static' if info['static'] else ''}, "
          f"{total / 1e9:.2f} GB) in {info['export_seconds']:.1f} s; load it with "
          f"{'Dia2' if dia2 else 'Dia'}.from_pretrained({args.out_dir!r}) or --model {args.out_dir}")
    if args.agreement and args.quantize and dia2:
        from ..backends.onnx.dia2_compare import top1_agreement_dia2

        reference = args.out_dir.rstrip("/") + "-float32"
        if not (Path(reference) / "config.json").is_file():
            export_onnx(args.model, reference, ExportOptions(static=args.static, rows=args.rows,
                                                             cache_len=args.cache_len, codec="none"), log=lambda line: None)
        result = top1_agreement_dia2(reference, args.out_dir)
        print(f"top-1 agreement with float32: {result['top1']:.4f} over {result['positions']} cells "
              f"(max |logit diff| {result['max_abs_logit_diff']:.3g}; float32 export in {reference})")
    elif args.agreement and args.quantize:
        from ..backends.onnx.dia1_compare import top1_agreement
        from ..backends.onnx.dia1_runtime import export_cache_dir
        from ..dia1.onnx import load_onnx

        reference = load_onnx(args.model)[0].model  # the float32 export, cached
        candidate = load_onnx(args.out_dir)[0].model
        result = top1_agreement(reference, candidate)
        print(f"top-1 agreement with float32: {result['top1']:.4f} over {result['positions']} cells "
              f"(max |logit diff| {result['max_abs_logit_diff']:.3g}; float32 export in {export_cache_dir(args.model, None)})")
    return 0
