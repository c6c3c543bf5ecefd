"""`fastdia say`: speak a script of any length, with either family, to a file or a stream."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
import warnings

from .common import add_model_flags, parse_voices, read_script, refuse


def cmd_say(args: argparse.Namespace) -> int:
    import time
    import warnings

    from ..audio import AudioStreamWriter, check_output_path, read_audio
    from ..errors import GenerationError
    from ..text import MAX_SCRIPT_BYTES, split_script, validate_script

    from ..dia2.config import is_dia2

    if args.seed is None:  # a concrete seed, so any result can be made again (--verbose prints it)
        args.seed = secrets.randbits(62)
    if args.verbose:
        print(f"fastdia: seed {args.seed} (--seed {args.seed} makes this audio again)", file=sys.stderr)
    if is_dia2(args.model):
        return say_dia2(args)
    refuse(args, "a Dia-1 model", ("text_temperature", "top_k", "cfg_filter_k", "max_steps", "prefix_speaker_1",
                                    "prefix_speaker_2", "prefix_text_1", "prefix_text_2", "prefix_words_1",
                                    "prefix_words_2", "include_prefix", "timestamps"))
    # Everything that can be checked without the model is checked first, so a typo never
    # costs a model load or a generation.
    script = read_script(args)
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
    voice = parse_voices(args.voice, args.voices_dir)
    if voice is not None and prompt is not None:
        raise GenerationError("give --voice or --audio-prompt (with --prompt-text), not both")

    from .. import Dia

    tts = Dia.from_pretrained(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize,
                              codec=args.codec, voices_dir=args.voices_dir)
    if tts.is_random:
        from ..dia1.api import NoiseModelWarning

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


def add_say(sub) -> None:
    from ..dia2.options import Dia2GenerationConfig
    from ..dia1.options import GenerationConfig
    from ..text import DEFAULT_CHUNK_TOKENS

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
    add_model_flags(p)
    p.add_argument("--codec", default=None,
                   help="DAC codec: hub id, directory or file (default: descript/dac_44khz; presets use their own)")
    p.add_argument("--quantize", choices=["none", "int8", "int4"], default=None,
                   help="weight-only quantization (default: none)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed for reproducible sampling (default: a fresh one; --verbose prints it)")
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
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print the seed drawn for an unseeded run (to make it again with --seed)")
    p.set_defaults(func=cmd_say)


def say_dia2(args: argparse.Namespace) -> int:
    from ..dia2.api import Dia2
    from ..audio import AudioStreamWriter, check_output_path, read_audio
    from ..errors import GenerationError
    from ..speech import VoicePrompt

    refuse(args, "Dia2 (yet)", ("max_tokens", "top_p", "cfg_filter_top_k", "audio_prompt", "prompt_text"))
    script = read_script(args)
    if not script.strip():
        from ..errors import ScriptError

        raise ScriptError('the script is empty; write dialogue such as "[S1] Hello there. [S2] Hi!"')
    to_stdout = args.output == "-"
    streaming = args.stream or to_stdout
    out_path = None if to_stdout else check_output_path(args.output)
    if streaming and args.loudness is not None:
        raise GenerationError("--loudness needs the whole audio; it cannot be used with --stream or -o -")
    prefixes = {}
    for n in (1, 2):
        audio, text = getattr(args, f"prefix_speaker_{n}"), getattr(args, f"prefix_text_{n}")
        words = _read_words(getattr(args, f"prefix_words_{n}"), n)
        if (audio is None) != (text is None and words is None):
            raise GenerationError(f"--prefix-speaker-{n} goes with --prefix-text-{n} or --prefix-words-{n} "
                                  "(the audio and what it says)")
        if audio is not None:
            wave, sr = read_audio(audio)  # errors name the file, before any model loads
            prefixes[f"prefix_speaker_{n}"] = VoicePrompt(wave, sr, text=text, words=words)
    voice = parse_voices(args.voice, args.voices_dir)  # saved voices as prefixes, checked before loading
    if voice is not None:
        if prefixes:
            raise GenerationError("give --voice or --prefix-speaker-N, not both")
        per_speaker = voice if isinstance(voice, dict) else {"S1": voice}
        prefixes = {f"prefix_speaker_{k[1]}": v for k, v in per_speaker.items()}
    if args.timestamps is not None:
        from ..audio import _can_create_in
        from pathlib import Path

        folder = Path(args.timestamps).expanduser().parent
        if not folder.is_dir() or not _can_create_in(folder):
            raise GenerationError(f"cannot write --timestamps {args.timestamps!r}: its folder is missing or not writable")
    if "prefix_speaker_2" in prefixes and "prefix_speaker_1" not in prefixes:
        raise GenerationError("--prefix-speaker-2 needs --prefix-speaker-1 (speaker 1's voice comes first)")
    sampling = {k: v for k, v in dict(cfg_scale=args.cfg_scale, temperature=args.temperature,
                                      text_temperature=args.text_temperature, top_k=args.top_k,
                                      cfg_filter_k=args.cfg_filter_k, max_steps=args.max_steps,
                                      seed=args.seed).items() if v is not None}
    tts = Dia2.from_pretrained(args.model, device=args.device, dtype=args.dtype, codec=args.codec,
                               voices_dir=args.voices_dir)
    tts.generation_config(**sampling)  # options are checked before the script runs
    options = dict(sampling, include_prefix=args.include_prefix, **prefixes)
    start = time.perf_counter()
    first = None
    with warnings.catch_warnings():
        if tts.is_random:
            print(f"note: {args.model} has random weights: its audio is noise, useful only for trials", file=sys.stderr)
            warnings.simplefilter("ignore", UserWarning)
        stamps = []
        if streaming:
            chunks = tts.stream(script, chunk_seconds=args.chunk_seconds, **options)
            try:
                with AudioStreamWriter(sys.stdout.buffer if to_stdout else out_path, tts.sample_rate) as out:
                    for chunk in chunks:
                        first = first or time.perf_counter() - start
                        out.write(chunk.audio)
                        stamps += chunk.words
            except BrokenPipeError:
                import os

                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                print("fastdia: the output pipe was closed; stopped", file=sys.stderr)
                return 0
            seconds, where = out.frames / tts.sample_rate, "stdout" if to_stdout else str(out_path)
        else:
            speech = tts.synthesize(script, **options)
            audio = speech.audio
            if args.loudness is not None:
                from ..audio import normalize_loudness

                audio = normalize_loudness(audio, tts.sample_rate, target_lufs=args.loudness)
            tts.save_audio(out_path, audio)
            seconds, where, stamps = speech.duration, str(out_path), list(speech.timestamps)
    words = len(stamps)
    if args.timestamps is not None:
        import json

        with open(args.timestamps, "w", encoding="utf-8") as f:
            json.dump([[w, round(t, 3)] for w, t in stamps], f, ensure_ascii=False)
    total = time.perf_counter() - start
    if not args.quiet:
        first_audio = f", first audio after {first:.1f} s" if first else ""
        print(f"wrote {where}: {seconds:.2f} s of audio, {words} words, in {total:.1f} s "
              f"({seconds / total if total else 0:.2f}x realtime{first_audio})", file=sys.stderr)
    return 0


def _read_words(path: str | None, n: int) -> list | None:
    """--prefix-words-N: a JSON list of [word, start_s, end_s]; None when not given."""

    from ..errors import GenerationError

    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            words = json.load(f)
    except (OSError, ValueError) as exc:
        raise GenerationError(f"cannot read --prefix-words-{n} {path!r}: {exc}") from None
    ok = isinstance(words, list) and words and all(
        isinstance(w, (list, tuple)) and len(w) == 3 and isinstance(w[0], str)
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in w[1:]) for w in words)
    if not ok:
        raise GenerationError(f'--prefix-words-{n} {path!r} must be a JSON list of ["word", start_s, end_s]')
    return [tuple(w) for w in words]
