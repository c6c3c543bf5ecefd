"""`fastdia say` for Dia2 models (fastdia.cli sends them here): one synthesis, or a stream."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from typing import Callable


def say_dia2(args: argparse.Namespace, read_script: Callable, refuse: Callable, parse_voices: Callable) -> int:
    from .api_dia2 import Dia2
    from .audio import AudioStreamWriter, check_output_path, read_audio
    from .errors import GenerationError
    from .speech import VoicePrompt

    refuse(args, "Dia2 (yet)", ("max_tokens", "top_p", "cfg_filter_top_k", "audio_prompt", "prompt_text"))
    script = read_script(args)
    if not script.strip():
        from .errors import ScriptError

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
        from .audio import _can_create_in
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
                from .audio import normalize_loudness

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
    import json

    from .errors import GenerationError

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
