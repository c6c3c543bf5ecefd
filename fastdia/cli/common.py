"""What the subcommands share: the model flags, reading a script, saved-voice flags, refusing another family's flags."""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2


def add_model_flags(p: argparse.ArgumentParser, positional: bool = False) -> None:
    if positional:
        p.add_argument("model", nargs="?", help="(optional) ""hub id, local directory, or preset (tiny-random, dia-1.6b-random, "
                                     "dia2-tiny-random, dia2-2b-random)")
    else:
        p.add_argument("--model", default="nari-labs/Dia-1.6B-0626",
                       help="hub id, local directory, or preset (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--dtype", default="auto",
                   help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16 (default: auto)")


def read_script(args: argparse.Namespace) -> str:
    from ..errors import ScriptError

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


def parse_voices(specs: list[str] | None, voices_dir: str | None):
    """--voice NAME (the whole script) or --voice S1=NAME --voice S2=NAME -> `voice=` value,
    each name checked against the store before any model is loaded."""
    from ..errors import GenerationError
    from ..voices import VoiceStore

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


def refuse(args: argparse.Namespace, family: str, names: tuple[str, ...]) -> None:
    """Flags of the other family are an error, not silently ignored."""
    from ..errors import GenerationError

    given = [n for n in names if getattr(args, n) not in (None, False)]
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise GenerationError(f"{flags} {'does' if len(given) == 1 else 'do'} not apply to {family}")
