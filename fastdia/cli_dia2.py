"""`fastdia say` for Dia2 models (fastdia.cli sends them here): one synthesis, or a stream."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from typing import Callable


def say_dia2(args: argparse.Namespace, read_script: Callable, refuse: Callable) -> int:
    from .api_dia2 import Dia2
    from .audio import AudioStreamWriter, check_output_path, read_audio
    from .errors import GenerationError
    from .speech import VoicePrompt

    refuse(args, "Dia2 (yet)", ("max_tokens", "top_p", "cfg_filter_top_k", "audio_prompt", "prompt_text", "voice"))
    script = read_script(args)
    to_stdout = args.output == "-"
    streaming = args.stream or to_stdout
    out_path = None if to_stdout else check_output_path(args.output)
    if streaming and args.loudness is not None:
        raise GenerationError("--loudness needs the whole audio; it cannot be used with --stream or -o -")
    prefixes = {}
    for n in (1, 2):
        audio, text = getattr(args, f"prefix_speaker_{n}"), getattr(args, f"prefix_text_{n}")
        if (audio is None) != (text is None):
            raise GenerationError(f"--prefix-speaker-{n} and --prefix-text-{n} go together (the audio and what it says)")
        if audio is not None:
            wave, sr = read_audio(audio)  # errors name the file, before any model loads
            prefixes[f"prefix_speaker_{n}"] = VoicePrompt(wave, sr, text=text)
    if "prefix_speaker_2" in prefixes and "prefix_speaker_1" not in prefixes:
        raise GenerationError("--prefix-speaker-2 needs --prefix-speaker-1 (speaker 1's voice comes first)")
    sampling = {k: v for k, v in dict(cfg_scale=args.cfg_scale, temperature=args.temperature,
                                      text_temperature=args.text_temperature, top_k=args.top_k,
                                      cfg_filter_k=args.cfg_filter_k, max_steps=args.max_steps,
                                      seed=args.seed).items() if v is not None}
    tts = Dia2.from_pretrained(args.model, device=args.device, dtype=args.dtype, codec=args.codec)
    tts.generation_config(**sampling)  # options are checked before the script runs
    options = dict(sampling, include_prefix=args.include_prefix, **prefixes)
    start = time.perf_counter()
    first = None
    with warnings.catch_warnings():
        if tts.is_random:
            print(f"note: {args.model} has random weights: its audio is noise, useful only for trials", file=sys.stderr)
            warnings.simplefilter("ignore", UserWarning)
        if streaming:
            words = 0
            chunks = tts.stream(script, chunk_seconds=args.chunk_seconds, **options)
            try:
                with AudioStreamWriter(sys.stdout.buffer if to_stdout else out_path, tts.sample_rate) as out:
                    for chunk in chunks:
                        first = first or time.perf_counter() - start
                        out.write(chunk.audio)
                        words += len(chunk.words)
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
            seconds, where, words = speech.duration, str(out_path), len(speech.timestamps)
    total = time.perf_counter() - start
    if not args.quiet:
        first_audio = f", first audio after {first:.1f} s" if first else ""
        print(f"wrote {where}: {seconds:.2f} s of audio, {words} words, in {total:.1f} s "
              f"({seconds / total if total else 0:.2f}x realtime{first_audio})", file=sys.stderr)
    return 0
