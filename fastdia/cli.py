"""The `fastdia` command: thin subcommands over the library.

Every flag maps to a library parameter. Errors a user can fix (FastDiaError) print one line and
exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import FastDiaError

EXIT_USAGE = 2


def _add_model_flags(p: argparse.ArgumentParser, positional: bool = False) -> None:
    if positional:
        p.add_argument("model", nargs="?", help="(optional) ""hub id, local directory, or preset (tiny-random, dia-1.6b-random, "
                                     "dia2-tiny-random, dia2-2b-random)")
    else:
        p.add_argument("--model", default="nari-labs/Dia-1.6B-0626",
                       help="hub id, local directory, or preset (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--dtype", default="auto",
                   help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16 (default: auto)")


def _info_dia2(args: argparse.Namespace) -> int:
    import dataclasses

    from .api_dia2 import Dia2

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
    from .backends.cpu.report import cpu_report

    return cpu_report()


def _print_system(report: dict) -> None:
    from .backends.cpu.report import report_lines

    print("\n".join(report_lines(report)))


def cmd_info(args: argparse.Namespace) -> int:
    from . import Dia
    from .config_dia2 import is_dia2

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


def _parse_voices(specs: list[str] | None, voices_dir: str | None):
    """--voice NAME (the whole script) or --voice S1=NAME --voice S2=NAME -> `voice=` value,
    each name checked against the store before any model is loaded."""
    from .errors import GenerationError
    from .voices import VoiceStore

    if not specs:
        return None
    store = VoiceStore(voices_dir)
    whole, per_speaker = None, {}
    for spec in specs:
        speaker, sep, name = spec.partition("=")
        if not sep:
            if whole is not None or len(specs) > 1:
                raise GenerationError("give one --voice NAME for the whole script, or --voice S1=NAME --voice S2=NAME")
            whole = store.get(spec)
            continue
        key = speaker.strip().strip("[]").upper()
        if key not in ("S1", "S2"):
            raise GenerationError(f"--voice {spec!r}: the speaker must be S1 or S2 (e.g. --voice S1=alice)")
        if key in per_speaker:
            raise GenerationError(f"--voice gives {key} twice")
        per_speaker[key] = store.get(name)
    return whole if whole is not None else per_speaker


def cmd_say(args: argparse.Namespace) -> int:
    import time
    import warnings

    from .audio import AudioStreamWriter, check_output_path, read_audio
    from .errors import GenerationError
    from .text import MAX_SCRIPT_BYTES, split_script, validate_script

    from .config_dia2 import is_dia2

    if is_dia2(args.model):
        from .cli_dia2 import say_dia2

        return say_dia2(args, read_script=_read_script, refuse=_refuse, parse_voices=_parse_voices)
    _refuse(args, "a Dia-1 model", ("text_temperature", "top_k", "cfg_filter_k", "max_steps", "prefix_speaker_1",
                                    "prefix_speaker_2", "prefix_text_1", "prefix_text_2", "prefix_words_1",
                                    "prefix_words_2", "include_prefix", "timestamps"))
    # Everything that can be checked without the model is checked first, so a typo never
    # costs a model load or a generation.
    script = _read_script(args)
    script = validate_script(script, max_tokens=MAX_SCRIPT_BYTES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # said once, when the script is spoken
        split_script(script, args.chunk_tokens)  # a bad --chunk-tokens or an unspeakable run
    if args.prompt_text is not None:
        validate_script(args.prompt_text, what="--prompt-text")
    to_stdout = args.output == "-"
    streaming = args.stream or to_stdout
    out_path = None if to_stdout else check_output_path(args.output)
    if streaming and args.loudness is not None:
        raise GenerationError("--loudness needs the whole audio; it cannot be used with --stream or -o -")
    prompt = None
    if args.audio_prompt is not None:
        prompt = read_audio(args.audio_prompt)  # (wave, sample_rate); errors name the file
    elif args.prompt_text is not None:
        raise GenerationError("--prompt-text is the transcript of --audio-prompt; give both")
    voice = _parse_voices(args.voice, args.voices_dir)
    if voice is not None and prompt is not None:
        raise GenerationError("give --voice or --audio-prompt (with --prompt-text), not both")

    from . import Dia

    tts = Dia.from_pretrained(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize,
                              codec=args.codec, voices_dir=args.voices_dir)
    if tts.is_random:
        from .api import NoiseModelWarning

        print(f"note: {args.model} has random weights: its audio is noise, useful only for trials",
              file=sys.stderr)
        warnings.simplefilter("ignore", NoiseModelWarning)  # said once, just above
    sampling = {k: v for k, v in dict(max_tokens=args.max_tokens, cfg_scale=args.cfg_scale,
                                      temperature=args.temperature, top_p=args.top_p,
                                      cfg_filter_top_k=args.cfg_filter_top_k).items() if v is not None}
    options = dict(sampling, seed=args.seed,
                   audio_prompt=None if prompt is None else prompt[0],
                   sample_rate=None if prompt is None else prompt[1],
                   prompt_text=args.prompt_text, voice=voice, chunk_tokens=args.chunk_tokens,
                   progress=not args.quiet)
    start = time.perf_counter()
    if streaming:
        first = None
        chunks = tts.stream(script, chunk_seconds=args.chunk_seconds, **options)
        try:
            with AudioStreamWriter(sys.stdout.buffer if to_stdout else out_path, tts.sample_rate) as out:
                for chunk in chunks:
                    first = first or time.perf_counter() - start
                    out.write(chunk)
        except BrokenPipeError:
            # The player went away (e.g. aplay was stopped): stop generating, quietly.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            print("fastdia: the output pipe was closed; stopped", file=sys.stderr)
            return 0
        samples = out.frames
        where = "stdout" if to_stdout else str(out_path)
    else:
        codes = tts.generate_codes(script, **options)
        audio = tts.decode(codes)
        tts.save_audio(out_path, audio, loudness=args.loudness)
        samples, where = len(audio), str(out_path)
    total = time.perf_counter() - start
    seconds = samples / tts.sample_rate
    if not args.quiet:
        first_audio = f", first audio after {first:.1f} s" if streaming and first else ""
        print(f"wrote {where}: {seconds:.2f} s of audio in {total:.1f} s "
              f"({seconds / total if total else 0:.2f}x realtime{first_audio})", file=sys.stderr)
    return 0


def _refuse(args: argparse.Namespace, family: str, names: tuple[str, ...]) -> None:
    """Flags of the other family are an error, not silently ignored."""
    from .errors import GenerationError

    given = [n for n in names if getattr(args, n) not in (None, False)]
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise GenerationError(f"{flags} {'does' if len(given) == 1 else 'do'} not apply to {family}")


def _add_say(sub) -> None:
    from .generation.dia2 import Dia2GenerationConfig
    from .generation.options import GenerationConfig
    from .text import DEFAULT_CHUNK_TOKENS

    d = GenerationConfig()
    p = sub.add_parser("say", help="speak a dialogue script into an audio file",
                       description='Speak a script such as "[S1] Hello. [S2] Hi! (laughs)" into an audio file.')
    p.add_argument("text", nargs="?", help="the script; or use --input")
    p.add_argument("-i", "--input", metavar="FILE", help="read the script from FILE ('-' for stdin)")
    p.add_argument("-o", "--output", required=True, metavar="PATH",
                   help="output file: .wav, .flac, .ogg or .mp3; '-' streams WAV to stdout (| aplay, | ffplay -)")
    p.add_argument("--stream", action="store_true",
                   help="write the output file progressively, as audio is generated")
    p.add_argument("--chunk-seconds", type=float, default=0.5,
                   help="audio per streamed chunk (default: %(default)s)")
    _add_model_flags(p)
    p.add_argument("--codec", default=None,
                   help="DAC codec: hub id, directory or file (default: descript/dac_44khz; presets use their own)")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None, help="weight-only quantization")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    d2 = Dia2GenerationConfig()
    p.add_argument("--max-tokens", type=int, default=None,
                   help=f"Dia-1: decoder position limit per generation (per chunk of a long script) incl. any "
                        f"prompt; 86 = 1 s (default: {d.max_tokens})")
    p.add_argument("--cfg-scale", type=float, default=None,
                   help=f"guidance strength (default: {d.cfg_scale}; Dia2: {d2.cfg_scale})")
    p.add_argument("--temperature", type=float, default=None,
                   help=f"audio sampling temperature, 0 = greedy (default: {d.temperature}; Dia2: {d2.temperature})")
    p.add_argument("--top-p", type=float, default=None, help=f"Dia-1: nucleus mass (default: {d.top_p})")
    p.add_argument("--cfg-filter-top-k", type=int, default=None,
                   help=f"Dia-1: candidates kept by the guidance filter (default: {d.cfg_filter_top_k})")
    p.add_argument("--text-temperature", type=float, default=None,
                   help=f"Dia2: temperature of the word/pause decisions (default: {d2.text_temperature})")
    p.add_argument("--top-k", type=int, default=None, help=f"Dia2: candidates per sampler (default: {d2.top_k})")
    p.add_argument("--cfg-filter-k", type=int, default=None,
                   help=f"Dia2: candidates kept by the guidance filter (default: {d2.cfg_filter_k})")
    p.add_argument("--max-steps", type=int, default=None,
                   help="Dia2: decoder steps at most, 12.5 per second (default: the model's context)")
    for n in (1, 2):
        p.add_argument(f"--prefix-speaker-{n}", metavar="AUDIO", default=None,
                       help=f"Dia2: a voice for speaker {n} to continue (needs --prefix-text-{n})")
        p.add_argument(f"--prefix-text-{n}", metavar="TEXT", default=None,
                       help=f"Dia2: what is said in --prefix-speaker-{n} (its words are spread evenly over it)")
        p.add_argument(f"--prefix-words-{n}", metavar="JSON", default=None,
                       help=f"Dia2: the words of --prefix-speaker-{n} with timings, a JSON file "
                            '[["word", start_s, end_s], ...] (instead of --prefix-text-{n})')
    p.add_argument("--include-prefix", action="store_true", help="Dia2: keep the prefix audio in the output")
    p.add_argument("--timestamps", metavar="JSON", default=None,
                   help='Dia2: also write the word timestamps, [["word", seconds], ...], to this JSON file')
    p.add_argument("--audio-prompt", metavar="FILE", help="voice to clone: an audio file (5-10 s works best)")
    p.add_argument("--prompt-text", metavar="TEXT", help="transcript of --audio-prompt, with speaker tags")
    p.add_argument("--voice", action="append", metavar="[S1=|S2=]NAME",
                   help="a saved voice (fastdia voice add) for the whole script, or per speaker: "
                        "--voice S1=alice --voice S2=bob")
    p.add_argument("--voices-dir", metavar="DIR", default=None,
                   help="saved voices' folder (default: $FASTDIA_VOICES_DIR, else the XDG data dir)")
    p.add_argument("--chunk-tokens", type=int, default=DEFAULT_CHUNK_TOKENS,
                   help="long scripts are spoken in chunks of at most this many bytes, split at speaker "
                        "turns (default: %(default)s, about 11 s of speech)")
    p.add_argument("--loudness", type=float, default=None, metavar="LUFS",
                   help="normalise the output to this loudness, e.g. -16 (peaks kept under -1 dBTP)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_say)


def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoints.convert import convert

    summary = convert(args.model, args.out_dir, args.quantize, args.group_size, args.dtype)
    print(f"wrote {summary['out']} ({summary['quantize']}, {summary['bytes'] / 1e9:.2f} GB) "
          f"in {summary['seconds']:.1f} s; load it with fastdia.load({summary['out']!r}) "
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


def cmd_voice_add(args: argparse.Namespace) -> int:
    from .audio import read_audio
    from .errors import VoiceError
    from .text import validate_script
    from .voices import VoiceStore

    # Name, transcript and audio are checked before the codec loads, so a typo costs no download.
    store = VoiceStore(args.voices_dir)
    if store.exists(args.name) and not args.force:
        raise VoiceError(f"voice {args.name!r} exists; use --force to replace it")
    validate_script(args.text, what="voice transcript")
    wave, rate = read_audio(args.audio)
    if len(wave) / rate > 15:
        print(f"note: {args.audio} is {len(wave) / rate:.1f} s long; 5-10 s clones best, and a long prompt "
              "leaves less room to generate", file=sys.stderr)

    from .backends.device import resolve_device
    from .codecs import DAC
    from .codecs.dac_model import DEFAULT_MODEL
    from .config import PRESETS

    source = args.codec or ("tiny-random" if args.model in PRESETS else DEFAULT_MODEL)
    device = resolve_device(args.device)
    # Dia loads its codec with this dtype rule, and codec ids differ between dtypes.
    codec = DAC.from_pretrained(source, device=device, dtype="auto" if device.type == "cuda" else "float32")
    from .audio import resample, to_mono
    from .voices import AUDIO_RATE

    voice = store.add(args.name, codec.encode(wave, rate), args.text, codec.codec_id, codec.sample_rate,
                      source=args.audio, force=args.force, hop_length=codec.hop_length,
                      audio=resample(to_mono(wave), rate, AUDIO_RATE))
    print(f"saved voice {voice.name!r} ({voice.seconds:.1f} s, {len(voice.codes)} frames) to {store.path(voice.name)}")
    return 0


def _voice_info(voice, store) -> dict:
    info = {"name": voice.name, "path": str(store.path(voice.name)), "seconds": voice.seconds,
            "frames": len(voice.codes), "codebooks": voice.codes.shape[1], "codec": voice.codec,
            "sample_rate": voice.sample_rate}
    info.update((k, v) for k, v in voice.metadata.items() if k not in info)
    info["text"] = voice.text
    return info


def cmd_voice_list(args: argparse.Namespace) -> int:
    from .voices import ADD_HINT, VoiceStore

    store = VoiceStore(args.voices_dir)
    broken: list = []
    voices = store.list(broken)
    for exc in broken:
        print(f"fastdia: warning: skipped {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps([_voice_info(v, store) for v in voices], indent=2, ensure_ascii=False))
        return 0
    if not voices:
        print(f"no saved voices in {store.directory}; add one with: {ADD_HINT}")
        return 0
    width = max(4, *(len(v.name) for v in voices))
    print(f"{'NAME':<{width}}  SECONDS  {'CODEC':<20}  TRANSCRIPT")
    for v in voices:
        text = " ".join(v.text.split())
        text = text if len(text) <= 60 else text[:57] + "..."
        print(f"{v.name:<{width}}  {v.seconds:7.1f}  {v.codec:<20}  {text}")
    return 0


def cmd_voice_show(args: argparse.Namespace) -> int:
    from .voices import VoiceStore

    store = VoiceStore(args.voices_dir)
    info = _voice_info(store.get(args.name), store)
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    for key, value in info.items():
        print(f"{'transcript' if key == 'text' else key:<15}{value}")
    return 0


def cmd_voice_remove(args: argparse.Namespace) -> int:
    from .voices import VoiceStore

    path = VoiceStore(args.voices_dir).remove(args.name)
    print(f"removed voice {args.name!r} ({path})")
    return 0


def _add_voice(sub) -> None:
    p = sub.add_parser("voice", help="save voices to clone (audio + transcript) once, reuse them by name",
                       description="Saved voices: an audio clip encoded once with its exact transcript.")
    actions = p.add_subparsers(dest="voice_command", metavar="ACTION")
    actions.required = True
    dir_help = ("folder of saved voices (default: $FASTDIA_VOICES_DIR, else $XDG_DATA_HOME/fastdia/voices, "
                "else ~/.local/share/fastdia/voices)")

    a = actions.add_parser("add", help="encode an audio clip and save it with its transcript",
                           description="Encode AUDIO with the model's codec and save it, with its transcript, as NAME.")
    a.add_argument("name", metavar="NAME", help="1-64 letters, digits, '.', '_' or '-', e.g. alice")
    a.add_argument("audio", metavar="AUDIO", help="the voice, alone: wav, flac, ogg or mp3; 5-10 s clones best")
    a.add_argument("--text", required=True, metavar="TRANSCRIPT",
                   help='exactly the words spoken in AUDIO, with speaker tags: "[S1] Hello there."')
    a.add_argument("--force", action="store_true", help="replace a saved voice of the same name")
    a.add_argument("--voices-dir", metavar="DIR", help=dir_help)
    a.add_argument("--model", default="nari-labs/Dia-1.6B-0626",
                   help="the model the voice is for; presets use their own codec (default: %(default)s)")
    a.add_argument("--codec", default=None,
                   help="DAC codec: hub id, directory or file (default: descript/dac_44khz; presets use their own)")
    a.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N (default: auto)")
    a.set_defaults(func=cmd_voice_add)

    q = actions.add_parser("list", help="list saved voices")
    q.add_argument("--voices-dir", metavar="DIR", help=dir_help)
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=cmd_voice_list)

    q = actions.add_parser("show", help="show a saved voice's details and transcript")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--voices-dir", metavar="DIR", help=dir_help)
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=cmd_voice_show)

    q = actions.add_parser("remove", help="delete a saved voice")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--voices-dir", metavar="DIR", help=dir_help)
    q.set_defaults(func=cmd_voice_remove)


def _add_serve(sub) -> None:
    from .serve.cli_serve import add_arguments, cmd_serve

    p = sub.add_parser("serve", help="run an OpenAI-compatible speech server (HTTP + WebSocket)",
                       description="Serve models over HTTP: OpenAI's /v1/audio/speech, saved voices, /health, "
                                   "/metrics and a live-text WebSocket, with continuous batching.")
    add_arguments(p)
    p.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastdia", description="Fast inference for Nari Labs' Dia dialogue text-to-speech models."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("info", help="show this machine's CPU paths, and a model's config, size, layout and dtype",
                       description="Without MODEL: the CPU, its ISA features, the kernel set and fallback each "
                                   "variant (float32, bfloat16, int8, int4) uses here, and library versions. "
                                   "With MODEL: its resolved config, size, checkpoint layout and dtype too.")
    _add_model_flags(p, positional=True)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    _add_say(sub)
    _add_bench(sub)
    _add_convert(sub)
    from .onnx.cli_export import add_export

    add_export(sub)
    _add_voice(sub)
    _add_serve(sub)
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
