"""The `fastdia` command: thin subcommands over the library.

Every flag maps to a library parameter. Errors a user can fix (FastDiaError) print one line and
exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

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


def _read_script(args: argparse.Namespace) -> str:
    from .errors import ScriptError

    if args.text is not None and args.input is not None:
        raise ScriptError("give the script either as an argument or with --input, not both")
    if args.input is None:
        if args.text is None:
            raise ScriptError('no script given: fastdia say "[S1] Hello. [S2] Hi!" -o out.wav (or --input FILE, or --input -)')
        return args.text
    if args.input == "-":
        return sys.stdin.read()
    try:
        with open(args.input, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise ScriptError(f"cannot read script file {args.input!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ScriptError(f"script file {args.input!r} is not UTF-8 text") from None


def cmd_say(args: argparse.Namespace) -> int:
    import time

    from .audio import check_output_path, read_audio
    from .text import validate_script

    # Everything that can be checked without the model is checked first, so a typo never
    # costs a model load or a generation.
    script = _read_script(args)
    validate_script(script)
    if args.prompt_text is not None:
        validate_script(args.prompt_text, what="--prompt-text")
    out_path = check_output_path(args.output)
    prompt = None
    if args.audio_prompt is not None:
        prompt = read_audio(args.audio_prompt)  # (wave, sample_rate); errors name the file
    elif args.prompt_text is not None:
        from .errors import GenerationError

        raise GenerationError("--prompt-text is the transcript of --audio-prompt; give both")

    from . import Dia

    tts = Dia.from_pretrained(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize,
                              codec=args.codec)
    if tts.is_random:
        print(f"note: {args.model} has random weights: its audio is noise, useful only for trials",
              file=sys.stderr)
    sampling = dict(max_tokens=args.max_tokens, cfg_scale=args.cfg_scale, temperature=args.temperature,
                    top_p=args.top_p, cfg_filter_top_k=args.cfg_filter_top_k, seed=args.seed)
    start = time.perf_counter()
    codes = tts.generate_codes(
        script,
        audio_prompt=None if prompt is None else prompt[0],
        sample_rate=None if prompt is None else prompt[1],
        prompt_text=args.prompt_text,
        progress=not args.quiet,
        **sampling,
    )
    gen_seconds = time.perf_counter() - start
    audio = tts.decode(codes)
    tts.save_audio(out_path, audio, loudness=args.loudness)
    total = time.perf_counter() - start
    seconds = len(audio) / tts.sample_rate
    if not args.quiet:
        print(f"wrote {out_path}: {seconds:.2f} s of audio ({len(codes)} frames) in {total:.1f} s "
              f"(generation {gen_seconds:.1f} s, {seconds / total if total else 0:.2f}x realtime)", file=sys.stderr)
    return 0


def _add_say(sub) -> None:
    from .generation.options import GenerationConfig

    d = GenerationConfig()
    p = sub.add_parser("say", help="speak a dialogue script into an audio file",
                       description='Speak a script such as "[S1] Hello. [S2] Hi! (laughs)" into an audio file.')
    p.add_argument("text", nargs="?", help="the script; or use --input")
    p.add_argument("-i", "--input", metavar="FILE", help="read the script from FILE ('-' for stdin)")
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="output file: .wav, .flac, .ogg or .mp3")
    _add_model_flags(p)
    p.add_argument("--codec", default=None,
                   help="DAC codec: hub id, directory or file (default: descript/dac_44khz; presets use their own)")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None, help="weight-only quantization")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens,
                   help="decoder position limit incl. any prompt; 86 = 1 s (default: %(default)s)")
    p.add_argument("--cfg-scale", type=float, default=d.cfg_scale, help="guidance strength (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=d.top_p, help="nucleus mass (default: %(default)s)")
    p.add_argument("--cfg-filter-top-k", type=int, default=d.cfg_filter_top_k,
                   help="candidates kept by the guidance filter (default: %(default)s)")
    p.add_argument("--audio-prompt", metavar="FILE", help="voice to clone: an audio file (5-10 s works best)")
    p.add_argument("--prompt-text", metavar="TEXT", help="transcript of --audio-prompt, with speaker tags")
    p.add_argument("--loudness", type=float, default=None, metavar="LUFS",
                   help="normalise the output to this loudness, e.g. -16 (peaks kept under -1 dBTP)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_say)


def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoints.convert import convert

    summary = convert(args.model, args.out_dir, args.quantize, args.group_size, args.dtype)
    print(f"wrote {summary['out']} ({summary['quantize']}, {summary['bytes'] / 1e9:.2f} GB) "
          f"in {summary['seconds']:.1f} s; load it with Dia.from_pretrained({summary['out']!r}) "
          f"or --model {summary['out']}")
    return 0


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="save a model in fastdia's layout, optionally int8/int4, for fast loading",
                       description="Save a checkpoint in fastdia's own layout, optionally quantized, for fast loads.")
    p.add_argument("model", help="hub id, local directory, or preset")
    p.add_argument("out_dir", help="directory to write (config.json + model.safetensors)")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None,
                   help="weight-only quantization (default: none, float in our fused layout)")
    p.add_argument("--group-size", type=int, default=None, help="int4 group size (32, 64, 128, 256; default 32)")
    p.add_argument("--dtype", default="float32", help="dtype of the float tensors: float32 or bfloat16")
    p.set_defaults(func=cmd_convert)


def _add_bench(sub) -> None:
    from . import bench

    p = sub.add_parser("bench", help="measure decode speed, memory and quantization quality",
                       description=bench.__doc__.split("\n\n")[0])
    bench.add_arguments(p)
    p.set_defaults(func=bench.cmd_bench)


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

    _add_say(sub)
    _add_bench(sub)
    _add_convert(sub)
    return parser


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
